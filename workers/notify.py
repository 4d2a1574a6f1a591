"""``notify.send``: send stored outbound messages through the configured provider, each at most once,
many at a time.

The contract is one job per message (``notify.send(message_id)``: the API and the replies enqueue it;
the API's concurrent calls share a publish, and there their jobs go as one ``notify.send_many`` that
runs each message as its own job would, :func:`dispatch_many`), but one message per task pull cannot
go fast: measured on 2 cores against a provider answering in 150 ms, a prefork pool sending one message
per task makes ~25 sends/s with 4 processes, and a thread pool ~330/s per process at ~3 ms of CPU a send
(Celery, three transactions, two Lua calls and the twilio SDK, for one message). So a task sends a batch
(:func:`dispatch`):

1. One statement (:func:`shared.db.sending.claim`) claims its message, if queued and due, and up to
   ``BATCH_MORE`` other due queued messages, oldest first, ``FOR UPDATE SKIP LOCKED``: ``queued ->
   sending``, one attempt more, ``claimed_by`` = this message. The claim is what makes a send once-only:
   the other messages' own tasks then find them claimed (or sent) and return at once. When its own
   message could not be claimed, the same statement says where it stood: already sent or failed -> done;
   claimed by another task's batch -> done (that task answers for it); not due yet -> later.
   A recipient's messages go to the provider one at a time, in the order they were stored: the claim
   passes over a message while an earlier one to its contact is being sent, is queued and due, or was
   put back to wait for a pacing slot, so a batch holds at most one message per recipient, and a task
   whose own message waits looks again in ``BEHIND_SECONDS``.
2. Checks that fail a message for good, as before: no phone, opted out, WhatsApp's 24-hour window.
3. The rest go to this process's event loop (shared/providers/aio.py), which books send slots per sender
   number from the shared GCRA bucket in bulk (:meth:`shared.ratelimit.RateLimiter.reserve`: the slots
   of the next ``PACING_HORIZON_SECONDS``, one Lua call that also counts each send against its
   recipient's per-minute window; a send over its limit goes back to the queue, due when the window has
   room) and makes each provider call at its slot, all concurrently on one keep-alive aiohttp session
   (``send_async``; a sender without it, such as the console, runs its ``send`` in a thread). A 429 with
   Retry-After blocks the sender number in Redis for every process; a send whose slot passed more than
   ``LATE_SLOT_SECONDS`` ago (a stalled loop) books a new slot rather than go out late and crowd a
   one-second window. A slow Redis (its answer read up to a round trip after it booked the slots) gets
   its bookings padded by the round trip (``MAX_PACING_PAD_SECONDS`` at most, logged when it is not enough).
4. The outcomes are written as they come, a chunk at a time: the task's thread waits for the answers
   the loop hands it and writes those that came within ``SETTLE_EVERY_SECONDS`` of each other in one
   statement (sent, failed, back to the queue, and their timeline events:
   :func:`shared.db.sending.settle`), in one transaction with the dead letters when there are any; only
   then are that chunk's retries enqueued (with their countdown). A provider id is so recorded about a
   second after the provider gave it, long before its delivery receipt stops looking for it
   (workers/status.py), and the database work stays off the loop the process's tasks share. The task is
   acknowledged once the last chunk is written.

The claim and each settle run as a single statement outside an explicit transaction (one round trip to
PostgreSQL each), so a batch of one message (one chunk) costs two round trips and one Lua call besides
the provider call; a task whose message another batch took costs one round trip.

Measured with ``python -m tests.bench.outbound`` (figures in the commit that introduced this): see the
README's Performance section.

Retries and failures are unchanged: transient errors go back to ``queued`` with exponential backoff and
jitter (never sooner than Retry-After); after ``WAPIPE_SEND_MAX_ATTEMPTS`` the message fails and becomes a
dead letter; permanent errors fail at once with the provider's code and message, and one refusing our
credentials (:class:`~shared.providers.base.AccountRefused`) is a dead letter too, to replay once they are
fixed. Pacing waits cost no attempt.

Sending twice is the harm we guard hardest against (a doubled WhatsApp message cannot be recalled), so
delivery toward the provider is at-most-once when the outcome is unknown:

- Two claimers never get one row: the claim moves it out of ``queued`` under a row lock.
- The claim marks every row it takes as unsent (``unsent_claim``, its transaction id). Each booking
  round clears the marks of its sends in one conditional statement (:func:`shared.db.sending.calling`)
  before any of them goes to the provider, so a row still marked is proof it never reached it. A send the
  booking did not reach, left to wait longer than a booked one would (a Retry-After, slots other
  processes took), is marked again (:func:`shared.db.sending.not_calling`).
- A worker killed during its batch leaves rows ``sending`` with ``claimed_by`` = its task's message.
  That task is redelivered (``acks_late``, ``reject_on_worker_lost``), finds its own message still
  ``sending`` and waits out the lease (far longer than a batch can take), then settles every row its
  claim left behind: the chunks already written stand (sent, failed, back in the queue); a row still
  marked unsent goes back to the queue with its attempt given back and a new job (usually most of a
  batch: the sends waiting for their pacing slots); any other fails with ``outcome_unknown`` and
  becomes a dead letter: neither Twilio nor Meta accepts an idempotency key on send, so an operator
  checks the provider's log and replays with ``wapipe dlq replay``. That is at most the sends booked (or
  taken to be) in the last ``PACING_HORIZON_SECONDS``, those awaiting the provider's answer, and those
  answered in the chunk not yet written (about the last ``SETTLE_EVERY_SECONDS``).
  ``notify.sweep`` (meant for beat, every minute) does the same for any claim past the lease, and
  re-enqueues queued messages whose job was lost. Should a worker outlive its lease after all, the
  statement that clears the marks finds its rows taken back and it withdraws those sends.
- A settle moves only the rows its batch's claim still holds (``sending_claim``, the claim's transaction
  id, cleared when the batch or the sweep settles the row): run again after its answer was lost, or by a
  worker past its lease, it leaves alone a row another batch has claimed since, whose outcome stands.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import kombu.exceptions
import psycopg
import redis
from pydantic import ValidationError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

from shared.db import dead_letters, messages, sending
from shared.db.errors import Unavailable
from shared.db.messages import OutboundRecord, Release
from shared.db.pool import autocommit_connection, connection, transaction
from shared.logging import get_logger, scrub
from shared.policy import check_window
from shared.providers import get_sender
from shared.providers.aio import AsyncSender, LoopThread, get_loop
from shared.providers.base import (
    AccountRefused,
    OutboundMessage,
    OutcomeUnknown,
    Sender,
    SendError,
    SendResult,
)
from shared.queues import MAX_COUNTDOWN_SECONDS, NOTIFY_MANY_TASK, NOTIFY_TASK, get_publisher, notify_jobs
from shared.ratelimit import PACING_MARGIN, RateLimiter
from shared.settings import Settings, get_settings
from workers import OUTAGE_RETRIES, celery

log = get_logger(__name__)

TASK = NOTIFY_TASK
# Several messages' notify.send jobs as one (shared/queues.py notify_jobs).
BATCH_TASK = NOTIFY_MANY_TASK
SWEEP_TASK = "notify.sweep"
# Longer than a batch can take (pacing waits are capped below, a provider call times out in 10 s), so a
# row still 'sending' after this long was left by a worker that died.
SEND_LEASE_SECONDS = 120
# Other queued messages one task claims with its own; more amortises the per-batch round trips and the
# wait for the batch's last answers, fewer keeps the wait for a pacing slot short (a batch also never holds
# more than ~2 s of the sender's rate). 500 rather than 200 took the outbound bench from ~620 to ~800
# sends/s once the API's burst was over (prefork x2, rate 1000).
BATCH_MORE = 499
BATCH_SECONDS_OF_RATE = 2.0
# Slots are booked this far ahead: short, so a Retry-After block stops new sends within this time.
PACING_HORIZON_SECONDS = 0.05
# A send that would go out later than this after its slot books a new one: a stalled loop must not spend
# the pacing margin (shared/ratelimit.py) that the network and the provider's clock need.
LATE_SLOT_SECONDS = PACING_MARGIN / 5
# A booking's sends go out up to its Redis round trip late (the slots count from when Redis ran the call,
# somewhere within the round trip), so a booking keeps a pad that long free after its slots (the median
# round trip of the last ROUND_TRIP_MEMORY_SECONDS). Round trips this short fit in LATE_SLOT_SECONDS with
# room for a stalled loop and need none (a Redis on the same host).
UNPADDED_ROUND_TRIP_SECONDS = LATE_SLOT_SECONDS / 4
ROUND_TRIP_MEMORY_SECONDS = 5.0
# A Redis slower than this gets no longer pad: its bookings come back too late to use, and are re-booked
# (and logged, see PACING_WARNING_EVERY_SECONDS) rather than let sends crowd a one-second window.
MAX_PACING_PAD_SECONDS = 0.5
# A padded booking holds this many pads' worth of slots, so the pads cost at most a tenth of the rate;
# never more than MAX_PACING_HORIZON_SECONDS, how late a Retry-After may stop another process's sends.
SLOTS_PER_PAD = 9
MAX_PACING_HORIZON_SECONDS = 1.0
# A sender's pacing trouble is logged, at most once per PACING_WARNING_EVERY_SECONDS each: its sends kept
# missing their slots, none going out on time, for this long (a loop stalled that long, or every booking
# coming back too late), or sends waited past MAX_PACING_WAIT_SECONDS and went back to the queue. Misses
# further apart than this (longer than a padded booking round) are separate spells.
PACING_STUCK_WARNING_SECONDS = 2.0
PACING_WARNING_EVERY_SECONDS = 30.0
# A claimed message that cannot get a slot this soon goes back to the queue, well inside the lease.
MAX_PACING_WAIT_SECONDS = 30.0
# A running batch writes the answers that came within this long of each other in one statement: a kill
# loses at most that much of what the provider answered, and a receipt finds its provider id recorded about
# a second after the answer (status.apply looks for an unknown id for only about a minute).
SETTLE_EVERY_SECONDS = 0.5
OUTCOME_UNKNOWN = OutcomeUnknown.CODE
OUTCOME_UNKNOWN_TEXT = "a worker stopped during the provider call; check the provider's log before replaying"
# A message waiting for an earlier one to its recipient (shared/db/sending.py) looks again this soon: about
# a provider's answer and a settle later.
BEHIND_SECONDS = 1.0
# Queued messages due for this long without being sent get their job again (notify.sweep).
OVERDUE_SECONDS = 300


class RetryLater(Exception):
    """Try the task again in ``countdown`` seconds (pacing, transient provider error, send in flight)."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(f"retry in {countdown:.1f}s: {reason}")
        self.countdown = countdown
        self.reason = reason


