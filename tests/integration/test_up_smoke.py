"""Smoke test of the embedded default, as a newcomer runs it: `wapipe up` in an empty folder with no
server URLs, a signed Twilio webhook saying "hi" gets a console-provider reply, SIGTERM stops everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from shared import embedded
from shared.commands.chat import twilio_request

pytestmark = pytest.mark.slow

USER = "+15551234567"
BUSINESS = "+14155238886"
# Generous limits that only stop a hung run; nothing here asserts how fast anything is.
START_LIMIT = 120.0
REPLY_LIMIT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The environment of a fresh shell: no server URLs, no provider credentials."""
    prefixes = ("WAPIPE_", "TWILIO_", "META_", "KAPSO_", "OPENAI_", "PROMETHEUS_")
    return {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    embedded.stop(tmp_path / "var")


def _wait_healthy(up: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        assert up.poll() is None, f"wapipe up exited early:\n{log.read_text(errors='replace')[-4000:]}"
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"/healthz never answered:\n{log.read_text(errors='replace')[-4000:]}")


def _wait_ready(up: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        assert up.poll() is None, f"wapipe up exited:\n{log.read_text(errors='replace')[-4000:]}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    pytest.fail(f"/readyz never answered 200:\n{log.read_text(errors='replace')[-4000:]}")


def _wait_logged(up: subprocess.Popen[bytes], *words: str, log: Path) -> None:
    """Until a line of the log has every one of ``words``."""
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if any(all(word in line for word in words) for line in text.splitlines()):
            return
        assert up.poll() is None, f"wapipe up exited:\n{text[-4000:]}"
        time.sleep(0.3)
    pytest.fail(f"never logged {words}:\n{log.read_text(errors='replace')[-4000:]}")


def _next_reply(pubsub: redis.client.PubSub, log: Path) -> dict[str, object]:
    deadline = time.monotonic() + REPLY_LIMIT
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is not None:
            event = json.loads(message["data"])
            if event.get("to") == USER:
                return event
    pytest.fail(f"no console reply to {USER}:\n{log.read_text(errors='replace')[-6000:]}")


def test_up_answers_a_signed_webhook_and_stops_cleanly(folder: Path) -> None:
    data_dir = folder / "var"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "up.log"
    env = _clean_env()
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(up, url, log)
        servers = embedded.discover(data_dir)
        assert servers.database_url
        assert servers.redis_url
        pubsub = redis.Redis.from_url(servers.redis_url).pubsub()
        pubsub.subscribe("wapipe:console:outbound")
        pubsub.get_message(timeout=1.0)

        # A webhook signed with the dev token `up` generated in the data folder.
        token = embedded.read_secrets(data_dir)["twilio_auth_token"]
        form, headers = twilio_request(url, token, USER, BUSINESS, "Smoke Test", "hi")
        response = httpx.post(url + "/webhooks/twilio", data=form, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        reply = _next_reply(pubsub, log)
        assert reply["text"]

        # Unsigned: refused, nothing enqueued.
        forged = httpx.post(url + "/webhooks/twilio", data={**form, "MessageSid": "SMforged"}, timeout=10)
        assert forged.status_code in (401, 403)

        # `wapipe chat` finds the running service and its servers through the data folder alone.
        chat = subprocess.run(
            [
                sys.executable,
                "-m",
                "shared.cli",
                "chat",
                "--from",
                USER,
                "--data-dir",
                str(data_dir),
                "--wait",
                "5",
            ],
            cwd=folder,
            env=env,
            input="hello\n",
            capture_output=True,
            text=True,
            timeout=REPLY_LIMIT,
            check=False,
        )
        assert chat.returncode == 0, chat.stderr
        assert "bot> " in chat.stdout, chat.stdout + chat.stderr

        # The embedded Valkey killed under the running `up`: said, started again with its append-only file
        # (what it acknowledged is back), and the service answers again.
        broker = redis.Redis.from_url(servers.redis_url)
        broker.set("wapipe:smoke:acknowledged", "kept")
        valkey = psutil.Process(embedded.read_state(data_dir)["valkey"]["pid"])
        valkey.kill()
        valkey.wait(10)
        _wait_logged(up, "valkey", "has stopped; starting it again", log=log)
        _wait_logged(up, "valkey", "is running again", log=log)
        _wait_ready(up, url, log)
        assert broker.get("wapipe:smoke:acknowledged") == b"kept"
        assert embedded.discover(data_dir) == servers  # the same port and password: the same URL
        pubsub = redis.Redis.from_url(servers.redis_url).pubsub()
        pubsub.subscribe("wapipe:console:outbound")
        pubsub.get_message(timeout=1.0)
        form, headers = twilio_request(url, token, USER, BUSINESS, "Smoke Test", "hi again")
        response = httpx.post(url + "/webhooks/twilio", data=form, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        assert _next_reply(pubsub, log)["text"]

        tree = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "gunicorn" in names
        assert "celery" in names
        assert "beat" in names

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=120) == 0
        survivors = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert survivors == [], [p.cmdline() for p in survivors]
        # The embedded servers are not children of `up`: they keep running until `wapipe down`.
        assert embedded.discover(data_dir) == servers
        assert not (data_dir / "up.json").exists()
    finally:
        if up.poll() is None:
            for child in psutil.Process(up.pid).children(recursive=True):
                child.kill()
            up.kill()
            up.wait()
