"""The group-commit primitive with real threads: every submitter gets its own item's outcome, a batch's
error reaches that batch's submitters only, the lead passes to the oldest waiter, and none is left waiting.

No clock is asserted: batches are held on events and submitters are seen queued through ``waiting``;
the waiter timeout is driven by a stand-in Event whose timed waits expire when the test says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from shared import group_commit
from shared.group_commit import GroupCommit, Outcomes, WaitTimeout

PATIENCE = 30  # seconds before a broken test fails instead of hanging; never reached when it passes


def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a state other threads reach soon) until it holds."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "the expected state was never reached"
        time.sleep(0.001)


def outcome(future: Future[Any]) -> Any:
    try:
        return future.result(PATIENCE)
    except Exception as exc:
        return exc


class Recorder:
    """A batch function that records each batch (and the thread running it) and answers ``(item, n)``
    with n the batch's number; the batches listed in ``hold`` wait for ``release`` before answering."""

    def __init__(self, hold: Sequence[int] = (), fail: Sequence[int] = ()) -> None:
        self.batches: list[list[Any]] = []
        self.runners: list[int] = []
        self.hold = set(hold)
        self.fail = set(fail)
        self.running = threading.Event()  # a held batch is in flight
        self.release = threading.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    def __call__(self, items: list[Any]) -> Outcomes[Any]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        number = len(self.batches)
        self.batches.append(items)
        self.runners.append(threading.get_ident())
        try:
            if number in self.hold:
                self.running.set()
                assert self.release.wait(PATIENCE)
                self.release.clear()
            if number in self.fail:
                raise RuntimeError(f"batch {number} failed")
            return [(item, number) for item in items]
        finally:
            self.in_flight -= 1


def test_many_submitters_each_get_their_own_result_and_batches_never_overlap() -> None:
    recorder = Recorder()
    group: GroupCommit[int, Any] = GroupCommit(recorder)
    threads, per_thread = 16, 50
    start = threading.Barrier(threads)

    def submitter(t: int) -> list[int]:
        start.wait(PATIENCE)
        mine = [t * per_thread + i for i in range(per_thread)]
        return [group.submit(item)[0] for item in mine]

    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(submitter, range(threads)))

    assert answers == [[t * per_thread + i for i in range(per_thread)] for t in range(threads)]
    run = sorted(item for batch in recorder.batches for item in batch)
    assert run == list(range(threads * per_thread))  # each item run exactly once
    assert recorder.most_in_flight == 1
    # Nothing left waiting and the lead released: the next submitter runs its batch itself, alone.
    assert group.waiting == 0
    assert group.submit(-1) == (-1, len(recorder.batches) - 1)
    assert recorder.batches[-1] == [-1]
    assert recorder.runners[-1] == threading.get_ident()


def test_an_error_in_a_batch_reaches_exactly_that_batch_submitters() -> None:
    # Batch 0 holds while batch 1's submitters queue; batch 1 fails and holds while batch 2's queue.
    recorder = Recorder(hold=[0, 1], fail=[1])
    group: GroupCommit[str, Any] = GroupCommit(recorder)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(group.submit, "first")
        assert recorder.running.wait(PATIENCE)
        recorder.running.clear()
        failing = [pool.submit(group.submit, f"f{i}") for i in range(3)]
        until(lambda: group.waiting == 3)
        recorder.release.set()
        assert recorder.running.wait(PATIENCE)
        after = [pool.submit(group.submit, f"a{i}") for i in range(3)]
        until(lambda: group.waiting == 3)
        recorder.release.set()
        assert outcome(first) == ("first", 0)
        errors = [outcome(future) for future in failing]
        assert [outcome(future) for future in after] == [(f"a{i}", 2) for i in range(3)]

    assert [type(error) for error in errors] == [RuntimeError] * 3
    assert errors[0] is errors[1] is errors[2]  # the batch's one error, delivered to each of its submitters
    batches = [sorted(batch) for batch in recorder.batches]
    assert batches == [["first"], ["f0", "f1", "f2"], ["a0", "a1", "a2"]]
    assert group.waiting == 0