def backoff_seconds(attempt: int, base: float, retry_after: float | None = None) -> float:
    """Exponential backoff with equal jitter, capped by the broker's limit; never before Retry-After."""
    ceiling = min(float(MAX_COUNTDOWN_SECONDS), base * 2 ** max(0, attempt - 1))
    countdown = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security
    return min(float(MAX_COUNTDOWN_SECONDS), max(countdown, retry_after or 0.0))


def _jitter(seconds: float) -> float:
    return seconds + random.uniform(0, 0.5)  # noqa: S311 - jitter, not security


# --- what the task runs -------------------------------------------------------------------------------


def dispatch(
    message_id: int,
    *,
    settings: Settings | None = None,
    sender: Sender | None = None,
    batch_more: int | None = None,
) -> str:
    """Send the message and a batch of other due ones; return what happened to this message (sent,
    failed, dead, skipped, claimed, missing). Raises :class:`RetryLater` when it should be tried later."""
    outcome, _ = _dispatch(message_id, settings or get_settings(), sender, batch_more)
    if isinstance(outcome, RetryLater):
        raise outcome
    return outcome


def dispatch_many(
    message_ids: Iterable[int], *, settings: Settings | None = None, sender: Sender | None = None
) -> dict[int, str]:
    """``notify.send_many``: each message as its own ``notify.send`` would be, in batches that share
    claims. One statement first says where each stands: usually an earlier batch has taken most of them,
    and only the queued ones get a claim; a message a claim of this call took (and settled) is not looked
    at again. One that should be tried later gets its own ``notify.send`` job, due then. Per message,
    what happened ("batched" when a claim of this call took it, "later" when it got its own job)."""
    settings = settings or get_settings()
    message_ids = list(dict.fromkeys(message_ids))
    with autocommit_connection() as conn:
        standing = sending.states(conn, message_ids)
    outcomes: dict[int, str] = {}
    for message_id in message_ids:
        if message_id in outcomes:
            continue
        state = standing.get(message_id)
        outcome: str | RetryLater
        if state is None:
            log.warning("outbound message not found", message_id=message_id)
            outcome = "missing"
        elif state.status == "queued":
            outcome, claimed = _dispatch(message_id, settings, sender, None)
            outcomes.update(dict.fromkeys(set(claimed) - outcomes.keys(), "batched"))
        else:
            outcome = _not_claimed_or_later(message_id, state)
        if isinstance(outcome, RetryLater):
            _send_later(message_id, outcome.countdown)
            outcome = "later"
        outcomes[message_id] = outcome
    return outcomes


