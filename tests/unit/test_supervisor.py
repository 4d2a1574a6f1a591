"""The supervisor behind `wapipe up`: restarts a dead child with backoff, leaves no process behind."""

from __future__ import annotations

import io
import sys
import time

import psutil

from shared.supervisor import ChildSpec, Supervisor

# Ignores SIGTERM and starts a grandchild in its process group that ignores it too, then waits forever.
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
STUBBORN = f"""
import subprocess, sys
{IGNORE_TERM}
subprocess.Popen([sys.executable, "-c", "{IGNORE_TERM}; time.sleep(600)"])
print("ready", flush=True)
time.sleep(600)
"""


def _tree(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def _wait_for_children(pid: int, count: int) -> list[psutil.Process]:
    for _ in range(200):
        tree = _tree(pid)
        if len(tree) >= count:
            return tree
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never had {count - 1} children")


def _gone(processes: list[psutil.Process]) -> bool:
    return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in processes)


def test_stop_kills_children_and_grandchildren_that_ignore_sigterm() -> None:
    supervisor = Supervisor(
        [
            ChildSpec("stubborn", [sys.executable, "-c", STUBBORN]),
            ChildSpec("polite", [sys.executable, "-c", "import time; time.sleep(600)"]),
        ],
        {},
        stop_timeout=1.0,
        out=io.StringIO(),
    )
    for child in supervisor._children:
        supervisor._spawn(child)
    stubborn, polite = supervisor.pids
    tree = [*_wait_for_children(stubborn, 2), psutil.Process(polite)]

    supervisor.stop_all()

    assert _gone(tree)
    assert supervisor.pids == []


def test_a_child_that_dies_is_restarted_with_growing_backoff() -> None:
    out = io.StringIO()
    supervisor = Supervisor(
        [ChildSpec("crasher", [sys.executable, "-c", "raise SystemExit(3)"])], {}, out=out
    )
    child = supervisor._children[0]
    supervisor._spawn(child)
    assert child.process is not None
    child.process.wait()

    now = time.monotonic()
    supervisor._check(now)
    assert child.process is None
    assert "crasher exited with 3; restarting in 1s" in out.getvalue()
    supervisor._check(now + 0.5)
    assert child.process is None  # still backing off
    supervisor._check(now + 1.0)
    assert child.process is not None
    assert child.restarts == 1

    child.process.wait()
    supervisor._check(now + 1.1)
    assert "restarting in 2s" in out.getvalue()
    supervisor.stop_all()