def test_an_item_error_reaches_its_own_submitter_only() -> None:
    def run(items: list[int]) -> Outcomes[int]:
        return [ValueError(item) if item % 5 == 0 else item * 10 for item in items]

    group: GroupCommit[int, int] = GroupCommit(run)
    with ThreadPoolExecutor(8) as pool:
        answers = [outcome(future) for future in [pool.submit(group.submit, i) for i in range(100)]]

    for item, answer in enumerate(answers):
        if item % 5 == 0:
            assert isinstance(answer, ValueError)
            assert answer.args == (item,)
        else:
            assert answer == item * 10


def test_a_batch_answered_with_the_wrong_count_fails_its_submitters() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="batch of 1 answered with 0 outcomes"):
        group.submit(1)
    assert group.waiting == 0


def test_the_lead_passes_to_the_oldest_waiter_while_submissions_keep_arriving() -> None:
    # While each batch is in flight two more submitters arrive, one after the other; the batch only ends
    # once both are queued. Each next batch must hold exactly those two, in arrival order, run by the
    # thread of the older one, and the chain must go on until the arrivals stop.
    rounds = 20
    group: GroupCommit[int, int] = GroupCommit(lambda items: run(items))
    pool = ThreadPoolExecutor(2 * rounds + 1)
    threads: dict[int, int] = {}
    batches: list[list[int]] = []
    runners: list[int] = []
    futures: list[Future[int]] = []

    def submitter(item: int) -> int:
        threads[item] = threading.get_ident()
        return group.submit(item)

    def run(items: list[int]) -> list[int]:
        batches.append(items)
        runners.append(threading.get_ident())
        if len(batches) <= rounds:
            for queued in (1, 2):
                futures.append(pool.submit(submitter, len(futures) + 1))
                until(lambda queued=queued: group.waiting == queued)
        return [item * 10 for item in items]

    with pool:
        assert submitter(0) == 0
        answers = [future.result(PATIENCE) for future in futures]

    assert batches == [[0]] + [[2 * n + 1, 2 * n + 2] for n in range(rounds)]
    assert runners == [threads[batch[0]] for batch in batches]  # the oldest of each batch led it
    assert answers == [item * 10 for item in range(1, 2 * rounds + 1)]
    assert group.waiting == 0


class ControlledEvent(threading.Event):
    """An Event whose timed waits expire only once ``expire`` is set (then at once), never by the
    clock; ``expired`` is set each time one did."""

    expire = threading.Event()
    expired = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        while not super().wait(0.001):
            if ControlledEvent.expire.is_set():
                ControlledEvent.expired.set()
                return False
        return True


@pytest.fixture
def controlled_clock(monkeypatch: pytest.MonkeyPatch) -> type[ControlledEvent]:
    monkeypatch.setattr(group_commit, "Event", ControlledEvent)
    ControlledEvent.expire.clear()
    ControlledEvent.expired.clear()
    return ControlledEvent


def test_a_waiter_no_batch_took_gives_up_and_is_never_run(controlled_clock: type[ControlledEvent]) -> None:
    recorder = Recorder(hold=[0])
    group: GroupCommit[str, Any] = GroupCommit(recorder, wait_timeout=1.0)
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(group.submit, "stuck")
        assert recorder.running.wait(PATIENCE)
        waiter = pool.submit(group.submit, "patient")
        until(lambda: group.waiting == 1)
        controlled_clock.expire.set()
        assert isinstance(outcome(waiter), WaitTimeout)
        assert group.waiting == 0
        recorder.release.set()
        assert outcome(leader) == ("stuck", 0)

    assert recorder.batches == [["stuck"]]  # the waiter's item was never run
    assert group.submit("next") == ("next", 1)  # and the lead was released