def _dispatch(
    message_id: int, settings: Settings, sender: Sender | None, batch_more: int | None
) -> tuple[str | RetryLater, list[int]]:
    """:func:`dispatch`'s work: this message's outcome (or when to try it again), and the ids claimed."""
    more = batch_more if batch_more is not None else _batch_more(settings)
    with autocommit_connection() as conn:
        claim = sending.claim(conn, message_id, more)
    if claim is None:
        log.warning("outbound message not found", message_id=message_id)
        return "missing", []
    batch, state = claim.batch, claim.state
    if not batch:
        return _not_claimed_or_later(message_id, state), []
    sender = sender or _process_sender(settings)
    outcomes = _send_batch(batch, settings, sender)
    own = outcomes.settle()  # the last chunk, before the task acks
    outcomes.publish_later()
    claimed = [record.id for record in batch]
    if isinstance(own, Release):
        return RetryLater(_jitter(own.delay), own.code or "pacing"), claimed
    return own, claimed


def _not_claimed_or_later(message_id: int, state: messages.SendState) -> str | RetryLater:
    try:
        return _not_claimed(message_id, state)
    except RetryLater as later:
        return later


def _not_claimed(message_id: int, state: messages.SendState) -> str:
    """Why the claim left this task's own message alone (as it stood just before the claim)."""
    if state.status == messages.SENDING:
        if state.claimed_by not in (None, message_id):
            return "claimed"  # in another task's batch, which records its outcome
        return _in_flight(message_id, state.age)
    if state.status != "queued":
        log.info("outbound message already handled", message_id=message_id, status=state.status)
        return "skipped"
    if state.due_in is not None and state.due_in > 0:
        raise RetryLater(_jitter(state.due_in), "not due yet")
    if state.behind:
        raise RetryLater(_jitter(BEHIND_SECONDS), "an earlier message to the recipient goes first")
    return "skipped"  # queued and due a moment ago: another claimer took it, and answers for it


def _batch_more(settings: Settings) -> int:
    return max(0, min(BATCH_MORE, int(settings.send_rate * BATCH_SECONDS_OF_RATE) - 1))


