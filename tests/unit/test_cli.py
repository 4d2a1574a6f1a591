"""The ``wapipe`` console script's top level, run as a real process: a failure says what failed, never a
traceback, and never the database URL's secrets."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wapipe(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("WAPIPE_")}
    environ.update({"WAPIPE_DATA_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", [["migrate"], ["dlq", "list"]])
def test_a_database_error_says_its_type_only(tmp_path: Path, command: list[str]) -> None:
    # The driver's text names hosts, ports and databases (and for some errors the part of the URL it
    # could not use); a traceback ended in it, on a terminal or in a deploy log. (The pool's own warnings
    # while it retries name the host and port, never the password.)
    port = closed_port()
    url = f"postgresql://wp:Hunter2Secret@127.0.0.1:{port}/wapipe_prod"
    result = wapipe(tmp_path, *command, WAPIPE_DATABASE_URL=url, WAPIPE_DB_POOL_TIMEOUT="1")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    # OperationalError, or for a pooled command the pool's PoolTimeout (its subclass).
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"wapipe: the database failed \((OperationalError|PoolTimeout)\); .*", last), last
    for secret in ("Hunter2Secret", str(port), "wapipe_prod"):
        assert secret not in last
    assert "Hunter2Secret" not in result.stdout + result.stderr


def test_a_malformed_database_url_exits_2_naming_the_variable_only(tmp_path: Path) -> None:
    url = "postgresql://wp:Hunter2 Secret@db.internal.example/wapipe_prod"
    result = wapipe(tmp_path, "migrate", WAPIPE_DATABASE_URL=url)
    assert result.returncode == 2, result.stderr
    assert "WAPIPE_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
    for secret in ("Hunter2", "Secret", "db.internal", "wapipe_prod"):
        assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize("limit", ["-1", "0", "many"])
def test_dlq_list_limit_below_one_is_a_usage_error(tmp_path: Path, limit: str) -> None:
    # -1 gave a traceback and 0 said "no pending dead letters", which an operator would believe.
    result = wapipe(tmp_path, "dlq", "list", "--limit", limit)
    assert result.returncode == 2, result.stderr
    assert "--limit" in result.stderr
    assert "Traceback" not in result.stderr
    assert "no pending dead letters" not in result.stdout


@pytest.mark.parametrize(
    ("command", "env", "variable"),
    [
        (["migrate"], {}, "WAPIPE_DATABASE_URL"),
        (["dlq", "list"], {}, "WAPIPE_DATABASE_URL"),
        (["seed-demo"], {}, "WAPIPE_DATABASE_URL"),
        # A replay checks for the broker before it reads the letter.
        (
            ["dlq", "replay", "1"],
            {"WAPIPE_DATABASE_URL": "postgresql://wp@127.0.0.1:1/wapipe"},
            "WAPIPE_REDIS_URL",
        ),
    ],
)
def test_a_server_url_neither_set_nor_found_exits_2_naming_it(
    tmp_path: Path, command: list[str], env: dict[str, str], variable: str
) -> None:
    # No `wapipe up` running in the data folder (say, after `wapipe down`) and no URL set: a newcomer's
    # first `wapipe seed-demo` ended in a RuntimeError's traceback.
    result = wapipe(tmp_path, *command, **env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wapipe: {variable} is not set"), last
    assert "wapipe up" in last


def test_chat_with_redis_unreachable_says_replies_will_not_be_shown(tmp_path: Path) -> None:
    # The thread that subscribes to the console provider's replies died with a traceback, and the chat
    # went on without a word about it.
    redis_port, ingress_port = closed_port(), closed_port()
    environ = {key: value for key, value in os.environ.items() if not key.startswith("WAPIPE_")}
    environ.update(
        WAPIPE_DATA_DIR=str(tmp_path),
        WAPIPE_REDIS_URL=f"redis://:Hunter2Secret@127.0.0.1:{redis_port}/0",
        TWILIO_AUTH_TOKEN="dev-token",
    )
    ingress = f"http://127.0.0.1:{ingress_port}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "chat",
            "--from",
            "+15551234567",
            "--url",
            ingress,
            "--wait",
            "0",
        ],
        env=environ,
        input="hi\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in result.stderr
    assert "wapipe chat: Redis could not be reached (ConnectionError); replies will not be shown" in (
        result.stderr.splitlines()
    ), result.stderr
    assert "Hunter2Secret" not in result.stdout + result.stderr
    # The message itself still went its way, and failing to reach the ingress is said as before.
    assert f"could not reach {ingress}" in result.stderr
    assert result.returncode == 1


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        # gunicorn with no workers listens and answers nothing: every webhook hangs until it times out.
        (["web", "--workers", "0"], {}, "--workers"),
        (["up", "--web-workers", "0"], {}, "--web-workers"),
        (["worker", "--concurrency", "0"], {}, "--concurrency"),
        # Out of range, `wapipe up` said the port "is taken".
        (["up", "--port", "70000"], {}, "--port"),
        (["up", "--port", "0"], {}, "--port"),
        (["web", "--port", "-1"], {}, "--port"),
    ],
)
def test_a_port_or_worker_count_out_of_range_is_a_usage_error(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    result = wapipe(tmp_path, *args, **env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wapipe {args[0]}: error: "), last
    assert named in last, last


@pytest.mark.parametrize("command", [["seed-demo"], ["up", "--port", "1"], ["down"]])
def test_a_data_folder_that_cannot_be_used_is_named_in_one_line(tmp_path: Path, command: list[str]) -> None:
    # WAPIPE_DATA_DIR under a file (a typo, a volume not mounted): every command, each of which looks for
    # a running `wapipe up` there first, ended in a NotADirectoryError's traceback.
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = wapipe(tmp_path, *command, WAPIPE_DATA_DIR=str(not_a_folder / "var"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wapipe: "), last
    assert str(not_a_folder) in last, last
    assert "Not a directory" in last, last


@pytest.mark.parametrize(
    ("command", "env"),
    [
        # Read from the platform's variables, a bad one was a ValueError's traceback.
        (["web"], {"PORT": "http"}),
        (["web"], {"WEB_CONCURRENCY": "two"}),
        (["web"], {"WEB_CONCURRENCY": "0"}),
        # Read by ingress/gunicorn_conf.py, gunicorn said "invalid literal for int()" without the variable,
        # or a traceback, and under `wapipe up` the web process was restarted with it again and again.
        (["web"], {"WAPIPE_WEB_THREADS": "eight"}),
        (["web"], {"WAPIPE_WEB_THREADS": "0"}),
        (["web"], {"WAPIPE_WEB_WORKER_CLASS": "gthreads"}),
        (["up", "--port", "1"], {"WAPIPE_WEB_THREADS": "eight"}),
        (["up", "--port", "1"], {"WAPIPE_WEB_WORKER_CLASS": "gthreads"}),
    ],
)
def test_a_bad_web_variable_exits_2_naming_it(
    tmp_path: Path, command: list[str], env: dict[str, str]
) -> None:
    [(variable, _)] = env.items()
    result = wapipe(tmp_path, *command, **env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wapipe: ${variable}: "), last


@pytest.mark.parametrize(
    "command",
    [
        ["migrate"],
        ["seed-demo"],
        ["dlq", "list"],
        ["dlq", "replay", "--all"],
        ["web"],
        ["worker"],
        ["beat"],
        ["chat", "--from", "+15551234567"],
        ["up", "--port", "1"],
        ["down"],
    ],
)
def test_every_command_that_uses_the_servers_takes_data_dir(tmp_path: Path, command: list[str]) -> None:
    # Only up, down and chat took it: `wapipe migrate --data-dir X` was a usage error, so the servers of a
    # `wapipe up --data-dir X` were reached only through $WAPIPE_DATA_DIR. Given a folder under a file,
    # each says so: the folder given is the one used (test_embedded.py runs them on real servers).
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = wapipe(tmp_path, *command, "--data-dir", str(not_a_folder / "var"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"wapipe: Not a directory: {not_a_folder / 'var' / 'servers.json'}", last
