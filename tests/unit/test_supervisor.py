"""The supervisor behind `wapipe up`: restarts a dead child with backoff, leaves no process behind."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

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


# Like a Celery worker: the leader starts a pool process in its process group, which runs a "task". The
# pool process aborts its task on SIGTERM (billiard's pool children do); the leader, on SIGTERM, waits for
# the pool process's current task to finish, then exits (Celery's warm shutdown). Both note what happened
# in the file $STOP_LOG.
NOTE = "import os; note = lambda line: open(os.environ['STOP_LOG'], 'a').write(line + chr(10))"
POOL_CHILD = f"""
import signal, sys, time
{NOTE}
def abort(signum, frame):
    note("pool child got SIGTERM")
    sys.exit(1)
signal.signal(signal.SIGTERM, abort)
note("task started")
time.sleep(2)
note("task finished")
"""
WARM_SHUTDOWN_LEADER = f"""
import signal, subprocess, sys
{NOTE}
stop = []
signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
pool = subprocess.Popen([sys.executable, "-c", {POOL_CHILD!r}])
while not stop:
    signal.pause()
note("leader got SIGTERM")
pool.wait()
note("leader stopped")
"""


def test_stop_lets_a_worker_finish_the_task_its_pool_child_is_running(tmp_path: Path) -> None:
    log = tmp_path / "stop.log"
    supervisor = Supervisor(
        [ChildSpec("worker", [sys.executable, "-c", WARM_SHUTDOWN_LEADER])],
        {"STOP_LOG": str(log)},
        stop_timeout=15.0,
        out=io.StringIO(),
    )
    supervisor._spawn(supervisor._children[0])
    for _ in range(200):
        if log.exists() and "task started" in log.read_text():
            break
        time.sleep(0.05)

    supervisor.stop_all()

    assert log.read_text().splitlines() == [
        "task started",
        "leader got SIGTERM",
        "task finished",
        "leader stopped",
    ]


def test_children_restart_with_the_new_address_of_a_server_that_moved(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    child = f"import os, time; open({str(seen)!r}, 'a').write(os.environ['URL'] + chr(10)); time.sleep(600)"
    changes: list[dict[str, str]] = [{}, {"URL": "redis://127.0.0.1:2"}]
    out = io.StringIO()
    supervisor = Supervisor(
        [ChildSpec("worker", [sys.executable, "-c", child])],
        {"URL": "redis://127.0.0.1:1"},
        out=out,
        watch=lambda: changes.pop(0),
    )

    def urls_seen(count: int) -> list[str]:
        for _ in range(200):
            if seen.exists() and len(seen.read_text().splitlines()) >= count:
                break
            time.sleep(0.05)
        return seen.read_text().splitlines()

    supervisor._spawn(supervisor._children[0])
    first = psutil.Process(supervisor.pids[0])
    assert urls_seen(1) == ["redis://127.0.0.1:1"]

    supervisor.watch_servers()  # nothing changed: nothing restarted
    assert supervisor.pids == [first.pid]
    supervisor.watch_servers()

    assert "URL changed; restarting every process" in out.getvalue()
    assert _gone([first])
    assert urls_seen(2) == ["redis://127.0.0.1:1", "redis://127.0.0.1:2"]
    supervisor.stop_all()


def test_a_second_ctrl_c_kills_the_children_instead_of_waiting() -> None:
    # A stop waits up to its timeout for the children (here far longer than anyone would sit through).
    runner = (
        "import sys\n"
        "from shared.supervisor import ChildSpec, Supervisor\n"
        f"spec = ChildSpec('stubborn', [sys.executable, '-c', {STUBBORN!r}])\n"
        "Supervisor([spec], {}, stop_timeout=3600).run()\n"
    )
    up = subprocess.Popen(
        [sys.executable, "-c", runner], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert up.stdout is not None
        assert up.stderr is not None
        assert up.stdout.readline() == "ready\n"
        tree = _wait_for_children(up.pid, 3)
        up.send_signal(signal.SIGINT)
        assert "SIGINT received, stopping" in up.stderr.readline()
        assert all(p.is_running() for p in tree)  # still waiting for the stubborn child

        up.send_signal(signal.SIGINT)

        assert up.wait(timeout=60) == 0  # a hang limit only
        assert "SIGINT again: killing" in up.stderr.read()
        assert _gone(tree)
    finally:
        if up.poll() is None:
            for proc in psutil.Process(up.pid).children(recursive=True):
                proc.kill()
            up.kill()
            up.wait()