@dataclass
class _Outcomes:
    """What happened to the messages of a batch: the outcomes not yet written, written a chunk at a time
    while the batch runs (:meth:`settle`), and what the written ones said of this task's own message."""

    own_id: int
    settings: Settings
    claim: int  # the batch's sending_claim: its settles move only the rows this claim still holds
    sent: list[tuple[int, str, str]] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    dead: list[tuple[int, int, SendError]] = field(default_factory=list)  # (id, attempts, error)
    released: list[Release] = field(default_factory=list)
    # Written so far: the own message's outcome, and the other messages back in the queue whose job is not
    # published yet (:meth:`publish_later`).
    own: str | Release = "skipped"
    later: list[Release] = field(default_factory=list)

    def add(self, record: OutboundRecord, result: _Result) -> None:
        if isinstance(result, SendResult):
            self.sent.append((record.id, result.provider, result.provider_message_id))
        elif isinstance(result, Release):
            self.released.append(result)
        elif isinstance(result, SendError):
            self.after_error(record, result)

    def after_error(self, record: OutboundRecord, error: SendError) -> None:
        if isinstance(error, OutcomeUnknown):  # never sent again: failed, and a dead letter to check
            self.dead.append((record.id, record.attempts, error))
        elif isinstance(error, AccountRefused):  # every send fails alike: keep it to replay once fixed
            log.error(
                "provider refused our credentials; kept as a dead letter to replay once they are fixed",
                message_id=record.id,
                error_code=error.code,
            )
            self.dead.append((record.id, record.attempts, error))
        elif error.permanent:
            log.warning("send failed permanently", message_id=record.id, error_code=error.code)
            self.failed.append((record.id, error.code, error.message))
        elif record.attempts >= self.settings.send_max_attempts:
            self.dead.append((record.id, record.attempts, error))
        else:
            delay = backoff_seconds(record.attempts, self.settings.send_retry_base_seconds, error.retry_after)
            log.warning(
                "send failed, will retry",
                message_id=record.id,
                error_code=error.code,
                countdown=round(delay, 1),
            )
            self.released.append(Release(record.id, delay, True, error.code, error.message))

    def settle(self, *, last: bool = True) -> str | Release:
        """Write the outcomes gathered since the last settle in one transaction; this task's own message's
        outcome (``skipped`` until written). ``last``: the batch's last settle, which is patient."""
        if not (self.sent or self.failed or self.dead or self.released):
            return self.own
        (_settle_patiently if last else _settle)(self)  # raises with nothing cleared: a next settle retries
        for message_id, _, error in self.dead:
            log.error("send dead-lettered", message_id=message_id, error_code=error.code)
        written = [
            *((i, "sent") for i, _, _ in self.sent),
            *((i, "failed") for i, _, _ in self.failed),
            *((i, "dead") for i, _, _ in self.dead),
        ]
        for message_id, outcome in written:
            if message_id == self.own_id:
                self.own = outcome
        for release in self.released:
            if release.id == self.own_id:
                self.own = release  # its RetryLater, not a job of its own
            else:
                self.later.append(release)
        self.sent, self.failed, self.dead, self.released = [], [], [], []
        return self.own

    def publish_later(self) -> None:
        """Give each message the settles put back in the queue its job again, due when it is."""
        later, self.later = self.later, []
        try:
            _enqueue_later(later)
        except BaseException:
            self.later = later  # published again next time: a second job finds its message claimed or sent
            raise


# The provider has the messages: recording that must not be lost to a brief database hiccup, or the rows
# would stay 'sending' and end as "outcome unknown". A chunk written while the batch runs that fails even
# so is written with the next one; the batch's last settle is patient (:func:`_settle_patiently`).
@retry(
    retry=retry_if_exception_type(Unavailable),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.5, max=5),
    reraise=True,
)
def _settle(outcomes: _Outcomes) -> None:
    failed = [*outcomes.failed, *((i, e.code, e.message) for i, _, e in outcomes.dead)]
    if not outcomes.dead:  # the usual batch: one statement, atomic on its own
        with autocommit_connection() as conn:
            sending.settle(
                conn, claim=outcomes.claim, sent=outcomes.sent, failed=failed, released=outcomes.released
            )
        return
    with transaction() as conn:  # dead letters are written with the failures they record
        failed_now = set(
            sending.settle(
                conn, claim=outcomes.claim, sent=outcomes.sent, failed=failed, released=outcomes.released
            )
        )
        for message_id, attempts, error in outcomes.dead:
            if message_id in failed_now:
                _dead_letter(conn, message_id, attempts, str(error))


# The batch's last settle keeps trying for half the lease through a database restart or failover: given
# up, the delivered messages it records would end as "outcome unknown" dead letters, inviting a replay that
# sends them twice (five tries gave up after ~7 s). Past the lease it changes nothing: the sweep has taken
# the rows, and a settle moves only the rows its claim still holds.
SETTLE_PATIENCE_SECONDS = SEND_LEASE_SECONDS / 2


_settle_patiently = _settle.retry_with(stop=stop_after_delay(SETTLE_PATIENCE_SECONDS))


def _calling(sends: list[_Send], provider: str) -> set[int]:
    """Of these sends, the ids their claims still hold, now marked as put to ``provider``."""
    with autocommit_connection() as conn:
        claims = [(send.record.id, send.record.unsent_claim or 0) for send in sends]
        return sending.calling(conn, claims, provider)


def _not_calling(sends: list[_Send]) -> set[int]:
    """Of these sends, the ids marked unsent again (:func:`shared.db.sending.not_calling`)."""
    claims = [(s.record.id, s.record.unsent_claim or 0) for s in sends]
    with autocommit_connection() as conn:
        return sending.not_calling(conn, claims)


def _dead_letter(conn: psycopg.Connection, message_id: int, attempts: int, error: str) -> None:
    dead_letters.add(
        conn,
        task_name=TASK,
        message_id=message_id,
        payload={"message_id": message_id},
        # The operator reads this in `wapipe dlq list`, and a provider's error text can name the number.
        error=scrub(error),
        attempts=attempts,
    )


def _enqueue_later(releases: Iterable[Release]) -> None:
    """Each message put back in the queue gets its job again, due when the message is."""
    for release in releases:
        _send_later(release.id, _jitter(release.delay))


def _send_later(message_id: int, countdown: float) -> None:
    """The message's own notify.send, due in ``countdown`` seconds."""
    celery.send_task(TASK, kwargs={"message_id": message_id}, countdown=countdown)


