"""A small process supervisor for ``wapipe up``: start children, restart the ones that die, stop them all.

Each child runs in its own session (so a Ctrl-C at the terminal reaches only the supervisor, which then
stops the children in order instead of every process at once) and gets SIGTERM from the kernel if the
supervisor itself dies (``PR_SET_PDEATHSIG``), so a ``kill -9`` of ``wapipe up`` leaves no orphans either.
Stopping sends SIGTERM to each child's main process only, never to its whole process group: gunicorn's
master and Celery's main process then stop their own workers gracefully (Celery's warm shutdown lets each
pool process finish its current task, while a pool process that got SIGTERM itself would abort the task:
billiard resets the signal's handling in its children). It waits, then escalates to SIGKILL for the whole
group of whatever is left; a second Ctrl-C escalates at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

import psutil

_PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_START = 1.0
RESTART_BACKOFF_MAX = 30.0
# A child that ran this long before dying is restarted at once: it was healthy, not crash-looping.
HEALTHY_AFTER_SECONDS = 30.0
# How long a stop waits for the children before killing them. gunicorn bounds its own graceful stop
# (graceful_timeout = 20 in ingress/gunicorn_conf.py); Celery's warm shutdown waits for the tasks running
# right now, which is unbounded short of the task time limit (5 minutes: too long for a Ctrl-C). 30 s lets
# the usual task finish (a webhook's stages, a send batch, one model request) and the rare longer one
# (a model call in its retries) is killed and redelivered: tasks are acks_late and safe to run twice.
STOP_TIMEOUT_SECONDS = 30.0
# How often the servers the children need are checked (``watch``): a dead one is noticed within this.
WATCH_EVERY_SECONDS = 5.0


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the supervisor dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: Ctrl-C/SIGTERM handling still stops everything
        pass


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


@dataclass(frozen=True)
class ChildSpec:
    """One supervised program: a name for messages and its argv."""

    name: str
    argv: Sequence[str]


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = RESTART_BACKOFF_START
    restart_at: float | None = None
    restarts: int = field(default=0)


class Supervisor:
    """Runs the children until SIGINT/SIGTERM/SIGHUP, restarting any that exit unexpectedly."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        env: Mapping[str, str],
        *,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
        out: TextIO = sys.stderr,
        watch: Callable[[], Mapping[str, str]] | None = None,
        watch_every: float = WATCH_EVERY_SECONDS,
    ) -> None:
        """``watch`` is called every ``watch_every`` seconds to keep the children's servers running; it
        returns the environment variables whose values changed (a server now at another address), and the
        children are then restarted with them."""
        self._children = [_Child(spec) for spec in specs]
        self._env = dict(env)
        self._watch = watch
        self._watch_every = watch_every
        self._stop_timeout = stop_timeout
        self._out = out
        self._stopping = False
        self._kill_now = False

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children if c.process is not None and c.process.poll() is None]

    def _say(self, text: str) -> None:
        print(f"wapipe up: {text}", file=self._out, flush=True)

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        # Each flag is set before saying so: a second signal can run this handler again in the middle of
        # the first's print.
        name = signal.Signals(signum).name
        if not self._stopping:
            self._stopping = True
            self._say(f"{name} received, stopping (again to kill everything now)")
        elif not self._kill_now:
            # Whoever presses Ctrl-C twice will not sit through the graceful stop: the tasks cut short are
            # redelivered (acks_late), as after a crash.
            self._kill_now = True
            self._say(f"{name} again: killing every process now instead of waiting for them")

    def _spawn(self, child: _Child) -> None:
        child.process = subprocess.Popen(  # noqa: S603 - argv from ChildSpec, built by wapipe up
            list(child.spec.argv),
            env=self._env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # safe: the supervisor runs no threads
        )
        child.started_at = time.monotonic()
        child.restart_at = None

    def run(self) -> int:
        """Start everything, supervise until asked to stop, stop everything; return 0."""
        previous = {
            sig: signal.signal(sig, self._request_stop)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            for child in self._children:
                if self._stopping:
                    break
                self._spawn(child)
            next_watch = time.monotonic() + self._watch_every
            while not self._stopping:
                now = time.monotonic()
                self._check(now)
                if now >= next_watch:
                    self.watch_servers()
                    next_watch = time.monotonic() + self._watch_every
                time.sleep(0.2)
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def watch_servers(self) -> None:
        """Run ``watch`` once; restart the children when a server they use moved to another address."""
        if self._watch is None:
            return
        changed = self._watch()
        if not changed or self._stopping:
            return
        self._env.update(changed)
        self._say(f"{', '.join(sorted(changed))} changed; restarting every process with the new value")
        self.stop_all()
        for child in self._children:
            if not self._stopping:
                self._spawn(child)

    def _check(self, now: float) -> None:
        for child in self._children:
            if child.process is not None and child.process.poll() is not None:
                code = child.process.returncode
                ran = now - child.started_at
                if ran >= HEALTHY_AFTER_SECONDS:
                    child.backoff = RESTART_BACKOFF_START
                self._reap_group(child.process.pid)
                child.process = None
                child.restart_at = now + child.backoff
                self._say(f"{child.spec.name} exited with {code}; restarting in {child.backoff:.0f}s")
                child.backoff = min(child.backoff * 2, RESTART_BACKOFF_MAX)
            elif child.process is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)

    @staticmethod
    def _reap_group(pgid: int, timeout: float = 5.0) -> None:
        """Kill what a dead child left in its process group (e.g. a pool process that outlived it).

        Waits until none of them runs any more: SIGKILL is delivered asynchronously, and "no process
        left behind" must hold when ``wapipe up`` returns.
        """
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_members(pgid):
            time.sleep(0.02)

    def stop_all(self) -> None:
        """SIGTERM every child's main process, wait, then SIGKILL the process group of what remains."""
        running = [c.process for c in self._children if c.process is not None]
        for process in running:
            if process.poll() is None:
                # Popen.send_signal, not os.kill: it does nothing once the child has been reaped, so it
                # cannot hit a recycled pid.
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        for process in running:
            # Polled rather than one wait(timeout), so a second Ctrl-C (the signal handler sets _kill_now)
            # cuts the wait short.
            while process.poll() is None and not self._kill_now and time.monotonic() < deadline:
                time.sleep(0.05)
            if process.poll() is None:
                if not self._kill_now:
                    self._say(f"pid {process.pid} did not stop in {self._stop_timeout:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # The leader is gone; anything still in its group is an orphaned worker.
            self._reap_group(process.pid)
        for child in self._children:
            child.process = None
