"""``wapipe dlq``: list, replay and discard dead letters (work that exhausted its retries, or with unknown
outcome).

- ``wapipe dlq list``: pending letters (neither replayed nor discarded), oldest first: id, task, message id,
  masked recipient, error (scrubbed as a log line is), attempts, when.
- ``wapipe dlq replay ID [ID ...]`` or ``wapipe dlq replay --all``: for ``notify.send``, the failed message
  becomes ``queued`` again with a fresh attempt budget; the task is enqueued again; the letter is marked
  replayed. In one transaction, then the enqueue after the commit; should the enqueue fail (Redis
  unreachable), the letter is marked pending again and the exit code is 1; should the enqueue time out
  having landed, and the task fail again at once, the letter stays replayed, the report names the new
  pending one (``failed again``) and the exit code is 1. Replaying a replayed letter does nothing: the
  UPDATE that marks it only matches pending letters.
  A letter whose task names a queue this release does not know is reported (``unknown task``, exit code
  1) and left pending, untouched, for an operator to discard; ``--all`` goes on with the rest.
  Ctrl-C or SIGTERM stops a replay between letters, never inside one: the letter in hand is finished
  (replayed with its task enqueued, or left pending), the rest are left untouched, and one line on stderr
  says how many were done, exit code 128 + the signal's number. Killed inside a letter, it would have
  left the letter marked replayed, committed, with its task never enqueued.

A handler stage's letter (verify, commands, flows, ai, persist) does its work again and its sender gets
the stage's real reply, under the reply's usual key ``reply:<message id>``: the apology they were sent
when it gave up has a key of its own (shared/replies.py), so however often the message is replayed or
redelivered it is answered once. Its sender, though, was told to send the message again, and may have;
so such a letter is refused, and stays pending, unless ``--force``:

- when its sender has written to the same business number since, in any conversation: the message sent
  again is answered already (replaying would save a proposal twice), and any later one would see this
  old one answered after it (a late ``/project`` undoing a later choice);
- when the message is more than 24 hours old: WhatsApp's customer-service window (shared/policy.py) has
  closed, so the work would be done (a proposal saved, a phone linked) and its reply refused, leaving
  the user none the wiser.

An ``inbound.route`` letter (the router gave up on an event, perhaps before storing it) is refused alike,
unless ``--force``, judged by its stored message or else by when the event was sent: replayed, an old event
would be stored as a new message after the ones its sender wrote since, answered, and would reopen the
contact's 24-hour window as if they had just written. A message the router stored before it gave up was
recorded as routed to no handler, so as not to hold its conversation's turn (workers/inbound.py
``RouteTask``): replayed, the letter makes it unrouted again, in the transaction that marks it replayed, and
frees its handler's key, which the router took so that no handler of it is published after the give-up; the
route finishes it. The key is freed too for a message left dispatched and unrouted (a give-up that took it
but did not commit), which is not reopened: its route publishes the handler it was dispatched to.

Check the provider's log before replaying an ``outcome_unknown`` letter: it may have been delivered, and a
doubled WhatsApp message cannot be recalled. (A receipt naming the send by our id settles it and closes its
letter on its own: workers/status.py.) So ``--all`` refuses such a letter (it stays pending), even
with ``--force``: the operator replays it by naming its id, once the log shows it was not delivered, or
discards it. ``--all`` is for a batch of letters alike, such as the ``AccountRefused`` sends after a token
is fixed, and must not sweep up a send that may have gone out.

- ``wapipe dlq discard ID [ID ...] --reason TEXT``: closes letters an operator decided not to replay (a
  refused handler letter, an ``outcome_unknown`` send the provider's log shows delivered). The letter is
  marked discarded with the time and the reason, which is required and stored so whoever reads the row
  later learns why nothing was done; nothing is enqueued and its message is left as it is (a failed send
  stays failed). Only a pending letter is discarded: a replayed, discarded or unknown one is reported and
  left alone, and the exit code is 1. A discarded letter is never replayed.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import redis
from pydantic import ValidationError

from shared.commands.arguments import add_data_dir, at_least_one
from shared.db import dead_letters, messages, turns
from shared.db.errors import DatabaseError, Duplicate
from shared.db.pool import transaction
from shared.logging import mask_phone, scrub
from shared.phone import contact_phone
from shared.policy import WINDOW
from shared.providers.base import OutcomeUnknown
from shared.queues import HANDLER_QUEUES, NOTIFY_TASK, Job, get_publisher, handler_key, queue_for
from shared.replies import APOLOGY, APOLOGY_KEY, reply_key
from shared.wire.events import InboundMessage

HELP = (
    "List dead letters, replay them (re-enqueue their task; a failed message is queued again), or discard"
    " them (close them without doing anything, with a reason)."
)

ROUTE_TASK = "inbound.route"
PAGE = 200
ERROR_WIDTH = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="show pending dead letters")
    # A negative limit reached the SQL as an error with a traceback, and 0 printed "no pending dead
    # letters", which an operator would believe.
    listing.add_argument(
        "--limit", type=at_least_one, default=100, help="show at most this many, 1 or more (default 100)"
    )
    replay = actions.add_parser("replay", help="replay dead letters by id, or --all pending ones")
    replay.add_argument("ids", nargs="*", type=int, metavar="ID")
    replay.add_argument(
        "--all",
        action="store_true",
        help="replay every pending dead letter, but a send whose outcome is unknown (it may have been"
        " delivered: check the provider's log, then name its id)",
    )
    replay.add_argument(
        "--force",
        action="store_true",
        help="replay a handler's or the router's letter even when its sender has written since or it is over"
        " 24 hours old (a send whose outcome is unknown is replayed only when named by its id)",
    )
    discard = actions.add_parser(
        "discard",
        help="close pending dead letters without replaying them (nothing is enqueued, messages untouched)",
    )
    discard.add_argument("ids", nargs="+", type=int, metavar="ID")
    discard.add_argument(
        "--reason",
        required=True,
        help="why it is not replayed (e.g. 'delivered per the Twilio log'); stored with the letter, so"
        " whoever reads it later knows why nothing was done",
    )
    # Also after the action (`wapipe dlq list --data-dir X`); SUPPRESS: not given there, the one given
    # before it (or its default) stands.
    for action in (listing, replay, discard):
        add_data_dir(action, default=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return list_letters(args.limit)
    if args.action == "discard":
        return discard_letters(args.ids, args.reason)
    if args.all == bool(args.ids):
        print("wapipe dlq replay: give dead letter ids or --all (not both)", file=sys.stderr)
        return 2
    with stop_signals_held() as stop:
        return replay_letters(args.ids, force=args.force, stop=stop)


def replay_letters(ids: list[int], *, force: bool, stop: StopRequest) -> int:
    """Replay the named letters, or every pending one when ``ids`` is empty; checks ``stop`` between
    letters."""
    named = bool(ids)
    ids = ids or _all_pending_ids()
    outcomes = []
    for letter_id in ids:
        if stop.signum is not None:
            return _interrupted(stop.signum, done=len(outcomes), total=len(ids))
        # Each said as it happens: a failure further on (the database gone) must not take with it the
        # report of the letters already replayed.
        try:
            outcome = replay(letter_id, force=force, named=named)
        except DatabaseError as exc:
            outcome = Replayed(
                letter_id, "not_enqueued", f"the database failed ({type(exc).__name__}); try again"
            )
        print(outcome.describe(), flush=True)
        outcomes.append(outcome)
    if not outcomes:
        print("no pending dead letters")
    # failed_again: the task ran, but a letter for its message is pending again.
    failed = ("unknown", "unknown_task", "refused", "discarded", "not_enqueued", "failed_again")
    return 1 if any(outcome.result in failed for outcome in outcomes) else 0


@dataclass
class StopRequest:
    """The stop signal received while held (None while none was)."""

    signum: int | None = None


@contextlib.contextmanager
def stop_signals_held() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM noted for the block instead of acted on, so a replay stops between letters.

    A letter's replay commits the letter as replayed, then enqueues its task: stopped in between (a
    KeyboardInterrupt, or SIGTERM's default of dying at once), the letter shows replayed and its task was
    never enqueued, and no later replay would do it (a send's message at least is queued again, which
    notify.sweep enqueues; a handler's or the router's work is lost). The letter in hand is bounded by
    the database's and the broker's timeouts (the publisher's 2 s), so the stop is not long in coming.
    """
    stop = StopRequest()

    def note(signum: int, _frame: object) -> None:
        stop.signum = signum

    previous = {signum: signal.signal(signum, note) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupted(signum: int, *, done: int, total: int) -> int:
    left = total - done
    print(
        f"wapipe dlq replay: interrupted ({signal.Signals(signum).name}) after {done} of {total} dead"
        f" letters (each said above); the other {left} {'is' if left == 1 else 'are'} untouched: run it"
        " again to replay them",
        file=sys.stderr,
        flush=True,
    )
    return 128 + signum


def list_letters(limit: int) -> int:
    with transaction() as conn:
        pending = dead_letters.list_pending_with_recipient(conn, limit=limit)
    if not pending:
        print("no pending dead letters")
        return 0
    header = ("ID", "TASK", "MESSAGE", "TO", "ERROR", "ATTEMPTS", "CREATED")
    rows = [
        (
            str(item.letter.id),
            item.letter.task_name,
            str(item.letter.message_id or "-"),
            mask_phone(item.recipient) if item.recipient else "-",
            _short(item.letter.error),
            str(item.letter.attempts),
            item.letter.created_at.strftime("%Y-%m-%d %H:%M:%S %Z"),
        )
        for item in pending
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


@dataclass(frozen=True)
class Replayed:
    letter_id: int
    # replayed | already_replayed | discarded | unknown | unknown_task | not_failed | refused | not_enqueued
    # | failed_again
    result: str
    detail: str = ""

    def describe(self) -> str:
        return f"dead letter {self.letter_id}: {self.result.replace('_', ' ')}" + (
            f" ({self.detail})" if self.detail else ""
        )


def replay(letter_id: int, *, force: bool = False, named: bool = True) -> Replayed:
    """Replay one dead letter; safe to call twice (the second call finds it replayed and does nothing).

    A handler stage's letter is refused (and stays pending) when its message is no longer worth answering,
    unless ``force``; a send whose outcome is unknown is refused when the operator did not name it
    (``named`` is False under ``--all``), whatever ``force``. See the module docstring.
    """
    publisher = get_publisher()  # before anything changes: with no broker configured, nothing is replayed
    with transaction() as conn:
        # Locked until the commit: a `dlq discard` of it waits, so it is not discarded while it is replayed.
        pending = dead_letters.get(conn, letter_id, lock=True)
        if pending is None:
            return Replayed(letter_id, "unknown")
        if pending.discarded_at is not None:
            return Replayed(letter_id, "discarded", "an operator closed it; not replayed")
        if pending.pending and not _known_task(pending.task_name):
            # Checked before anything changes: its job could not be enqueued, and a letter marked replayed
            # with nothing done would leave the list and the alert for good.
            return Replayed(letter_id, "unknown_task", f"{pending.task_name}: no such queue; discard it")
        # Not even with --force: one flag must not also resend, in bulk, messages that may have been
        # delivered; each is replayed by naming it, once the provider's log says it was not.
        if pending.pending and not named and _outcome_unknown(pending):
            return Replayed(
                letter_id,
                "refused",
                "its send's outcome is unknown, it may have been delivered: check the provider's log, then"
                " replay it by id or discard it",
            )
        refusal = None if force or not pending.pending else _why_not_replay(conn, pending)
        if refusal is not None:
            return Replayed(letter_id, "refused", f"{refusal}; --force to replay it anyway")
        inbound_id = pending.message_id if _is_handler(pending.task_name) else None
        if inbound_id is not None and pending.pending:
            # An apology stored before it had a key of its own would swallow the stage's reply.
            dead_letters.move_apology_aside(
                conn,
                reply_key=reply_key(inbound_id),
                apology_key=reply_key(inbound_id, APOLOGY_KEY),
                apology=APOLOGY,
            )
        letter = dead_letters.mark_replayed(conn, letter_id)
        if letter is None:
            return Replayed(letter_id, "already_replayed")
        reopened, unanswered = _reopen_route(conn, letter) if letter.task_name == ROUTE_TASK else (None, None)
        message_id = letter.message_id if letter.task_name == NOTIFY_TASK else None
        if message_id is not None and not messages.requeue_failed(conn, message_id):
            # Sent or queued since (someone resent it): enqueueing could only send it twice.
            status = messages.get_outbound(conn, message_id).status
            return Replayed(letter_id, "not_failed", f"message {message_id} is {status}; marked replayed")
    # After the commit, so the task finds the message queued (and a handler's apology moved aside).
    try:
        if unanswered is not None:
            # Its router took the handler's key in giving it up (workers/ordering.py give_up_turn), or a
            # give-up that did not commit may have left it taken, the message still dispatched and so not
            # reopened: the replayed route must be able to publish that handler's task. Only a key still
            # "forgone" is freed: one its publish set stays.
            publisher.unforgo(handler_key(unanswered))
        publisher.publish([Job(letter.task_name, dict(letter.payload))])
    except (redis.RedisError, OSError) as exc:
        return _reopened(letter, exc, reopened)
    target = f"message {letter.message_id}" if letter.message_id is not None else "payload"
    return Replayed(letter_id, "replayed", f"{letter.task_name} enqueued for {target}")


def _reopen_route(conn: psycopg.Connection, letter: dead_letters.DeadLetter) -> tuple[int | None, int | None]:
    """The message the router's letter gave up on, made unrouted again so the replayed route finishes it
    (a router that gives up records it as routed to no handler: workers/inbound.py ``RouteTask``), None
    when it was not stored, or is answered or owed an answer; and the stored message no handler answered
    (reopened or not), whose handler's key the replay frees."""
    try:
        inbound = InboundMessage.model_validate(letter.payload["event"])
    except (KeyError, TypeError, ValidationError):
        return None, None  # not an event: the task finds that out and says so
    provider, provider_message_id = inbound.provider.value, inbound.provider_message_id
    reopened = turns.reopen_route(conn, provider, provider_message_id)
    unanswered = reopened if reopened is not None else turns.unanswered(conn, provider, provider_message_id)
    return reopened, unanswered


def _reopened(
    letter: dead_letters.DeadLetter, error: Exception, route_message: int | None = None
) -> Replayed:
    """The letter was marked replayed but its task could not be enqueued: mark it pending again, so it is
    listed, alerted on and replayed later, rather than closed with nothing done. What the replay already
    did stands and is harmless: a message queued again is re-enqueued by notify.sweep, an apology moved
    aside stays aside; but the message of a router's letter (``route_message``), made unrouted to be
    routed again, is given up on again, as its router did, or it would hold its conversation's turn
    (unless a route has dispatched it since: the publish landed, and that dispatch's turn is its handler's).

    A publish that timed out may have landed all the same: its task may have run and failed again at once,
    leaving a new pending letter for the same task and message, and the unique index
    dead_letters_one_pending (migration 0014) then refuses to reopen this one. Its task was enqueued and
    ran: this letter stays replayed, and the operator is sent to the new one."""
    letter_id = letter.id
    cause = type(error).__name__
    try:
        with transaction() as conn:
            dead_letters.reopen(conn, letter_id)
            if route_message is not None:
                turns.undo_reopen(conn, route_message)
    except Duplicate:
        return _failed_again(letter, cause)
    except (DatabaseError, psycopg.Error) as failure:
        return Replayed(
            letter_id,
            "not_enqueued",
            f"the queue could not be reached ({cause}) nor the letter marked pending again"
            f" ({type(failure).__name__}): it shows replayed, but its task was not enqueued",
        )
    return Replayed(letter_id, "not_enqueued", f"the queue could not be reached ({cause}); still pending")


def _failed_again(letter: dead_letters.DeadLetter, cause: str) -> Replayed:
    """The letter could not be reopened because its task, enqueued after all, failed again: name the
    letter that failure left pending (looked up, so a failure to read it is said as such)."""
    again = None
    if letter.message_id is not None:
        try:
            with transaction() as conn:
                again = dead_letters.pending_for(conn, letter.task_name, letter.message_id)
        except (DatabaseError, psycopg.Error):
            again = None
    where = f"see dead letter {again.id}" if again is not None else "see `wapipe dlq list`"
    return Replayed(
        letter.id,
        "failed_again",
        f"the queue's answer was lost ({cause}), yet its task ran again and failed: {where}",
    )


def discard_letters(ids: list[int], reason: str) -> int:
    reason = reason.strip()
    if not reason:
        print("wapipe dlq discard: --reason must say why the letters are not replayed", file=sys.stderr)
        return 2
    results = [discard(letter_id, reason) for letter_id in ids]
    for letter_id, result in zip(ids, results, strict=True):
        print(f"dead letter {letter_id}: {result.replace('_', ' ')}")
    return 0 if all(result == "discarded" for result in results) else 1


def discard(letter_id: int, reason: str) -> str:
    """Discard one pending dead letter: discarded | already_replayed | already_discarded | unknown.

    Only the letter's row changes, in one conditional UPDATE, so a letter being replayed at the same
    moment ends up either replayed or discarded, never both.
    """
    with transaction() as conn:
        if dead_letters.mark_discarded(conn, letter_id, reason) is not None:
            return "discarded"
        return _not_pending(conn, letter_id)


def _not_pending(conn: psycopg.Connection, letter_id: int) -> str:
    """Why letter ``letter_id`` is not pending: already_replayed | already_discarded | unknown."""
    letter = dead_letters.get(conn, letter_id)
    if letter is None:
        return "unknown"
    return "already_discarded" if letter.discarded_at is not None else "already_replayed"


def _known_task(task_name: str) -> bool:
    try:
        queue_for(task_name)
    except ValueError:  # a task of a queue this release does not know
        return False
    return True


def _is_handler(task_name: str) -> bool:
    try:
        return queue_for(task_name) in HANDLER_QUEUES
    except ValueError:  # a task of a queue this release does not know
        return False


def _outcome_unknown(letter: dead_letters.DeadLetter) -> bool:
    """Whether ``letter`` is a send that may have reached the provider (workers/notify.py records its
    error as ``outcome_unknown: ...``)."""
    return letter.task_name == NOTIFY_TASK and letter.error.startswith(f"{OutcomeUnknown.CODE}:")


def _why_not_replay(conn: psycopg.Connection, letter: dead_letters.DeadLetter) -> str | None:
    """Why a handler's or the router's letter should not be replayed now, if it should not."""
    if letter.task_name == ROUTE_TASK:
        return _why_not_route(conn, letter)
    if letter.message_id is not None and _is_handler(letter.task_name):
        return _why_not_answer(conn, letter.message_id)
    return None


def _why_not_answer(conn: psycopg.Connection, inbound_id: int) -> str | None:
    """Why the handler's work on inbound ``inbound_id`` should not be done now, if it should not."""
    since = dead_letters.inbound_since(conn, inbound_id)
    if since is None:
        return None  # no such inbound message: the task finds that out and says so
    return _stale(since, f"message {inbound_id}", "its work would be done and its reply refused")


def _why_not_route(conn: psycopg.Connection, letter: dead_letters.DeadLetter) -> str | None:
    """Why the router's event should not be routed now, if it should not: replayed, an old event would be
    stored after the messages its sender wrote since, answered, and would reopen the 24-hour window as if
    they had just written."""
    try:
        inbound = InboundMessage.model_validate(letter.payload["event"])
    except (KeyError, TypeError, ValidationError):
        return None  # not an event: the task finds that out and says so
    # The event was received before its letter was written, whatever the provider's clock says.
    sent_at = min(inbound.sent_at, letter.created_at)
    event = dead_letters.InboundEvent(
        provider=inbound.provider.value,
        provider_message_id=inbound.provider_message_id,
        business_number=inbound.business_number,
        phone=contact_phone(inbound.sender_phone),
        bsuid=inbound.sender_bsuid,
        sent_at=sent_at,
    )
    since = dead_letters.event_since(conn, event)
    return _stale(since, "its message", "it would be answered outside it")


def _stale(since: dead_letters.InboundSince, message: str, outcome: str) -> str | None:
    """Why a message is no longer worth the work: its sender wrote since, or its window has closed."""
    if since.later:
        plural = "" if since.later == 1 else "s"
        return (
            f"its sender has sent {since.later} message{plural} since, perhaps this one again: replaying"
            " would do its work twice or answer it out of order"
        )
    if since.age > WINDOW:
        hours = int(since.age.total_seconds() // 3600)
        return f"{message} came {hours} h ago: WhatsApp's 24-hour window has closed, so {outcome}"
    return None


def _all_pending_ids() -> list[int]:
    ids: list[int] = []
    after = 0
    while True:
        with transaction() as conn:
            page = dead_letters.list_pending(conn, limit=PAGE, after=after)
        if not page:
            return ids
        ids += [letter.id for letter in page]
        after = page[-1].id


def _short(error: str) -> str:
    # Scrubbed before it is cut, so a number or secret cut short is still masked. Letters are scrubbed when
    # written, but with the patterns of their day: an older one may hold the recipient's number, a token or
    # a URL's credentials in the provider's or HTTP client's text. scrub is idempotent.
    line = " ".join(scrub(error).split())
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 1] + "…"
