"""Queue ``ai``: free text from a linked user becomes a proposal, handed to ``persist.save_proposal``
(``ai.parse_proposal``); in assistant mode, the assistant answers the conversation (``ai.reply``).

The plain functions :func:`parse_message` and :func:`reply_message` are what the tasks run and what tests
call. Both are safe to run twice: a message whose proposal is already stored, or that was answered, is not
parsed again, and persisting is idempotent; a message already answered is not sent to the model again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

import openai

from shared.ai.assistant import generate_reply, model_prompt
from shared.ai.openai_parser import parse_proposal
from shared.ai.proposal import ProposalError
from shared.bot.commands import CHOOSE_PROJECT
from shared.db import chat_context, conversations, messages, proposals, workspaces
from shared.db.messages import InboundRecord, get_inbound
from shared.db.pool import connection, transaction
from shared.logging import get_logger
from shared.providers import get_sender
from shared.providers.base import MarksRead, Sender, SendError
from shared.queues import Job, get_publisher, notify_jobs
from shared.replies import answer, answer_as_bot, hand_over, reanswered, reply_key
from shared.sessions import Sessions
from shared.settings import Settings, get_settings
from workers import stage_task

log = get_logger(__name__)

NOT_LINKED = "🔗 Link your WhatsApp to your account first: ask the app for a code and send VERIFY <code>."
# The parser's reason says what was not found and what to send: led in by "I could not find a task", it
# said so twice.
NO_ITEMS = "🤔 {reason}"


def message_day(record: InboundRecord) -> dt.date:
    """The day the user sent the message (server time zone): what "tomorrow" and "Friday" count from."""
    return record.created_at.astimezone().date()


def parse_message(message_id: int, sessions: Sessions | None = None, settings: Settings | None = None) -> str:
    """Parse inbound ``message_id`` and enqueue its persistence; return what happened (for logs/tests):
    ``"done"`` (already stored or answered), ``"not_linked"``, ``"no_project"``, ``"no_items"`` or
    ``"parsed"``."""
    # A run before this one may have answered it (asked for a link or a project, found no task): parsed
    # again, the text would make a proposal under the answer's taken key, which its sender is never told
    # of (the answer ended the message's turn, so their /project may have come in between).
    if proposals.id_for_message(message_id) is not None or reanswered(message_id):
        return "done"
    settings = settings or get_settings()
    record = get_inbound(message_id)
    if record.user_id is None:
        # Routing sends only linked users here; a link removed meanwhile gets the instructions.
        answer(message_id, NOT_LINKED)
        return "not_linked"
    sessions = sessions or Sessions(get_publisher().redis)
    project_id = sessions.selected(record.user_key, record.user_id).project_id
    if project_id and not _may_use(record.user_id, project_id):
        # Left the workspace or archived since /project: answered as if none were chosen, before a model
        # call. persist.save_proposal checks again as it writes.
        sessions.forget_project(record.user_key, project_id)
        project_id = None
    if not project_id:
        answer(message_id, CHOOSE_PROJECT)
        return "no_project"
    try:
        proposal, parser = parse_proposal(record.body or "", message_day(record), settings)
    except ProposalError as exc:
        reason = str(exc)
        answer(message_id, NO_ITEMS.format(reason=reason[:1].upper() + reason[1:]))
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


def _may_use(user_id: UUID, project_id: str) -> bool:
    with connection() as conn:
        return workspaces.usable_project(conn, user_id, project_id) is not None


@stage_task("ai.parse_proposal")
def parse_proposal_task(self: Any, message_id: int) -> None:
    parse_message(message_id)


# --- ai.reply: the assistant ------------------------------------------------------------------------------

_senders: dict[str, Sender] = {}


def _process_sender(settings: Settings) -> Sender:
    """One sender per process and provider (pooled HTTP client), made on first use."""
    name = settings.active_provider.value
    if name not in _senders:
        _senders[name] = get_sender(settings)
    return _senders[name]


def show_typing(record: InboundRecord, settings: Settings, sender: Sender | None = None) -> bool:
    """Mark the user's message read with a typing indicator while we generate, where the provider has
    that call (Meta, Kapso) and the message came in through it; Twilio and the console have none.

    Best effort: a refusal or an unreachable API is logged and the reply goes ahead. Returns whether the
    provider accepted it.
    """
    if settings.active_provider.value != record.provider:
        return False
    try:
        sender = sender or _process_sender(settings)
    except (SendError, RuntimeError) as exc:
        log.warning("typing indicator: no sender", error=str(exc))
        return False
    if not isinstance(sender, MarksRead):
        return False
    with connection() as conn:
        provider_id = chat_context.provider_message_id(conn, record.id)
    if not provider_id:
        return False
    try:
        sender.mark_read(provider_id, typing=True, from_number=record.business_number)
    except SendError as exc:
        log.warning("typing indicator refused", message_id=record.id, error_code=exc.code)
        return False
    return True


def reply_message(
    message_id: int,
    settings: Settings | None = None,
    client: openai.OpenAI | None = None,
    sender: Sender | None = None,
) -> str:
    """Answer inbound ``message_id`` as the assistant; return ``"done"`` when it was already answered,
    ``"silent"`` when the conversation is handed to a person or closed, or its contact opted out (before the
    model call or while it ran: nothing is sent, the message is marked handled), else what produced the reply
    (the model's name or ``offline``).

    The reply is stored with the idempotency key ``reply:<message id>`` and records its source in its
    payload (``generated_by``); a handoff request also puts the conversation in 'handoff', in the statement
    that stores its confirmation (:func:`shared.replies.hand_over`).
    """
    settings = settings or get_settings()
    with connection() as conn:
        existing = messages.find_outbound_by_key(conn, reply_key(message_id))
    if existing is not None:
        # Answered already (a redelivered task): no second model call. Enqueue the send again in case the
        # first run died between storing the reply and enqueueing it; notify.send sends once regardless.
        get_publisher().publish(notify_jobs([existing.id]))
        with transaction() as conn:
            messages.mark_handled(conn, message_id)  # in case that run died before: it holds the turn
        return "done"
    record = get_inbound(message_id)
    with transaction() as conn:
        # Routed while the conversation was open, it may have waited for its turn behind the message that
        # handed it to a person (or a STOP), or been closed meanwhile: the bot says nothing more. Marked
        # handled, so the turn moves on.
        if not conversations.bot_may_answer(conn, record.conversation_id):
            messages.mark_handled(conn, message_id)
            log.info(
                "assistant silent: conversation handed over or closed, or contact opted out",
                message_id=message_id,
            )
            return "silent"
    show_typing(record, settings, sender)
    # The prompt is read and its transaction ended before the model call (up to a minute with retries):
    # no pooled connection waits idle in a transaction for the model. The reply is written afterwards
    # in its own transaction, under the idempotency key checked above.
    with connection() as conn:
        prompt = model_prompt(conn, record, settings)
    generated = generate_reply(record, settings, prompt, client)
    payload = {"generated_by": generated.source}
    if generated.handoff:
        # The handoff and its confirmation commit together (a crash between them left one without the
        # other), and only when this message made it: not in a conversation closed, taken over or opted out
        # of meanwhile, nor twice for two requests.
        if hand_over(message_id, generated.text, payload=payload) is None:
            return "silent"
        log.info("assistant replied", message_id=message_id, source=generated.source, handoff=True)
        return generated.source
    if answer_as_bot(message_id, generated.text, payload=payload) is None:
        # Handed to a person or closed, or opted out, during the model call (up to a minute): the answer is
        # dropped.
        return "silent"
    log.info("assistant replied", message_id=message_id, source=generated.source, handoff=generated.handoff)
    return generated.source


@stage_task("ai.reply")
def reply_task(self: Any, message_id: int) -> None:
    reply_message(message_id)
