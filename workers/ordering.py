"""Per-conversation order for the handler stages: a handler task runs only on its message's turn.

Several worker processes per queue, and several queues per conversation (``/project mobile`` goes to
``commands``, the free text after it to ``ai``), would otherwise answer a quick succession of messages in
whatever order the workers pick them: the text parsed before the project switch lands in the wrong
project, a ``/status`` overtakes the ``VERIFY`` before it, the assistant answers without the previous turn
in its history. So every handler task first takes its message's *turn* (:func:`in_turn`): if an earlier
message of the conversation is still owed an answer (dispatched by the router and not yet handled, or not
yet routed; see :mod:`shared.db.turns` for exactly which, and for the 5-minute grace after which a stuck
one is passed over with a warning), the task does not run but schedules itself again a moment later
(0.025 s at first, doubling up to 1 s, jittered so waiting tasks do not all wake together).

Design notes:

- The turn is in PostgreSQL, not a Redis lock: ``dispatched_at`` (set by the router *before* it publishes
  the handler's task) and ``handled_at`` (set by :func:`shared.replies.answer` in the handler's last hop)
  are both written where the effects are, so no lock can outlive or be lost apart from them, and a waiting
  task holds nothing while it waits: no worker blocks, and no two tasks can wait for each other (a task
  only ever waits for *earlier* messages; the earliest unanswered one always runs).
- Waiting is counted apart from failures: the task is republished with the same id and retry count and a
  ``wapipe_turn_waits`` header, so a conversation busy for a while does not eat the stage's retries for
  PostgreSQL outages. After :data:`MAX_WAIT_SECONDS` (well past the stale grace) it runs anyway: better out
  of order than never. A retry after a failure starts that clock afresh (:func:`with_fresh_clock`): an
  outage is not waiting. ``flows.step``'s waits for its conversation's lock are no failures either
  (:meth:`StageTask.again`, counted in a header of their own), and a wait for the turn keeps that count.
- Multi-hop handlers keep the turn until their last hop answers: ``ai.parse_proposal`` does not mark its
  message handled when it hands it to ``persist.save_proposal``; persist, which needs no turn of its own
  (its message already had it), does.
- A handler that gives up on its message for good (its task fails: an unexpected error, retries
  exhausted) releases the turn at once (:class:`StageTask.on_failure`), so the conversation does not wait
  out the grace for a message that will never be answered.
- A handler retrying after a failure is not dead, though the database cannot tell the two apart: through a
  PostgreSQL outage longer than the stale grace, the earlier message's handler and the later one's both
  retry with a backoff of up to 5 minutes, and whichever runs first once the database is back would win.
  So a stage task's retry after a failure (not a wait: waits never call ``retry``) first marks its message
  in Redis as retrying, with when the retry is due (:func:`mark_retrying`, ``turn:retrying:<message id>``,
  expiring a while after the grace; a mark due sooner never replaces it, as the route retrying after it
  published the handler shares the key with that handler), and a stale predecessor so marked, its retry
  due less than the grace ago (or still to come), is waited for instead of passed over, the wait's cap
  counted from that due time (:func:`waits_for`). A task waiting for such a predecessor marks its own
  message likewise, due now, at each look: it may be stale itself by then, and the messages after it must
  wait for it in turn. So does a task waiting behind a message that is not stale, once its own message
  may be found stale (dispatched :data:`PASS_AT_ONCE_UNDER_SECONDS` ago): the message it waits for may be
  younger than its own (dispatched again by its retried route), and once that one is answered, a later
  message would find this one stale, unmarked, and pass it over just as it goes. Retries
  are bounded, the last failure removes the mark with the turn, and a mark not renewed lapses, so still
  nothing waits for ever. The marks are read (one ``MGET``) only when there are stale predecessors, and a
  waiter's written only then or when it is that old itself, so the usual path costs no Redis call; both
  are best effort: a Redis error is a warning, and the stale predecessor is passed over as without the
  mark.
- Passing over stale messages takes two looks. A stale predecessor may be a task as alive as this one,
  waiting for the same earlier message (dispatched at the same moment, or both back from an outage): both
  find that message stale at once and, unmarked, would go in either order. So a task about to pass over
  stale messages first marks its own (due now) and looks again once every waiting task has looked
  (:data:`PASS_OVER_LOOK_SECONDS`): the earlier then goes, and the later finds it marked and waits for it.
  Only a conversation with a stale message pays for this (a second, one ``SET``), never the usual path.
  And not every message behind a dead one (passing over does not release it: until it is past the
  horizon, each later message of the conversation finds it stale): a message dispatched less than
  :data:`PASS_AT_ONCE_UNDER_SECONDS` ago, with one stale message ahead, passes over it at once. No later
  task can find this message stale before it is answered or running, so it needs no mark; and the lone
  stale message has nothing ahead of it to be waiting for, so it is no waiter about to pass over either.
  With two or more stale messages ahead, the later ones may be such waiters, not marked yet: then even a
  fresh message looks twice. So does one whose turn was read for its stage only (``flows.step``), its
  stale predecessor possibly waiting for a message the read left out.
- ``flows.step`` takes the turn too, but only against other stages' messages
  (:attr:`StageTask.orders_own_messages`): its per-conversation Redis lock and drain already answer the
  flow's own messages in order, without waiting for their tasks to be delivered
  (shared/flows/service.py), yet not against a ``VERIFY`` answered by the verify stage. The turn is
  checked before the lock is taken and never while it is held, so the two cannot deadlock.
- A stage that reads its message first anyway can read the turn in the same statement and hand it to
  :func:`take_turn` from its task body, instead of having :func:`in_turn` read it apart
  (``commands.handle``: shared/db/answers.py reads the message, its stored reply and its turn at once).
- A task called in-process (tests, ``.apply()``) runs at once: there is no queue to come back through.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import psycopg
import redis
from celery import Task
from celery.exceptions import Retry
from kombu.exceptions import KombuError

from shared import arrivals
from shared.db import turns
from shared.db.pool import connection, transaction
from shared.logging import get_logger
from shared.queues import get_publisher, handler_key
from workers.base import WapipeTask

log = get_logger(__name__)

TURN_WAITS_HEADER = "wapipe_turn_waits"
# When the task first waited (epoch seconds, the worker's clock), carried from wait to wait.
WAITING_SINCE_HEADER = "wapipe_waiting_since"
# Well past turns.STALE_AFTER, after which nothing waits anyway: a wait this long is a bug, not a turn.
MAX_WAIT_SECONDS = 900.0
FIRST_WAIT_SECONDS = 0.05
LONGEST_WAIT_SECONDS = 1.0
# A task about to pass over stale messages marks itself and looks again this much later: by then every
# task waiting in its conversation has looked (each at least once a second, LONGEST_WAIT_SECONDS).
PASS_OVER_LOOK_SECONDS = 2 * LONGEST_WAIT_SECONDS
# A message dispatched less than this long ago cannot be found stale by a later task before it goes (with
# a margin for the time between its look and its answer, and for a busy queue), so it passes a lone stale
# predecessor over at once, without a mark and a second look.
PASS_AT_ONCE_UNDER_SECONDS = turns.STALE_AFTER.total_seconds() - PASS_OVER_LOOK_SECONDS - 30

F = TypeVar("F", bound=Callable[..., Any])


def message_id_of(args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> int | None:
    """The inbound message id a handler task was called with (its first argument, by convention)."""
    value = (kwargs or {}).get("message_id")
    if value is None and args:
        value = args[0]
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def wait_seconds(waits: int) -> float:
    """How long the ``waits``-th wait lasts: doubling from a few ms (a command takes milliseconds) to 1 s."""
    return jittered_wait(2 ** min(waits, 5))


def jittered_wait(steps: float) -> float:
    """``steps`` times the first wait, at most the longest, with jitter so tasks waiting for the same
    message do not all wake together."""
    backoff = min(LONGEST_WAIT_SECONDS, FIRST_WAIT_SECONDS * steps)
    return backoff * random.uniform(0.5, 1)  # noqa: S311 (jitter, not a secret)


def check_turn(message_id: int, own_stage: str | None = None) -> bool:
    """True when inbound message ``message_id`` may be handled now; logs each earlier message passed over
    because it held the turn longer than :data:`shared.db.turns.STALE_AFTER`. ``own_stage``: see
    :func:`shared.db.turns.ahead_of`."""
    return allows(message_id, read_turn(message_id, own_stage))


def read_turn(message_id: int, own_stage: str | None = None) -> turns.Turn:
    """Who is ahead of ``message_id`` in its conversation (:func:`shared.db.turns.ahead_of`)."""
    with connection() as conn:
        return turns.ahead_of(conn, message_id, own_stage)


def allows(message_id: int, turn: turns.Turn) -> bool:
    """:func:`check_turn` on a turn already read (with the message: shared/db/answers.py)."""
    return waits_for(message_id, turn) is None


class Wait(NamedTuple):
    """Why a message is not handled yet: an earlier one holds the turn. ``since``: when that one's retry
    after a failure is due (epoch seconds) if it is stale but retrying; the wait's cap counts from then.
    ``countdown``: when to look again, if not after the usual wait (:func:`wait_seconds`)."""

    since: float | None = None
    countdown: float | None = None


def waits_for(message_id: int, turn: turns.Turn, now: float | None = None) -> Wait | None:
    """None when ``message_id`` may be handled now (logging each stale predecessor it passes over);
    otherwise what it waits for. A stale predecessor whose handler is retrying after a failure, due less
    than :data:`shared.db.turns.STALE_AFTER` before ``now`` (default the clock's), is waited for, and
    ``message_id`` is then marked as retrying too, due ``now``; so it is while it waits for a predecessor
    that is not stale, once it may be found stale itself (:func:`may_be_found_stale`). Stale predecessors
    are passed over only once ``message_id`` is so marked itself (the first look that would pass them marks
    it and waits), unless it may pass them over at once (:func:`passes_over_at_once`)."""
    now = time.time() if now is None else now
    if turn.waiting_for is not None:
        if may_be_found_stale(turn):
            # Waiting behind a message that is not stale (dispatched again by its retried route, later than
            # this one), this one may be stale itself: once that message is answered, it is about to go,
            # and a later message must not pass it over as dead. Marked as due now, at each look.
            mark_retrying(message_id, due=now, now=now)
        return Wait()
    if not turn.stale:
        return None
    marks = retry_marks(message_id, (*turn.stale, message_id))
    if marks is not None:
        *ahead, own = marks
        wait = wait_for_marked(message_id, ahead, own, now, looks_twice=not passes_over_at_once(turn))
        if wait is not None:
            return wait
    for earlier in turn.stale:
        log.warning(
            "earlier message of the conversation left unanswered; not waiting for it any longer",
            message_id=message_id,
            earlier_message_id=earlier,
            stale_after_seconds=turns.STALE_AFTER.total_seconds(),
        )
    return None


def passes_over_at_once(turn: turns.Turn) -> bool:
    """Whether a message may pass over the stale messages of its ``turn`` in one look: dispatched a short
    while ago, with a lone stale message ahead of it, its turn read for every stage (see the module
    docstring)."""
    return not turn.one_stage and not may_be_found_stale(turn) and len(turn.stale) == 1


def may_be_found_stale(turn: turns.Turn) -> bool:
    """Whether a later message may find this ``turn``'s message stale before its next look: dispatched
    :data:`PASS_AT_ONCE_UNDER_SECONDS` ago or more (or when, unknown)."""
    return turn.own_age is None or turn.own_age >= PASS_AT_ONCE_UNDER_SECONDS


def wait_for_marked(
    message_id: int,
    ahead: Sequence[float | None],
    own: float | None,
    now: float,
    *,
    looks_twice: bool = True,
) -> Wait | None:
    """What ``message_id`` waits for, given when the retries marked on its stale predecessors are due
    (``ahead``) and its own (``own``); None when it may pass them over. ``looks_twice``: pass them over
    only once it is marked itself."""
    fresh_after = now - turns.STALE_AFTER.total_seconds()
    due = max((mark for mark in ahead if mark is not None), default=None)
    if due is not None and due > fresh_after:
        log.debug(  # on every poll while it waits: debug
            "an earlier message of the conversation is being retried; waiting for it",
            message_id=message_id,
            retry_due_in_seconds=round(due - now),
        )
        # Waiting out an outage's tail, this message may be stale too, its own retry's mark (if any) long
        # due: marked as due now, at each look, it keeps its turn against the messages after it.
        mark_retrying(message_id, due=now, now=now)
        return Wait(due)
    if looks_twice and (own is None or own <= fresh_after) and mark_retrying(message_id, due=now, now=now):
        # A stale predecessor may be a task waiting as this one does, that finds the message before it
        # stale at the same moment: both would go, in either order. So each first marks itself and looks
        # again once every waiting task has looked; the later one then finds the earlier marked.
        return Wait(countdown=PASS_OVER_LOOK_SECONDS)
    return None


def take_turn(task: Task, message_id: int, turn: turns.Turn | None = None) -> None:
    """Return when it is ``message_id``'s turn; otherwise schedule ``task`` again and raise ``Retry``.

    ``turn``: the turn as the task already read it (read for the task's stage, see
    :attr:`StageTask.orders_own_messages`), sparing a second read; None reads it here.
    """
    request = task.request
    if request.called_directly or request.is_eager:
        return
    if turn is None:
        own_stage = task.name if getattr(task, "orders_own_messages", False) else None
        turn = read_turn(message_id, own_stage)
    wait = waits_for(message_id, turn)
    if wait is not None:
        wait_a_moment(task, countdown=wait.countdown, since=wait.since, message_id=message_id)


def retrying_key(message_id: int) -> str:
    """The Redis key marking inbound message ``message_id``'s handler as retrying after a failure."""
    return f"turn:retrying:{message_id}"


# KEYS[1]: a message's retrying mark; ARGV[1]: when its retry is due (epoch seconds, as text), ARGV[2]: how
# long the mark must last (whole seconds). A mark due later is kept as it is, and lasts longer already: it
# is another task's for the same message (its handler's, while its route retries too), still to come.
_MARK_RETRYING = """
local current = tonumber(redis.call('GET', KEYS[1]))
if current and current >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


@functools.lru_cache(maxsize=4)
def _mark_retrying_script(client: redis.Redis) -> Any:
    # One per Redis client (a forked worker child has its own): making one hashes the script.
    return client.register_script(_MARK_RETRYING)


def mark_retrying(message_id: int, due: float, now: float | None = None) -> bool:
    """Mark ``message_id``'s handler as retrying, due again at ``due`` (epoch seconds), until the stale
    grace (and a margin) past then; a mark due later stays. Best effort: without it, a later message may
    pass this one over. False when Redis refused it."""
    now = time.time() if now is None else now
    lasts = due - now + turns.STALE_AFTER.total_seconds() + arrivals.MARK_MARGIN_SECONDS
    try:
        client = get_publisher().redis
        script = _mark_retrying_script(client)
        script(keys=[retrying_key(message_id)], args=[repr(due), max(1, math.ceil(lasts))])
    except redis.RedisError as exc:
        log.warning(
            "could not mark a handler as retrying", message_id=message_id, error_type=type(exc).__name__
        )
        return False
    return True


def retry_marks(message_id: int, messages: Sequence[int]) -> list[float | None] | None:
    """When the retries marked on these ``messages``' handlers are due (epoch seconds), None for each not
    marked; None when Redis could not tell. ``message_id``: whose turn it is, for the log."""
    try:
        marks = get_publisher().redis.mget([retrying_key(marked) for marked in messages])
    except redis.RedisError as exc:
        log.warning(
            "could not look up whether earlier handlers are retrying",
            message_id=message_id,
            error_type=type(exc).__name__,
        )
        return None
    return [due_of(mark) for mark in marks]


def due_of(mark: bytes | None) -> float | None:
    """The due time a retrying mark holds; None for none (or not ours)."""
    try:
        return float(mark) if mark is not None else None
    except ValueError:
        return None


def wait_a_moment(
    task: Task, countdown: float | None = None, since: float | None = None, **log_fields: Any
) -> None:
    """Schedule the running ``task`` again a moment later, to wait for an earlier message of its
    conversation, and raise ``Retry``; return instead when it may wait no longer (then it goes ahead).

    A wait is not a failure: the task keeps its id, retry count and other headers, counts its waits in a
    header of its own (:data:`TURN_WAITS_HEADER`), which ``countdown`` defaults to :func:`wait_seconds` of,
    and keeps when it began to wait (:data:`WAITING_SINCE_HEADER`), up to :data:`MAX_WAIT_SECONDS`.
    ``since``: count the wait from then instead (epoch seconds), from now on.
    """
    request = task.request
    waits = waits_of(task)
    since = waiting_since(task) if since is None else since
    if time.time() - since >= MAX_WAIT_SECONDS:
        log.warning("waited too long for an earlier message; going ahead", task=task.name, **log_fields)
        return
    countdown = wait_seconds(waits) if countdown is None else countdown
    # The task's other headers too (Celery's retry keeps them): a flows.step's count of waits for its
    # conversation's lock must not start afresh because it also waited for its turn.
    kept = getattr(request, "headers", None) or {}
    headers = {**kept, TURN_WAITS_HEADER: waits + 1, WAITING_SINCE_HEADER: since}
    again = task.signature_from_request(request, countdown=countdown, headers=headers)
    try:
        again.apply_async()
    except (KombuError, OSError, redis.RedisError) as exc:
        # The broker is unreachable, so the wait cannot be scheduled: out of order beats failing the task
        # and never answering.
        log.warning(
            "could not schedule the wait for an earlier message; going ahead",
            task=task.name,
            error_type=type(exc).__name__,
            **log_fields,
        )
        return
    log.debug("waiting for an earlier message", task=task.name, waits=waits + 1, **log_fields)
    raise Retry("waiting for an earlier message of the conversation", when=countdown, sig=again)


def waiting_since(task: Task) -> float:
    """When the running ``task`` first waited for an earlier message (epoch seconds); now if never."""
    since = getattr(task.request, WAITING_SINCE_HEADER, None)
    try:
        return float(since) if since is not None else time.time()
    except (TypeError, ValueError):
        return time.time()


def waits_of(task: Task) -> int:
    """How many times the running ``task`` has waited for an earlier message."""
    return int(getattr(task.request, TURN_WAITS_HEADER, None) or 0)


def in_turn(run: F) -> F:
    """Wrap a bound handler task's function: it runs only on its message's turn (see module docstring)."""

    @functools.wraps(run)
    def turn_then_run(self: Task, *args: Any, **kwargs: Any) -> Any:
        message_id = message_id_of(args, kwargs)
        if message_id is not None:
            take_turn(self, message_id)
        return run(self, *args, **kwargs)

    return turn_then_run  # type: ignore[return-value]


def retry_due_at(task: Task, options: Mapping[str, Any]) -> float | None:
    """When the running ``task``'s retry after a failure, with these ``Task.retry`` options, is due
    (epoch seconds): its countdown, or the task's default retry delay, from now. None when it runs
    in-process (no queue to come back through)."""
    request = task.request
    if request.called_directly or request.is_eager:
        return None
    countdown = options.get("countdown")
    return time.time() + (task.default_retry_delay if countdown is None else countdown)


def with_fresh_clock(task: Task, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for the running ``task``'s retry after a failure, without its waiting clock
    (:data:`WAITING_SINCE_HEADER`). Celery's retry keeps the request's headers, so a task that was waiting
    for an earlier message when the failure came would count its retries' backoff as waiting: through a
    database outage of 15 minutes it would pass :data:`MAX_WAIT_SECONDS` and go ahead of that message as
    soon as the database is back. Its count of waits stays."""
    request = task.request
    if request.called_directly or request.is_eager:
        return options
    headers = dict(request.headers or {})
    headers.pop(WAITING_SINCE_HEADER, None)
    return {**options, "headers": headers}


class StageTask(WapipeTask):
    """Base class of the handler stages' tasks: a task that fails for good releases its message's turn,
    and one retried after a failure holds it (:func:`mark_retrying`) and waits afresh
    (:func:`with_fresh_clock`)."""

    #: True for a stage that answers its own earlier messages in order itself (flows.step's drain): its
    #: tasks then wait only for the messages dispatched to other stages.
    orders_own_messages: bool = False

    def retry(self, *args: Any, **options: Any) -> Any:
        message_id = message_id_of(self.request.args, self.request.kwargs)
        due = retry_due_at(self, options)
        if message_id is not None and due is not None:
            # Before the retry is published, so no later message sees it pending without the mark.
            mark_retrying(message_id, due)
        return super().retry(*args, **with_fresh_clock(self, options))

    def again(self, countdown: float, headers: Mapping[str, Any]) -> Retry:
        """The ``Retry`` to raise to run the task again ``countdown`` seconds later, not as a failure: as
        :meth:`retry` (its message marked as retrying, its waiting clock dropped, a publish that fails puts
        the delivery back), but with its retry count kept. Celery's count (``retries``) is what bounds and
        spaces the task's retries through an outage (``OUTAGE_RETRIES``, which
        :data:`shared.db.turns.HORIZON` is derived from), so a task that also waits for something of its
        own (flows.step for its conversation's lock) counts those waits in ``headers``, added to the
        request's (kept, as Celery's retry keeps them). In-process (tests, ``.apply()``) this is Celery's
        retry: there is no queue to come back through."""
        request = self.request
        if request.called_directly or request.is_eager:
            return self.retry(countdown=countdown, headers={**(request.headers or {}), **headers})
        kept = with_fresh_clock(self, {})["headers"]
        message_id = message_id_of(request.args, request.kwargs)
        if message_id is not None:
            mark_retrying(message_id, time.time() + countdown)  # before the publish, as retry marks it
        return self.republish(countdown, {**kept, **headers})

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        message_id = message_id_of(args, kwargs)
        if message_id is not None:
            give_up_turn(message_id, exc)


def give_up_turn(message_id: int, exc: BaseException, *, routing: bool = False) -> None:
    """The task answering (or, with ``routing``, routing) inbound message ``message_id`` failed for good
    with ``exc``: clear its retrying mark and release its turn, so its conversation's later messages go
    ahead at once.

    A message its router gave up on is not routed yet, which holds the turn as a dispatch does: it is
    recorded as routed with no handler (shared/db/turns.py ``give_up_route``), unless a run of the route
    published its handler's task: an earlier run that failed after it, or another run of the route going
    on at this moment (a wait or a retry whose publish timed out yet landed, beside the delivery it was to
    replace), its dispatch the very one being cleared. The turn and the retrying mark are then that
    handler's. The give-up takes the handler's dedupe key before it commits (:func:`_forgo_handler`),
    which tells the two apart in one step: a task published before keeps the key, and the give-up rolls
    back; none is published after."""
    if routing:
        released = _give_up_route(message_id)
    else:
        _clear_retrying_mark(message_id)
        released = _release(message_id)
    if released:
        if routing:
            _clear_retrying_mark(message_id)
        log.warning(
            "handler gave up on a message; later messages of its conversation go ahead",
            message_id=message_id,
            error_type=type(exc).__name__,
        )


def _release(message_id: int) -> bool:
    """Release the turn of the message its handler gave up on. True if it held it."""
    try:
        with transaction() as conn:
            return turns.release(conn, message_id)
    except Exception as error:  # best effort: the stale grace releases it anyway
        _could_not_release(message_id, error)
        return False


def _give_up_route(message_id: int) -> bool:
    """Record the message its router gave up on as routed to no handler, with its handler's key taken
    (:func:`give_up_turn`). True if it was given up (committed)."""
    # Whether the forgo took the handler's key; None when it may have, its answer lost.
    took_key: bool | None = False
    try:
        with transaction() as conn:
            if turns.give_up_route(conn, message_id):
                took_key = None  # from here on, even should the forgo raise
                took_key = _forgo_handler(message_id)
            if not took_key:
                raise psycopg.Rollback  # routed already, or its handler's turn stands (or may)
    except Exception as error:  # best effort: the stale grace releases it anyway
        _could_not_release(message_id, error)
        released = False
    else:
        released = took_key is True
    if took_key is not False and not released:
        # A key taken for a give-up that did not commit would stay "forgone" for the key's 7 days: the
        # message left dispatched and unrouted, no run of its route could publish its handler. Should the
        # commit have landed all the same (its answer lost), the message is routed, and no later run of
        # the route dispatches it again (turns.mark_dispatched).
        _unforgo_handler(message_id)
    return released


def _could_not_release(message_id: int, error: BaseException) -> None:
    log.warning(
        "could not release the turn of a failed handler",
        message_id=message_id,
        error_type=type(error).__name__,
    )


def _clear_retrying_mark(message_id: int) -> None:
    try:
        get_publisher().redis.delete(retrying_key(message_id))
    except redis.RedisError as error:  # best effort: the mark lapses anyway
        log.warning(
            "could not clear the retrying mark of a failed handler",
            message_id=message_id,
            error_type=type(error).__name__,
        )


def _forgo_handler(message_id: int) -> bool | None:
    """Take inbound message ``message_id``'s handler key for the route giving it up: True when no handler's
    task was published, and now none will be. False when one was. None when Redis cannot tell (the key
    may have been taken all the same): the turn is kept, as a turn held for nothing is released by the
    stale grace, but one released under a live handler lets a later message be answered first."""
    try:
        return get_publisher().forgo(handler_key(message_id))
    except redis.RedisError as error:
        log.warning(
            "could not tell whether a failed route published its handler; keeping its turn",
            message_id=message_id,
            error_type=type(error).__name__,
        )
        return None


def _unforgo_handler(message_id: int) -> None:
    """Free the handler key a give-up that did not commit may have taken (only while it says forgone)."""
    try:
        get_publisher().unforgo(handler_key(message_id))
    except redis.RedisError as error:  # best effort: a replay of the route's letter frees it too
        log.warning(
            "could not free the handler key of a route that gave up; a replay of its letter frees it",
            message_id=message_id,
            error_type=type(error).__name__,
        )
