"""Group commit: the threads of one process share one round trip instead of paying one each.

gunicorn's threaded workers have several requests in flight at once, and each wants one short write
(a Redis publish, a PostgreSQL insert) before it answers. With :class:`GroupCommit` the first thread to
submit becomes the leader and runs the batch function on everything pending; the threads that submit
while it runs queue up, and when the leader's round trip ends it answers its own batch and hands the lead
to the oldest of them, which runs the next batch with everything that queued meanwhile. So there is at
most one batch in flight, no thread waits for more than the batch in flight plus its own, and each
submitter returns (or raises) only once its own item's outcome is known: the durability of the write is
the batch function's, unchanged. With one submitter at a time it degenerates to a plain call.

It is the leader/follower group commit of database write-ahead logs, without a commit delay: a batch
grows by itself while the previous round trip is in flight, so an idle process adds no latency.

Sharing a round trip must not let one submitter's bad item fail the others: given ``run_one``, a batch
whose shared call fails in a way one item can cause is run again one item at a time, so each submitter
gets the outcome its item would have had alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from threading import Event, Lock
from typing import Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")

# What a batch function returns: per item, in order, its result or the exception its submitter raises.
Outcomes = Sequence[R | BaseException]


class WaitTimeout(TimeoutError):
    """A submitter gave up before any batch took its item: nothing was run for it."""


class _Waiter(Generic[T, R]):
    __slots__ = ("done", "error", "item", "lead", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = Event()
        self.lead = False  # set (before ``done``) when this waiter is handed the lead
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Runs ``run_batch`` on the items of concurrent :meth:`submit` calls, one batch at a time.

    ``run_batch(items)`` gets the pending items in arrival order and returns one outcome per item: its
    result, or an exception for that item's submitter alone. An exception it raises goes to every
    submitter of the batch. It runs in the leader's thread, never in two threads at once.

    ``run_one(item)`` (optional) does the same for one item. When ``run_batch`` raises for two or more
    items an exception ``one_at_fault`` accepts (by default any ``Exception``), the shared call may have
    failed for one item only, so each item is run alone with ``run_one`` and gets its own result or
    exception. ``one_at_fault`` says no to what would fail every item alone too (the server is away), so
    such a batch fails at once instead of taking one more round trip per item. ``run_batch`` must have
    written nothing when it raises an exception ``one_at_fault`` accepts.

    ``wait_timeout`` (seconds, or None to wait as long as the batch in flight takes) bounds how long a
    submitter waits for a stuck leader before its item is taken into a batch: it then raises
    :class:`WaitTimeout` and its item is never run. Once taken into a batch it waits for that batch's
    answer, bounded only by ``run_batch`` itself (a timeout then could answer a write that did happen).
    Thread-safe; one per process and kind of write.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Outcomes[R]],
        *,
        wait_timeout: float | None = None,
        run_one: Callable[[T], R] | None = None,
        one_at_fault: Callable[[Exception], bool] = lambda exc: True,
    ) -> None:
        self._run_batch = run_batch
        self._run_one = run_one
        self._one_at_fault = one_at_fault
        self._wait_timeout = wait_timeout
        self._lock = Lock()
        self._queue: list[_Waiter[T, R]] = []
        self._busy = False  # a leader is running (or about to run) a batch

    @property
    def waiting(self) -> int:
        """How many submitted items wait for the next batch (not the one in flight)."""
        with self._lock:
            return len(self._queue)

    def submit(self, item: T) -> R:
        """``item``'s result from the batch that ran it; raises its exception, or :class:`WaitTimeout`."""
        mine: _Waiter[T, R] = _Waiter(item)
        with self._lock:
            self._queue.append(mine)
            lead = not self._busy
            self._busy = True
        if not lead:
            self._wait(mine)
        if lead or mine.lead:
            self._flush()
        if mine.error is not None:
            raise mine.error
        return cast("R", mine.result)

    def _wait(self, mine: _Waiter[T, R]) -> None:
        """Until a batch answered ``mine`` or handed it the lead."""
        if mine.done.wait(self._wait_timeout):
            return
        with self._lock:
            if not mine.lead and mine in self._queue:
                self._queue.remove(mine)
                raise WaitTimeout("timed out waiting for a shared round trip")
        # Taken into the batch in flight (its answer is on its way) or just made leader.
        mine.done.wait()

    def _flush(self) -> None:
        """Run one batch of everything queued, answer it, then hand over the lead or release it."""
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._answer(batch)
        finally:
            with self._lock:
                if self._queue:
                    # Hand over to the oldest submitter that arrived during this round trip.
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._busy = False
            for waiter in batch:
                waiter.done.set()

    def _answer(self, batch: list[_Waiter[T, R]]) -> None:
        try:
            outcomes = self._outcomes([waiter.item for waiter in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} answered with {len(outcomes)} outcomes")
        except BaseException as exc:
            for waiter in batch:
                waiter.error = exc
            return
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                waiter.error = outcome
            else:
                waiter.result = outcome

    def _outcomes(self, items: list[T]) -> Outcomes[R]:
        """``run_batch``'s outcomes, or each item's own when the shared call failed (see ``run_one``)."""
        run_one = self._run_one
        try:
            return self._run_batch(items)
        except Exception as exc:
            if run_one is None or len(items) == 1 or not self._one_at_fault(exc):
                raise
        return [_alone(run_one, item) for item in items]


def _alone(run_one: Callable[[T], R], item: T) -> R | BaseException:
    try:
        return run_one(item)
    except Exception as exc:
        return exc
