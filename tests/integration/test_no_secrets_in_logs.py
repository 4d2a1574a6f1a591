"""No log line of a full end-to-end run shows a phone number, a token, an API key, a code or the secret key.

Real worker processes for every stage of the project bot (inbound, verify, commands, ai, persist, notify,
status) with DEBUG logging, the real Twilio SDK against a fake Twilio API, and the ingress app. The host
application links a number through the API, the user sends ``VERIFY <code>``, ``/project mobile`` and a
free-text task list (offline proposal parser), and a delivery receipt comes back; then a job of a task
the workers do not know arrives (an ingress newer than its workers, mid-deploy), whose body Celery's own
logger prints, the user's number in it. Every worker's stdout/stderr and the ingress's log are written to
files, then every line is scanned.
"""

from __future__ import annotations

import io
import itertools
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from flask.testing import FlaskClient

from ingress import create_app
from shared.commands.seed_demo import DEMO_USER_ID, seed
from shared.logging import configure_logging
from shared.providers.twilio.signature import sign
from shared.queues import Job, Publisher
from shared.settings import get_settings, load_settings
from tests.fakes.twilio_api import ACCOUNT_SID, WHATSAPP_NUMBER, FakeTwilioAPI

PUBLIC_URL = "https://hooks.example.com"
PHONE = "+14155550123"
# A task name no worker registers: Celery logs such a message's whole body before discarding it.
UNREGISTERED_TASK = "inbound.route_v2"
_sids = itertools.count(1)


def _post_signed(client: FlaskClient, token: str, form: dict[str, str]) -> None:
    headers = {"X-Twilio-Signature": sign(token, PUBLIC_URL + "/webhooks/twilio", form)}
    response = client.post("/webhooks/twilio", data=form, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)


def _whatsapp(client: FlaskClient, token: str, text: str) -> None:
    sid = f"SM{next(_sids):032x}"
    _post_signed(
        client,
        token,
        {
            "MessageSid": sid,
            "SmsMessageSid": sid,
            "AccountSid": ACCOUNT_SID,
            "From": f"whatsapp:{PHONE}",
            "To": f"whatsapp:{WHATSAPP_NUMBER}",
            "Body": text,
            "NumMedia": "0",
            "ProfileName": "Ana",
            "WaId": PHONE.lstrip("+"),
        },
    )


def _leaks(line: str, secrets_by_name: dict[str, re.Pattern[str]]) -> list[str]:
    return [name for name, pattern in secrets_by_name.items() if pattern.search(line)]