def _send_batch(batch: list[OutboundRecord], settings: Settings, sender: Sender) -> _Outcomes:
    """Check, pace and send the claimed batch, writing the outcomes a chunk at a time as they come; the
    outcomes of the last chunk, not yet written."""
    outcomes = _Outcomes(batch[0].id, settings, batch[0].sending_claim or 0)
    to_send: list[_Send] = []
    for record in batch:
        from_number = record.business_number if record.conversation_provider == sender.name else None
        message_or_refusal = _refusal(record, sender.name) or _outbound_message(record, from_number)
        if isinstance(message_or_refusal, OutboundMessage):
            pace_key = _pace_key(settings, sender.name, from_number)
            to_send.append(_Send(record, message_or_refusal, pace_key))
        else:
            outcomes.failed.append((record.id, *message_or_refusal))
    sent = 0
    if to_send:
        loop = get_loop()
        answers: queue.SimpleQueue[tuple[_Send, _Result]] = queue.SimpleQueue()
        # The sends run on the loop; this thread waits for their answers and writes them, so the database
        # work never holds up the loop that the process's other tasks share.
        running = loop.submit(_send_each(_pacer(loop, settings), to_send, sender, answers.put))
        try:
            left = len(to_send)
            for chunk in _chunks(answers, left, running):
                for send, result in chunk:
                    outcomes.add(send.record, result)
                    sent += isinstance(result, SendResult)
                left -= len(chunk)
                if left:
                    _settle_meanwhile(outcomes)
            running.result()
        except Exception:
            _settle_meanwhile(outcomes)  # what is known, before the task fails
            raise
    if sent:
        log.info("messages sent", count=sent, batch=len(batch))
    return outcomes


async def _send_each(
    pacer: _Pacer, sends: list[_Send], sender: Sender, answer: Callable[[tuple[_Send, _Result]], None]
) -> None:
    """The batch's sends through the pacer, each answer handed to ``answer`` (which must not block: it
    runs on the loop) the moment it comes rather than when the whole batch is done. Each send is queued
    when its task first runs, in the batch's order, so all of them are before the pacer's first booking."""

    async def one(send: _Send) -> None:
        answer((send, await pacer.send(send, sender)))

    await asyncio.gather(*(one(send) for send in sends))


def _chunks(
    answers: queue.SimpleQueue[tuple[_Send, _Result]], count: int, running: concurrent.futures.Future[None]
) -> Iterator[list[tuple[_Send, _Result]]]:
    """The ``count`` answers as they come, in chunks: what arrives within ``SETTLE_EVERY_SECONDS`` of a
    chunk's first answer (the rest at once, should they all be in sooner)."""
    while count:
        try:
            chunk = [answers.get(timeout=SETTLE_EVERY_SECONDS)]
        except queue.Empty:
            if running.done():
                running.result()  # the sends failed: their error
                raise RuntimeError("the batch's sends ended without an answer for each") from None
            continue
        ends = time.monotonic() + SETTLE_EVERY_SECONDS
        while len(chunk) < count:
            try:
                chunk.append(answers.get(timeout=max(0.0, ends - time.monotonic())))
            except queue.Empty:
                break
        count -= len(chunk)
        yield chunk


def _settle_meanwhile(outcomes: _Outcomes) -> None:
    """Write a chunk of a running batch and publish its retries' jobs. Should that fail, the next chunk
    writes these outcomes too; the batch's last settle (before the task acks) raises instead."""
    try:
        outcomes.settle(last=False)
        outcomes.publish_later()
    except (Unavailable, psycopg.Error, redis.RedisError, kombu.exceptions.OperationalError) as exc:
        log.warning(
            "could not record a chunk of the batch yet; the next chunk will", error=type(exc).__name__
        )


def _outbound_message(record: OutboundRecord, from_number: str | None) -> OutboundMessage | tuple[str, str]:
    """The message to send, or why the stored row cannot be one (final): a payload this version's models
    cannot read, written by another version or by hand, must fail alone rather than fail its whole batch
    and, put back in the queue with the rest, every batch that claims it after."""
    if not isinstance(record.payload, dict):
        # A JSON list, string or number (the conversion reads it with .get). Checked rather than caught
        # from the conversion, where a bug of ours would fail every message it touches for good, unretried.
        # Its type alone is logged: the value may quote what was stored.
        payload_type = type(record.payload).__name__
        log.error("stored outbound message cannot be read", message_id=record.id, payload_type=payload_type)
        return "invalid_message", f"the stored message cannot be read (payload: {payload_type})"
    try:
        return OutboundMessage.from_record(
            id=record.id,
            to=record.phone or "",
            type=record.type,
            body=record.body,
            payload=record.payload,
            from_number=from_number,
        )
    except ValidationError as exc:
        # The fields at fault, not the error's text: it quotes the values (a caption, a URL, a number).
        fields = sorted({".".join(str(part) for part in error["loc"]) for error in exc.errors()})
        log.error("stored outbound message cannot be read", message_id=record.id, fields=fields)
        return "invalid_message", f"the stored message cannot be read ({', '.join(fields)})"


def _refusal(record: OutboundRecord, provider: str) -> tuple[str, str] | None:
    """Why this message must not be sent at all (final), or None."""
    if not record.phone:
        return "no_recipient", "the contact has no phone number to send to"
    if record.opted_out and not record.bypass_opt_out:
        return "opted_out", "the recipient opted out (STOP); send START to opt back in"
    # WhatsApp's 24-hour window (shared/policy.py): a free-form message it would refuse fails here, final.
    window = check_window(
        provider=provider,
        message_type=record.type,
        last_inbound_at=record.last_inbound_at,
        now=record.read_at,
    )
    return (window.code, window.message) if window is not None else None