def test_a_waiter_taken_into_a_batch_waits_for_its_answer_past_the_timeout(
    controlled_clock: type[ControlledEvent],
) -> None:
    # "older" and "taken" queue behind a held batch; "older" leads the next batch, which holds both, and
    # only answers once "taken" has timed out waiting: "taken" must get its answer, not a timeout (its
    # item is being written; giving up then could answer a write that did happen).
    taken_timed_out = threading.Event()
    first_release = threading.Event()
    batches: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        batches.append(items)
        if len(batches) == 1:
            assert first_release.wait(PATIENCE)
        elif len(batches) == 2:
            controlled_clock.expire.set()
            assert controlled_clock.expired.wait(PATIENCE)
            taken_timed_out.set()
        return [item.upper() for item in items]

    group: GroupCommit[str, str] = GroupCommit(run, wait_timeout=1.0)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(group.submit, "first")
        until(lambda: len(batches) == 1)
        older = pool.submit(group.submit, "older")
        until(lambda: group.waiting == 1)
        taken = pool.submit(group.submit, "taken")
        until(lambda: group.waiting == 2)
        first_release.set()
        assert [outcome(f) for f in (first, older, taken)] == ["FIRST", "OLDER", "TAKEN"]

    assert taken_timed_out.is_set()
    assert batches == [["first"], ["older", "taken"]]


class Fragile:
    """A batch function that refuses a whole batch holding ``"bad"`` (``ValueError``) or ``"down"``
    (``ConnectionError``), and its ``one`` counterpart; records what each ran. The first batch is held
    until ``release`` so that the submitters behind it share the next one."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.alone: list[str] = []
        self.running = threading.Event()
        self.release = threading.Event()

    def together(self, items: list[str]) -> list[str]:
        self.batches.append(items)
        if len(self.batches) == 1:
            self.running.set()
            assert self.release.wait(PATIENCE)
        if "down" in items:
            raise ConnectionError("server away")
        if "bad" in items:
            raise ValueError("a bad item")
        return [item.upper() for item in items]

    def one(self, item: str) -> str:
        self.alone.append(item)
        if item == "bad":
            raise ValueError("the bad item")
        return item.upper()


def behind_a_held_batch(group: GroupCommit[str, str], fragile: Fragile, items: list[str]) -> list[Any]:
    """Submit ``items`` while a first batch is in flight, then let it end: each one's outcome."""
    with ThreadPoolExecutor(len(items) + 1) as pool:
        first = pool.submit(group.submit, "first")
        assert fragile.running.wait(PATIENCE)
        futures = [pool.submit(group.submit, item) for item in items]
        until(lambda: group.waiting == len(items))
        fragile.release.set()
        assert outcome(first) == "FIRST"
        return [outcome(future) for future in futures]


def test_a_batch_one_item_broke_is_run_again_item_by_item() -> None:
    fragile = Fragile()
    group: GroupCommit[str, str] = GroupCommit(fragile.together, run_one=fragile.one)

    good_one, bad, good_two = behind_a_held_batch(group, fragile, ["a", "bad", "b"])

    assert (good_one, good_two) == ("A", "B")
    assert isinstance(bad, ValueError)
    assert bad.args == ("the bad item",)  # its own run's error, not the batch's
    assert fragile.batches == [["first"], ["a", "bad", "b"]]
    assert fragile.alone == ["a", "bad", "b"]


def test_a_batch_failure_one_at_fault_declines_fails_every_item_without_running_them_alone() -> None:
    fragile = Fragile()
    group: GroupCommit[str, str] = GroupCommit(
        fragile.together,
        run_one=fragile.one,
        one_at_fault=lambda exc: not isinstance(exc, ConnectionError),
    )

    answers = behind_a_held_batch(group, fragile, ["a", "down", "b"])

    assert [type(answer) for answer in answers] == [ConnectionError] * 3
    assert answers[0] is answers[1] is answers[2]
    assert fragile.alone == []


def test_a_lone_item_whose_batch_failed_is_not_run_again() -> None:
    fragile = Fragile()
    fragile.release.set()
    group: GroupCommit[str, str] = GroupCommit(fragile.together, run_one=fragile.one)

    with pytest.raises(ValueError, match="a bad item"):  # the batch's error: the same call failed alone
        group.submit("bad")
    assert fragile.alone == []
    assert group.submit("ok") == "OK"