def test_full_run_logs_no_phone_token_key_code_or_secret(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shapes no masking regex recognises: only not logging them at all keeps them out.
    auth_token = "tw" + secrets.token_urlsafe(24)
    api_key = "ak" + secrets.token_urlsafe(24)
    secret_key = "sk" + secrets.token_urlsafe(24)
    # Codes are hashed with the process's WAPIPE_SECRET_KEY: the API (here) and the workers must share it.
    monkeypatch.setenv("WAPIPE_SECRET_KEY", secret_key)
    get_settings.cache_clear()
    seed(PHONE)
    ingress_log = io.StringIO()
    workers = []
    with FakeTwilioAPI(auth_token=auth_token) as fake:
        env = {
            **fake.credentials_env(),
            "WAPIPE_SECRET_KEY": secret_key,
            "WAPIPE_API_KEYS": api_key,
            "WAPIPE_LOG_LEVEL": "DEBUG",
            "WAPIPE_MODE": "project",
        }
        workers.append(start_worker(["inbound"], env=env))
        workers.append(start_worker(["verify", "commands", "ai", "persist", "notify", "status"], env=env))
        settings = load_settings(
            api_keys=api_key,
            public_url=PUBLIC_URL,
            secret_key=secret_key,
            twilio_account_sid=fake.account_sid,
            twilio_auth_token=auth_token,
            twilio_whatsapp_number=WHATSAPP_NUMBER,
            log_level="DEBUG",
        )
        client = create_app(settings).test_client()
        # The app configured logging for stderr; send the same pipeline (scrubbing included) to a buffer.
        configure_logging("DEBUG", "json", stream=ingress_log)
        try:
            auth = {"X-API-Key": api_key}
            assert client.delete(f"/api/v1/links/{DEMO_USER_ID}", headers=auth).status_code == 204
            created = client.post(
                "/api/v1/links", json={"user_id": str(DEMO_USER_ID), "phone": PHONE}, headers=auth
            )
            assert created.status_code == 201
            code = created.get_json()["code"]

            def replies() -> list[str]:
                return [r.form["Body"] for r in fake.created() if r.form.get("To") == f"whatsapp:{PHONE}"]

            _whatsapp(client, auth_token, f"VERIFY {code}")
            wait_for(lambda: "✅ WhatsApp linked to your account" in replies(), timeout=90, what="linked")
            _whatsapp(client, auth_token, "/project mobile")
            wait_for(
                lambda: any(r.startswith("✅ Project: Mobile App") for r in replies()),
                timeout=90,
                what="/project",
            )
            _whatsapp(client, auth_token, "Add login page and user dashboard by Friday, 8 hours")
            wait_for(
                lambda: (
                    db.execute("SELECT count(*) AS n FROM proposals").fetchone()["n"] == 1
                    and len(replies()) >= 3
                ),
                timeout=90,
                what="the proposal and its reply",
            )
            # The delivery receipt for the first reply, as Twilio posts it.
            first = next(r for r in fake.created() if r.form.get("To") == f"whatsapp:{PHONE}")
            _post_signed(
                client,
                auth_token,
                {
                    "MessageSid": first.sid or "",
                    "MessageStatus": "delivered",
                    "AccountSid": ACCOUNT_SID,
                    "From": f"whatsapp:{WHATSAPP_NUMBER}",
                    "To": f"whatsapp:{PHONE}",
                },
            )
            wait_for(
                lambda: db.execute(
                    "SELECT 1 FROM messages WHERE provider_message_id = %s AND status = 'delivered'",
                    (first.sid,),
                ).fetchone(),
                timeout=90,
                what="the delivered status",
            )
            Publisher(test_servers["WAPIPE_REDIS_URL"]).publish(
                [Job(UNREGISTERED_TASK, {"event": {"from_phone": PHONE, "text": "hello"}})]
            )
            wait_for(
                lambda: any(UNREGISTERED_TASK in line for worker in workers for line in worker.lines()),
                timeout=30,
                what="Celery's line about the unregistered task",
            )
        finally:
            for worker in workers:
                worker.stop()
            configure_logging()
            monkeypatch.delenv("WAPIPE_SECRET_KEY")
            get_settings.cache_clear()

    files = {f"worker-{worker.name}.log": worker.output() for worker in workers}
    files["ingress.log"] = ingress_log.getvalue()
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    digits = PHONE.lstrip("+")
    forbidden = {
        "phone (E.164)": re.compile(re.escape(PHONE)),
        "phone (digits)": re.compile(rf"(?<!\d){digits}(?!\d)"),
        "phone (national)": re.compile(rf"(?<!\d){digits[1:]}(?!\d)"),
        "Twilio auth token": re.compile(re.escape(auth_token)),
        "API key": re.compile(re.escape(api_key)),
        "WAPIPE_SECRET_KEY": re.compile(re.escape(secret_key)),
        # Not preceded by a digit or a dot: a timestamp's microseconds are not the code.
        "verification code": re.compile(rf"(?<![\d.]){code}(?!\d)"),
    }
    leaks = []
    scanned = 0
    for path in sorted(tmp_path.glob("*.log")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            scanned += 1
            found = _leaks(line, forbidden)
            if found:
                leaks.append(f"{path.name}:{number}: {', '.join(found)}: {line[:300]}")
    assert not leaks, "\n".join(leaks)

    # The scan saw a real run: every stage logged, and the user appears only masked.
    everything = "\n".join(files.values())
    assert scanned > 50
    for stage in (
        "inbound.route",
        "verify.check_code",
        "commands.handle",
        "ai.parse_proposal",
        "notify.send",
        "status.apply",
    ):
        assert stage in everything, f"no log line mentions {stage}"
    assert "*******0123" in everything
    # Celery's own logger in a worker went through the masking too: its line about the unregistered task
    # printed the body, number masked (the workers' own lines never name the number at all).
    unregistered = [line for line in everything.splitlines() if UNREGISTERED_TASK in line]
    assert any("*******0123" in line for line in unregistered), unregistered[:1]
    # The ingress's own lines were scanned too: the links API logged the code it issued, phone masked. (The
    # masked phone above comes only from the ingress today, but one worker line masking it would pass it.)
    issued = [line for line in files["ingress.log"].splitlines() if "link code issued" in line]
    assert issued, "the ingress log holds no line of the links API: its lines were not scanned"
    assert "*******0123" in issued[0]