# --- pacing and sending on the event loop ----------------------------------------------------------------


@dataclass
class _Send:
    record: OutboundRecord
    message: OutboundMessage
    pace_key: str  # the sender number whose bucket paces it
    queued_at: float = 0.0
    done: asyncio.Future[_Result] | None = None
    # Its claim's unsent mark is cleared (sending.calling): from here on a dead worker leaves it unknown.
    calling: bool = False

    def __post_init__(self) -> None:
        self.calling = self.record.unsent_claim is None  # no mark to clear: nothing proves it unsent


class _Withdrawn:
    """A send its claim no longer holds (a sweep put the message back in the queue): not sent, and not
    settled by this batch either."""


WITHDRAWN = _Withdrawn()
_Result = SendResult | SendError | Release | _Withdrawn


class _Pacer:
    """One per process, on its loop: a queue per sender number, slots booked in bulk, sends at their slot.

    Every batch in the process shares it, so their sends to one number are booked together (one Lua call
    per ``PACING_HORIZON_SECONDS`` per number and process, longer when Redis is slow to answer) instead of
    each batch polling the bucket.
    """

    def __init__(self, loop: LoopThread, limiter: RateLimiter, settings: Settings) -> None:
        self._loop = loop
        self._limiter = limiter
        self._rate = settings.send_rate
        self._per_minute = settings.recipient_rate_per_minute
        self._queues: dict[str, deque[_Send]] = {}
        self._running: set[str] = set()
        self._blocked_until: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._round_trips: deque[tuple[float, float]] = deque()  # (when it ended, how long it took)
        self._missing: dict[str, tuple[float, float]] = {}  # per number: (first, latest) missed slot
        self._warned_at: dict[tuple[str, str], float] = {}

    async def send(self, send: _Send, sender: Sender) -> _Result:
        """Queue the send for its number's next booking (before this first awaits) and wait for its answer."""
        running = asyncio.get_running_loop()
        send.done = running.create_future()
        send.queued_at = running.time()
        self._enqueue(send, sender)
        return await send.done

    def _enqueue(self, send: _Send, sender: Sender, *, front: bool = False) -> None:
        queue = self._queues.setdefault(send.pace_key, deque())
        if front:
            queue.appendleft(send)
        else:
            queue.append(send)
        if send.pace_key not in self._running:
            self._running.add(send.pace_key)
            self._spawn(self._book(send.pace_key, sender))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _book(self, key: str, sender: Sender) -> None:
        """Book slots for the number's queue until it is empty; each send is counted against its
        recipient's per-minute window in the same call, and one over it goes back to the queue."""
        running = asyncio.get_running_loop()
        queue = self._queues[key]
        taken: list[_Send] = []
        try:
            while queue:
                self._give_up_waiting(key, queue, running.time())
                pad = self._pad(running.time())
                horizon = self._horizon(pad)
                # Out of the queue while the call runs: the answers are per send, and a send that missed
                # its slot meanwhile goes back to the queue's front. A few more than the slots the horizon
                # holds, so a send over its recipient's limit rarely leaves a slot unused.
                taken = [queue.popleft() for _ in range(min(len(queue), int(horizon * self._rate) + 4))]
                if not taken:
                    break
                taken = await self._still_held(taken, sender.name)
                if not taken:
                    continue
                # The slots are offsets from the moment Redis ran the call, which is known only to lie
                # between these two readings: each send goes out at the latest reading plus its offset
                # (never before its slot), so up to the round trip late. The pad booked after the slots
                # covers that much; what the round trip took beyond the pad comes out of the
                # LATE_SLOT_SECONDS a send may lag, and a send later than that is booked again (a reply
                # that sat unread would otherwise push a whole booking late, onto the slots other
                # processes booked after it).
                asked = running.time()
                booking = await asyncio.to_thread(
                    self._limiter.reserve,
                    key,
                    self._rate,
                    [(send.record.phone or "", send.record.id) for send in taken],
                    horizon,
                    self._per_minute,
                    pad,
                )
                now = running.time()
                self._round_trips.append((now, now - asked))
                allowance = LATE_SLOT_SECONDS - max(0.0, now - asked - pad)
                slots = iter(booking.offsets())
                for send, wait in zip(taken, booking.waits, strict=False):
                    if wait > 0:  # the recipient's window is full: back to the queue, due when it has room
                        self._resolve(send, Release(0, wait, False))
                    else:
                        offset = next(slots)
                        self._spawn(self._fire(send, now + offset, allowance, sender))
                unreached = taken[len(booking.waits) :]
                queue.extendleft(reversed(unreached))
                taken = []
                if booking.waits:
                    pause = max(0.0, booking.first + booking.count * booking.interval - 0.01)
                else:
                    pause = min(booking.wait, 1.0)
                if pause > horizon:  # longer than a send booked now waits for its slot
                    await self._not_calling(unreached)
                    pause -= running.time() - now
                await asyncio.sleep(pause)
        except Exception as exc:  # Redis trouble: every waiting send goes back to the queue for later
            log.warning("pacing unavailable", error=type(exc).__name__)
            for send in [*taken, *queue]:
                self._resolve(send, Release(0, _jitter(2.0), False, "pacing_unavailable"))
            queue.clear()
        finally:
            self._running.discard(key)
            if queue:  # arrived while we were leaving
                self._running.add(key)
                self._spawn(self._book(key, sender))

    async def _still_held(self, taken: list[_Send], provider: str) -> list[_Send]:
        """Clear the unsent mark of the sends about to be booked for the first time, before any of them can
        go to ``provider``; a send whose claim a sweep took back is withdrawn."""
        first = [send for send in taken if not send.calling]
        if not first:
            return taken
        held = await asyncio.to_thread(_calling, first, provider)
        for send in first:
            if send.record.id in held:
                send.calling = True
            else:
                log.warning("send withdrawn: its claim was taken back", message_id=send.record.id)
                self._resolve(send, WITHDRAWN)
        return [send for send in taken if send.calling]

    async def _not_calling(self, sends: list[_Send]) -> None:
        """Mark unsent again the sends that had theirs cleared for a booking that did not reach them and
        now wait longer than a booked send does (a Retry-After, a rate other processes have taken): a
        worker dying meanwhile then leaves them to be sent again, not outcome unknown."""
        cleared = [send for send in sends if send.calling and send.record.unsent_claim is not None]
        if not cleared:
            return
        try:
            await asyncio.to_thread(_not_calling, cleared)
        except (Unavailable, psycopg.Error) as exc:
            # The statement may have run all the same (an answer lost after its commit): then a send still
            # taken as cleared would go to the provider marked unsent, and be sent again should the worker
            # die.
            log.warning("could not mark waiting sends unsent again", error_type=type(exc).__name__)
        # Each is cleared again before its booking, marked or not, and one found unmarked then is withdrawn:
        # its claim no longer holds it (the worker outlived its lease, and the sweep failed it or another
        # batch claimed it since), or the statement failed before marking it (the sweep then fails it as
        # outcome unknown past the lease). Taken as still cleared, it would go to the provider unchecked.
        for send in cleared:
            send.calling = False

    def _pad(self, now: float) -> float:
        """Time to keep free after the next booking's slots: the typical (median) recent round trip to
        Redis (the latest is always remembered, so a slow Redis is padded for after an idle spell too).
        Not the longest: on a busy host one slow reply in a few seconds would pad every booking, costing a
        tenth of the rate and seconds of latency (measured with tests.bench.outbound); a booking slower
        than its pad has its late sends booked again instead."""
        trips = self._round_trips
        while len(trips) > 1 and now - trips[0][0] > ROUND_TRIP_MEMORY_SECONDS:
            trips.popleft()
        typical = statistics.median(took for _, took in trips) if trips else 0.0
        return 0.0 if typical < UNPADDED_ROUND_TRIP_SECONDS else min(typical, MAX_PACING_PAD_SECONDS)

    @staticmethod
    def _horizon(pad: float) -> float:
        return min(MAX_PACING_HORIZON_SECONDS, max(PACING_HORIZON_SECONDS, SLOTS_PER_PAD * pad))

    def _give_up_waiting(self, key: str, queue: deque[_Send], now: float) -> None:
        given_up = 0
        while queue and now - queue[0].queued_at > MAX_PACING_WAIT_SECONDS:
            self._resolve(queue.popleft(), Release(0, _jitter(1.0), False, "pacing"))
            given_up += 1
        if given_up:
            self._warn(key, "sends waited too long for a pacing slot; back to the queue", now, count=given_up)

    def _warn(self, key: str, event: str, now: float, **fields: Any) -> None:
        """Log the sender number's pacing trouble, at most once per PACING_WARNING_EVERY_SECONDS each."""
        if (
            now - self._warned_at.get((key, event), -PACING_WARNING_EVERY_SECONDS)
            < PACING_WARNING_EVERY_SECONDS
        ):
            return
        self._warned_at[(key, event)] = now
        round_trip = max((took for _, took in self._round_trips), default=0.0)
        log.warning(event, sender=key, redis_round_trip_ms=round(round_trip * 1000), **fields)

    def _missed(self, key: str, now: float) -> None:
        """A send of this number missed its slot: warn when that has gone on, with none sent on time."""
        first, latest = self._missing.get(key, (now, now))
        if now - latest > PACING_STUCK_WARNING_SECONDS:
            first = now
        self._missing[key] = (first, now)
        if now - first >= PACING_STUCK_WARNING_SECONDS:
            self._warn(
                key, "sends keep missing their pacing slots; booking again", now, for_s=round(now - first, 1)
            )

    async def _fire(self, send: _Send, slot: float, allowance: float, sender: Sender) -> None:
        """Send at the slot; book again if blocked meanwhile or later than ``allowance`` past it."""
        running = asyncio.get_running_loop()
        key = send.pace_key
        delay = slot - running.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = running.time()
        blocked = self._blocked_until.get(key, 0.0) - now
        if blocked > 0:
            self._enqueue(send, sender, front=True)  # book again (the block is in Redis too)
            return
        if now - slot > allowance:
            self._missed(key, now)
            self._enqueue(send, sender, front=True)
            return
        self._missing.pop(key, None)
        try:
            if isinstance(sender, AsyncSender):
                result: SendResult | SendError = await sender.send_async(send.message, self._loop.session())
            else:
                result = await asyncio.to_thread(sender.send, send.message)
        except SendError as error:
            result = error
            if error.retry_after and not error.permanent:
                self._blocked_until[send.pace_key] = running.time() + error.retry_after
                try:
                    await asyncio.to_thread(self._limiter.block_sender, send.pace_key, error.retry_after)
                except redis.RedisError:
                    log.warning("could not record the provider's Retry-After in Redis")
        except Exception:
            # A failure of our own code before any request (an async sender turns one after it into
            # OutcomeUnknown: shared/providers/aio.py provider_call), not an answer: treat it as transient.
            log.exception("unexpected error while sending", message_id=send.record.id)
            result = SendError("internal_error", "unexpected error", permanent=False)
        self._resolve(send, result)

    @staticmethod
    def _resolve(send: _Send, result: _Result) -> None:
        if isinstance(result, Release):
            result = Release(send.record.id, result.delay, False, result.code)
        if send.done is not None and not send.done.done():
            send.done.set_result(result)


