"""`wapipe up` given server URLs checks that it can use them before it says it is running."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_up_with_redis_unreachable_says_so_and_starts_nothing(
    tmp_path: Path, test_servers: dict[str, str]
) -> None:
    # An unreachable database stopped `up` at its migrations; an unreachable Redis did not: it said
    # "wapipe is running" and its workers logged a connection error every few seconds, for good.
    env = {key: value for key, value in os.environ.items() if not key.startswith("WAPIPE_")}
    env.update(
        WAPIPE_DATABASE_URL=test_servers["WAPIPE_DATABASE_URL"],
        WAPIPE_REDIS_URL=f"redis://:Hunter2Secret@127.0.0.1:{_closed_port()}/0",
    )
    up = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "up",
            "--data-dir",
            str(tmp_path),
            "--port",
            str(_closed_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert up.returncode == 1, up.stdout + up.stderr
    assert "Traceback" not in up.stderr
    last = up.stderr.strip().splitlines()[-1]
    assert last.startswith("wapipe up: Redis could not be reached (ConnectionError)"), last
    assert "WAPIPE_REDIS_URL" in last
    assert "wapipe is running" not in up.stdout
    assert "Hunter2Secret" not in up.stdout + up.stderr
