"""One `wapipe up` per data folder, known by the lock it holds rather than by a pid that can be recycled;
`wapipe down` does not pull the embedded servers from under it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import embedded
from shared.commands.up import running_up

HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "var"
    folder.mkdir()
    yield folder
    embedded.stop(folder)


@pytest.fixture
def other_up(data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the data folder's `wapipe up` lock, as a running `wapipe up` does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(data_dir / "up.lock")], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "locked\n"
    yield holder
    holder.kill()
    holder.wait()


def _wapipe(*argv: str) -> subprocess.CompletedProcess[str]:
    # Unreachable explicit URLs: nothing embedded is started, and an `up` that got past its checks fails
    # quickly on its migrations instead of running.
    env = {
        **os.environ,
        "WAPIPE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "WAPIPE_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_second_up_refuses_while_the_first_holds_the_folder(
    data_dir: Path, other_up: subprocess.Popen[str]
) -> None:
    # The first `up` is still applying migrations: it has written no up.json yet.
    assert running_up(data_dir) == {}

    second = _wapipe("up", "--data-dir", str(data_dir), "--port", "1")

    assert second.returncode == 1
    assert f"already running for {data_dir}" in second.stderr


def test_an_up_json_left_by_a_killed_up_does_not_block_the_next(data_dir: Path) -> None:
    # kill -9 or a reboot: up.json stays behind and its pid now belongs to a live, unrelated process.
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (data_dir / "up.json").write_text(json.dumps({"pid": unrelated.pid, "url": "http://127.0.0.1:8000"}))

        assert running_up(data_dir) is None
        again = _wapipe("up", "--data-dir", str(data_dir), "--port", "1")
        assert "already running" not in again.stderr
    finally:
        unrelated.kill()
        unrelated.wait()


def test_down_refuses_under_a_running_up_unless_forced(
    data_dir: Path, other_up: subprocess.Popen[str]
) -> None:
    servers = embedded.start(data_dir, postgres=False)

    refused = _wapipe("down", "--data-dir", str(data_dir))

    assert refused.returncode == 1
    assert "wapipe up is running" in refused.stderr
    assert "stop it first" in refused.stderr
    assert embedded.discover(data_dir) == servers

    forced = _wapipe("down", "--data-dir", str(data_dir), "--force")

    assert forced.returncode == 0, forced.stderr
    assert "stopped valkey" in forced.stdout
    assert embedded.discover(data_dir) == embedded.Servers()


def test_down_stops_the_servers_once_up_has_exited(data_dir: Path, other_up: subprocess.Popen[str]) -> None:
    embedded.start(data_dir, postgres=False)
    other_up.kill()
    other_up.wait()

    down = _wapipe("down", "--data-dir", str(data_dir))

    assert down.returncode == 0, down.stderr
    assert "stopped valkey" in down.stdout


def test_down_holds_the_up_lock_while_it_stops_the_servers(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An `up` started while `down` stops the servers must refuse, not start workers on servers about to
    # go: while the real stop runs, the folder's up lock is taken (flock conflicts within a process too).
    from shared.commands import down

    embedded.start(data_dir, postgres=False)
    real_stop = embedded.stop
    locked_during_stop: list[bool] = []
    up_during_stop: list[subprocess.CompletedProcess[str]] = []

    def stop_and_look(folder: Path) -> list[str]:
        locked_during_stop.append(running_up(folder) is not None)
        up_during_stop.append(_wapipe("up", "--data-dir", str(folder), "--port", "1"))
        return real_stop(folder)

    monkeypatch.setattr(embedded, "stop", stop_and_look)

    assert down.run(argparse.Namespace(data_dir=str(data_dir), force=False)) == 0
    assert locked_during_stop == [True]
    # The `up` refused, and said why: not another `up`, a `down` under way.
    assert up_during_stop[0].returncode == 1
    assert "a `wapipe down` is stopping the servers" in up_during_stop[0].stderr
    assert "already running" not in up_during_stop[0].stderr
    assert embedded.discover(data_dir) == embedded.Servers()
    assert running_up(data_dir) is None  # released once done


def test_down_on_a_folder_never_used_stops_nothing(tmp_path: Path) -> None:
    down = _wapipe("down", "--data-dir", str(tmp_path / "never"))

    assert down.returncode == 0, down.stderr
    assert "nothing running" in down.stdout
    assert not (tmp_path / "never").exists()