_pacers: dict[int, _Pacer] = {}


def _pacer(loop: LoopThread, settings: Settings) -> _Pacer:
    pacer = _pacers.get(id(loop))
    if pacer is None:
        pacer = _pacers[id(loop)] = _Pacer(loop, RateLimiter(get_publisher().redis), settings)
    return pacer


# --- claims left behind ------------------------------------------------------------------------------


def _in_flight(message_id: int, age: float) -> str:
    """This message's own claim is still 'sending': a duplicate delivery while its batch runs, or the
    redelivery after the worker running it died. Past the lease, settle what that claim left behind."""
    if age < SEND_LEASE_SECONDS:
        raise RetryLater(SEND_LEASE_SECONDS - age + 1, "another delivery is sending it")
    abandoned = settle_abandoned(claimer=message_id)
    if message_id in abandoned.returned:
        return "returned"
    return "dead" if message_id in (i for i, _ in abandoned.failed) else "skipped"


def settle_abandoned(claimer: int | None = None) -> messages.Abandoned:
    """Settle the claims past the lease (``claimer``'s, or all): what they never put to the provider goes
    back to the queue with its job; the rest fails (``outcome_unknown``) and is dead-lettered."""
    with transaction() as conn:
        abandoned = messages.settle_abandoned(
            conn,
            lease_seconds=SEND_LEASE_SECONDS,
            code=OUTCOME_UNKNOWN,
            text=OUTCOME_UNKNOWN_TEXT,
            claimer=claimer,
        )
        for message_id, attempts in abandoned.failed:
            _dead_letter(conn, message_id, attempts, f"{OUTCOME_UNKNOWN}: {OUTCOME_UNKNOWN_TEXT}")
    for message_id, _ in abandoned.failed:
        log.error("send outcome unknown; dead-lettered", message_id=message_id)
    if abandoned.returned:
        log.warning("claims a stopped worker never sent are queued again", count=len(abandoned.returned))
        # Committed first: should this publish fail, notify.sweep finds them overdue and enqueues them.
        get_publisher().publish(notify_jobs(abandoned.returned))
    return abandoned


