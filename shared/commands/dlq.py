"""``wapipe dlq``: list and replay dead letters (work that exhausted its retries, or with unknown outcome).

- ``wapipe dlq list``: pending letters, oldest first: id, task, message id, masked recipient, error,
  attempts, when.
- ``wapipe dlq replay ID [ID ...]`` or ``wapipe dlq replay --all``: for ``notify.send``, the failed message
  becomes ``queued`` again with a fresh attempt budget; the task is enqueued again; the letter is marked
  replayed. In one transaction, then the enqueue after the commit. Replaying a replayed letter does
  nothing: the UPDATE that marks it only matches pending letters.

Check the provider's log before replaying an ``outcome_unknown`` letter: it may have been delivered.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from shared.db import dead_letters, messages
from shared.db.pool import transaction
from shared.logging import mask_phone
from shared.queues import NOTIFY_TASK, Job, get_publisher

HELP = "List dead letters, or replay them (re-enqueue their task; a failed message is queued again)."

PAGE = 200
ERROR_WIDTH = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="show pending dead letters")
    listing.add_argument("--limit", type=int, default=100, help="show at most this many (default 100)")
    replay = actions.add_parser("replay", help="replay dead letters by id, or --all pending ones")
    replay.add_argument("ids", nargs="*", type=int, metavar="ID")
    replay.add_argument("--all", action="store_true", help="replay every pending dead letter")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return list_letters(args.limit)
    if args.all == bool(args.ids):
        print("wapipe dlq replay: give dead letter ids or --all (not both)", file=sys.stderr)
        return 2
    ids = args.ids or _all_pending_ids()
    outcomes = [replay(letter_id) for letter_id in ids]
    for outcome in outcomes:
        print(outcome.describe())
    if not outcomes:
        print("no pending dead letters")
    return 1 if any(outcome.result == "unknown" for outcome in outcomes) else 0


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
    result: str  # replayed | already_replayed | unknown | not_failed
    detail: str = ""

    def describe(self) -> str:
        return f"dead letter {self.letter_id}: {self.result.replace('_', ' ')}" + (
            f" ({self.detail})" if self.detail else ""
        )


def replay(letter_id: int) -> Replayed:
    """Replay one dead letter; safe to call twice (the second call finds it replayed and does nothing)."""
    with transaction() as conn:
        letter = dead_letters.mark_replayed(conn, letter_id)
        if letter is None:
            existing = dead_letters.get(conn, letter_id)
            return Replayed(letter_id, "already_replayed" if existing else "unknown")
        message_id = letter.message_id if letter.task_name == NOTIFY_TASK else None
        if message_id is not None and not messages.requeue_failed(conn, message_id):
            # Sent or queued since (someone resent it): enqueueing could only send it twice.
            status = messages.get_outbound(conn, message_id).status
            return Replayed(letter_id, "not_failed", f"message {message_id} is {status}; marked replayed")
    # After the commit, so the task finds the message queued.
    get_publisher().publish([Job(letter.task_name, dict(letter.payload))])
    target = f"message {letter.message_id}" if letter.message_id is not None else "payload"
    return Replayed(letter_id, "replayed", f"{letter.task_name} enqueued for {target}")


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
    line = " ".join(error.split())
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 1] + "…"
