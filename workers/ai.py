"""Queue ``ai``: free text from a linked user becomes a proposal, handed to ``persist.save_proposal``.

The plain function :func:`parse_message` is what the task runs and what tests call. It is safe to run
twice: a message whose proposal is already stored is not parsed again, and persisting is idempotent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shared.ai.openai_parser import parse_proposal
from shared.ai.proposal import ProposalError
from shared.db import proposals
from shared.db.errors import Unavailable
from shared.db.messages import InboundRecord, get_inbound, mark_handled
from shared.db.pool import transaction
from shared.logging import get_logger
from shared.queues import Job, get_publisher
from shared.replies import queue_reply
from shared.sessions import Sessions
from shared.settings import Settings, get_settings
from workers import celery

log = get_logger(__name__)

CHOOSE_PROJECT = (
    "📁 Choose a project first: send /project <name> (or /list projects to see them), "
    "then send your message again."
)
NOT_LINKED = "🔗 Link your WhatsApp to your account first: ask the app for a code and send VERIFY <code>."
NO_ITEMS = "🤔 I could not find a task in that: {reason}"


def message_day(record: InboundRecord) -> dt.date:
    """The day the user sent the message (server time zone): what "tomorrow" and "Friday" count from."""
    return record.created_at.astimezone().date()


def parse_message(message_id: int, sessions: Sessions | None = None, settings: Settings | None = None) -> str:
    """Parse inbound ``message_id`` and enqueue its persistence; return what happened (for logs/tests):
    ``"done"`` (already stored), ``"not_linked"``, ``"no_project"``, ``"no_items"`` or ``"parsed"``."""
    if proposals.id_for_message(message_id) is not None:
        return "done"
    settings = settings or get_settings()
    record = get_inbound(message_id)
    if record.user_id is None:
        # Routing sends only linked users here; a link removed meanwhile gets the instructions.
        _answer(message_id, NOT_LINKED)
        return "not_linked"
    sessions = sessions or Sessions(get_publisher().redis)
    project_id = sessions.load(record.user_key).get("project_id")
    if not project_id:
        _answer(message_id, CHOOSE_PROJECT)
        return "no_project"
    try:
        proposal, parser = parse_proposal(record.body or "", message_day(record), settings)
    except ProposalError as exc:
        _answer(message_id, NO_ITEMS.format(reason=exc))
        return "no_items"
    job = Job(
        "persist.save_proposal",
        {
            "message_id": message_id,
            "proposal": proposal.to_json_dict(),
            "parser": parser,
            "project_id": str(project_id),
        },
    )
    get_publisher().publish([job])
    log.info("proposal parsed", message_id=message_id, parser=parser, items=len(proposal.items))
    return "parsed"


def _answer(message_id: int, text: str) -> None:
    queue_reply(message_id, text)
    with transaction() as conn:
        mark_handled(conn, message_id)


@celery.task(
    name="ai.parse_proposal",
    bind=True,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(Unavailable,),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=8,
)
def parse_proposal_task(self: Any, message_id: int) -> None:
    parse_message(message_id)