def sweep() -> dict[str, int]:
    """Settle claims past the lease, and give overdue queued messages their job again."""
    abandoned = settle_abandoned()
    with connection() as conn:
        overdue = messages.overdue_queued(conn, grace_seconds=OVERDUE_SECONDS)
    if overdue:
        get_publisher().publish(notify_jobs(overdue))
        log.warning("re-enqueued overdue outbound messages", count=len(overdue))
    return {"abandoned": len(abandoned.failed), "returned": len(abandoned.returned), "requeued": len(overdue)}


# --- the sender -----------------------------------------------------------------------------------------


def _pace_key(settings: Settings, provider: str, from_number: str | None) -> str:
    """The number whose bucket paces a send: the one it goes out from. Replies carry the conversation's
    E.164 number and other messages the configured one (E.164 too, shared/settings.py): both meet in one
    bucket, or that number would get twice the rate."""
    return from_number or _default_sender(settings, provider)


def _default_sender(settings: Settings, provider: str) -> str:
    return {
        "twilio": settings.twilio_whatsapp_number,
        "meta": settings.meta_phone_number_id,
        "kapso": settings.kapso_phone_number_id,
    }.get(provider) or provider


_sender_lock = threading.Lock()
_senders: dict[int, Sender] = {}


def _process_sender(settings: Settings) -> Sender:
    """One sender per process (HTTP connections are reused), made again in a forked child."""
    with _sender_lock:
        pid = os.getpid()
        if pid not in _senders:
            _senders.clear()
            _senders[pid] = get_sender(settings)
        return _senders[pid]


# notify.send and notify.send_many: safe to run again (each message's claim makes its send once-only).
_SEND_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "ignore_result": True,
    **OUTAGE_RETRIES,
    # And kombu's OperationalError: celery.send_task (a message's job for later) wraps a broker error in it.
    "autoretry_for": (*OUTAGE_RETRIES["autoretry_for"], kombu.exceptions.OperationalError),
    # Unbounded here on purpose: the attempt budget that matters is the provider attempts counted on the
    # message row (WAPIPE_SEND_MAX_ATTEMPTS); pacing waits and database outages just wait their turn.
    "max_retries": None,
}


@celery.task(name=TASK, **_SEND_TASK_OPTIONS)
def send_task(self: Any, message_id: int) -> None:
    try:
        dispatch(message_id)
    except RetryLater as later:
        # Attempts are counted on the message row, not by Celery: pacing waits cost no attempt.
        raise self.retry(countdown=later.countdown) from later


@celery.task(name=BATCH_TASK, **_SEND_TASK_OPTIONS)
def send_many_task(self: Any, message_ids: list[int]) -> None:
    dispatch_many(message_ids)


@celery.task(name=SWEEP_TASK, bind=True, acks_late=True, ignore_result=True)
def sweep_task(self: Any) -> None:
    sweep()
