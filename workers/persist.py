"""Queue ``persist``: store a parsed proposal once, then tell the user (with a link to it when the host
application's URL is set).

:func:`save_proposal` is the plain function the task runs. Saving is idempotent on the source message and
the reply's idempotency key is ``reply:<message id>``, so a redelivered task stores and sends nothing new.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import ValidationError

from shared.ai.proposal import Proposal
from shared.bot.commands import CHOOSE_PROJECT
from shared.db import proposals, workspaces
from shared.db.messages import get_inbound
from shared.db.pool import connection
from shared.logging import get_logger
from shared.queues import get_publisher
from shared.replies import answer, apologise
from shared.sessions import Sessions
from shared.settings import Settings, get_settings
from workers import stage_task
from workers.ai import NOT_LINKED

log = get_logger(__name__)

MAX_LISTED_ITEMS = 10
MAX_LISTED_LEFT_OUT = 3


# An item line holds the user's own words, in their language: its figures are marked with symbols, not
# English words, so that no line mixes two languages; the header's fixed words are English, as every other
# reply of the bot is.
_DUE = "📅"
_PRIORITY_MARKS = {"high": "❗", "low": "🔽"}
# A long project name would push the items out of sight on a phone.
PROJECT_NAME_MAX = 80


def _hours(value: float) -> str:
    return f"{round(value, 2):g}h"


def reply_text(
    proposal_id: UUID, proposal: Proposal, settings: Settings, project_name: str | None = None
) -> str:
    """The WhatsApp confirmation: the project, the item count and total (each said once: for one item its
    line says it all), the items, what the parser read but left out, and the link to review it when
    ``WAPIPE_APP_URL`` is set.

    The proposal's summary is not repeated: it restates the same figures (in the message's language, the
    offline parser's or the model's own wording), and is kept for the host application."""
    count = len(proposal.items)
    head = "✅ Proposal saved"
    if project_name:
        head += f" to {_clipped(project_name, PROJECT_NAME_MAX)}"
    if count > 1:
        head += f": {count} items"
        # Only a total of every item: a sum of some would not add up with the lines below.
        if proposal.total_estimated_hours is not None:
            head += f", {_hours(proposal.total_estimated_hours)} total"
    lines = [head]
    for position, item in enumerate(proposal.items[:MAX_LISTED_ITEMS], start=1):
        details = [item.title]
        if item.estimated_hours is not None:
            details.append(_hours(item.estimated_hours))
        if item.due_date is not None:
            details.append(f"{_DUE} {item.due_date.isoformat()}")
        if item.priority in _PRIORITY_MARKS:
            details.append(_PRIORITY_MARKS[item.priority])
        lines.append(f"{position}. " + " · ".join(details))
    if count > MAX_LISTED_ITEMS:
        lines.append(f"… and {count - MAX_LISTED_ITEMS} more")
    # A deadline that is no day ("due 31/02") or hours no item can hold is in no line above: without this
    # one the sender would not know it was dropped. Quoted, the sender's words under English fixed words.
    if proposal.left_out:
        quoted = ", ".join(f"“{text}”" for text in proposal.left_out[:MAX_LISTED_LEFT_OUT])
        more = ", …" if len(proposal.left_out) > MAX_LISTED_LEFT_OUT else ""
        lines.append(f"Not understood, left out: {quoted}{more}")
    # The review page is the host application's: with no WAPIPE_APP_URL there is nowhere to link to.
    if settings.links_base_url is not None:
        lines.append(f"Review it: {settings.links_base_url}/proposals/{proposal_id}")
    return "\n".join(lines)


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def save_proposal(
    message_id: int,
    proposal: dict[str, Any],
    parser: str,
    project_id: str | None = None,
    *,
    sessions: Sessions | None = None,
    settings: Settings | None = None,
) -> UUID | None:
    """Store the proposal for inbound ``message_id`` (once) and queue the confirmation; return its id.

    ``project_id`` is the project chosen when the message was parsed; without it, the sender's current
    session project is used. An invalid proposal dict is logged and dropped (retrying cannot fix it), and
    its sender gets the apology.
    When the sender may no longer use the project nothing is stored: the selection is dropped and they are
    asked to choose a project, and None is returned.
    """
    settings = settings or get_settings()
    try:
        model = Proposal.model_validate(proposal)
    except ValidationError as exc:
        log.error("invalid proposal dropped", message_id=message_id, errors=exc.error_count())
        # Nothing more will come of this message (a job an older release queued, or a dead letter edited
        # before its replay): its sender is told to send it again, which also ends its turn so later
        # messages of the conversation go ahead.
        apologise(message_id)
        return None
    record = get_inbound(message_id)
    if project_id is None:
        sessions = sessions or Sessions(get_publisher().redis)
        project_id = sessions.selected(record.user_key, record.user_id).project_id
    saved = proposals.save(message_id, model, parser, user_id=record.user_id, project_id=project_id)
    if saved is None and record.user_id is None:
        # Unlinked since the parse: nothing was written, and choosing a project would not help them.
        answer(message_id, NOT_LINKED)
        log.warning("proposal refused: sender no longer linked", message_id=message_id)
        return None
    if saved is None:
        # Removed from the workspace, project archived, or number relinked since the parse: the check is
        # the insert's own, so nothing was written. A redelivery refuses the same way and answers nothing new.
        sessions = sessions or Sessions(get_publisher().redis)
        sessions.forget_project(record.user_key, project_id)
        answer(message_id, CHOOSE_PROJECT)
        log.warning("proposal refused: project not usable", message_id=message_id)
        return None
    # A rerun after a crash between the save and the answer may hold another parse of the message (the ai
    # stage ran twice: another model answer, or the offline parser): the user is told what was stored.
    if saved.created:
        confirmed, confirmed_project = model, project_id
    else:
        stored = proposals.get(saved.id)
        confirmed = _stored_or(saved.id, stored, model)
        confirmed_project = stored["project_id"] if stored is not None else project_id
    name = _project_name(record.user_id, confirmed_project)
    answer(message_id, reply_text(saved.id, confirmed, settings, name))
    log.info("proposal saved", message_id=message_id, proposal_id=str(saved.id), new=saved.created)
    return saved.id


def _project_name(user_id: UUID | None, project_id: UUID | str | None) -> str | None:
    """The name of the project the proposal went to, None when its user may no longer use it (the
    confirmation then names none rather than a project they cannot see)."""
    if user_id is None or project_id is None:
        return None
    with connection() as conn:
        project = workspaces.usable_project(conn, user_id, project_id)
    return project.name if project is not None else None


def _stored_or(proposal_id: UUID, row: dict[str, Any] | None, fallback: Proposal) -> Proposal:
    """The proposal as stored (``row``, from :func:`proposals.get`); ``fallback`` when it is gone or no
    longer validates (stored by another release), since a confirmation is better than none."""
    if row is None:
        return fallback
    items = [
        {
            "type": item["type"],
            "title": item["title"],
            "description": item["description"] or "",
            "estimated_hours": item["estimated_hours"],
            "due_date": item["due_date"],
            "priority": item["priority"],
        }
        for item in row["items"]
    ]
    stored = {
        "summary": row["summary"],
        "items": items,
        "total_estimated_hours": row["total_estimated_hours"],
        "confidence": row["confidence"],
    }
    try:
        return Proposal.model_validate(stored)
    except ValidationError as exc:
        log.warning(
            "stored proposal does not validate", proposal_id=str(proposal_id), errors=exc.error_count()
        )
        return fallback


# The second hop of ai.parse_proposal: its message had its turn there and holds it until answered here.
@stage_task("persist.save_proposal", ordered=False)
def save_proposal_task(
    self: Any, message_id: int, proposal: dict[str, Any], parser: str, project_id: str | None = None
) -> None:
    save_proposal(message_id, proposal, parser, project_id)
