"""``inbound.route``: store an inbound message once, then decide who answers it.

In one transaction: the contact (created or refreshed), its live conversation (opened if none), the
message (unique on provider + provider id: a duplicate stops there) and the raw event. After the commit:
opt-out words, the per-user rate limit, conversations handed to a person, then the handler picked by
``WAPIPE_MODE`` (INTERFACES.md, "Routing") is enqueued with the message id.

Safe to run twice: the message row's ``routed_at`` is set only after the decision's effects are done, and
every effect is idempotent (the handler job carries the dedupe key ``handle:<message id>``, replies have
idempotency keys, the rate-limit window counts a message id once). So a route redelivered after the
insert committed but before the handler was enqueued still enqueues it, exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.db import assistant_configs, contacts, conversations, messages, turns
from shared.db.pool import transaction
from shared.logging import get_logger
from shared.queues import Job, get_publisher
from shared.ratelimit import RateLimiter
from shared.replies import queue_opt_out_notice, queue_reply
from shared.settings import Mode, Settings, get_settings
from shared.wire.events import InboundMessage
from workers import event_task

log = get_logger(__name__)

# "VERIFY 123456", any case, spaces anywhere around or inside the code.
VERIFY = re.compile(r"^\s*verify\s*(?:\d\s*){6}$", re.IGNORECASE)

OPT_OUT_TEXT = (
    "You have been unsubscribed and will receive no more messages from us. Send START to subscribe again."
)
OPT_OUT_TEXT_ES = (
    "Te has dado de baja y no recibirás más mensajes nuestros. Envía START para volver a suscribirte."
)
OPT_IN_TEXT = "You are subscribed again. Send STOP at any time to unsubscribe."
RATE_LIMIT_TEXT = (
    "You're sending messages too fast. Please wait a minute: messages sent meanwhile won't be answered."
)


@dataclass(frozen=True)
class RouteOutcome:
    """What routing did with the message; ``action`` is one of the names below."""

    message_id: int | None
    action: str  # duplicate | opted_out | opted_in | from_opted_out | rate_limited | handoff | handler
    handler: str | None = None


def route(event: dict[str, Any], settings: Settings | None = None) -> RouteOutcome:
    """Store the inbound event and hand it to its handler; see the module docstring."""
    settings = settings or get_settings()
    inbound = InboundMessage.model_validate(event)
    try:
        message_id = _store(inbound, event)
    except _ConcurrentDuplicate:
        message_id = None
    if message_id is None:
        log.info("duplicate inbound message ignored", provider=inbound.provider)
        return RouteOutcome(None, "duplicate")
    if inbound.media:
        # Before routing: provider media links expire within minutes (workers/media.py).
        get_publisher().publish(
            [Job("inbound.fetch_media", {"message_id": message_id}, dedupe_key=f"media:{message_id}")]
        )
    outcome = _decide(message_id, settings)
    with transaction() as conn:
        messages.mark_routed(conn, message_id)
    log.info("inbound message routed", message_id=message_id, action=outcome.action, handler=outcome.handler)
    return outcome


def _store(inbound: InboundMessage, event: dict[str, Any]) -> int | None:
    """The stored message's id, or None when it was already stored AND routed (a duplicate)."""
    provider = inbound.provider.value
    with transaction() as conn:
        existing = messages.find_by_provider_id(conn, provider, inbound.provider_message_id)
        if existing is not None:
            # Stored before: stop if it was routed too, else finish the routing an earlier run began.
            return None if existing.routed else existing.id
        contact = contacts.upsert_from_inbound(
            conn, phone=inbound.sender_phone, bsuid=inbound.sender_bsuid, profile_name=inbound.profile_name
        )
        conversation = conversations.get_or_create_live(
            conn, contact_id=contact.id, provider=provider, business_number=inbound.business_number
        )
        payload: dict[str, Any] = {"sent_at": inbound.sent_at.isoformat()}
        if inbound.reply is not None:
            payload["reply"] = inbound.reply.model_dump(mode="json")
        if inbound.context_message_id:
            payload["context_message_id"] = inbound.context_message_id
        message_id = messages.insert_inbound(
            conn,
            conversation_id=conversation.id,
            contact_id=contact.id,
            provider=provider,
            provider_message_id=inbound.provider_message_id,
            type=inbound.type.value,
            body=inbound.answer_text or None,
            payload=payload,
            media=[media.model_dump(mode="json", exclude_none=True) for media in inbound.media] or None,
        )
        if message_id is None:
            # A concurrent route of the same event inserted it first (the insert waited for its commit);
            # that one routes it. Our contact refresh rolls back with this transaction.
            raise _ConcurrentDuplicate
        messages.log_webhook_event(
            conn, provider=provider, event_key=inbound.dedupe_key, kind="message", body=event
        )
    return message_id


class _ConcurrentDuplicate(Exception):
    pass


def _decide(message_id: int, settings: Settings) -> RouteOutcome:
    with transaction() as conn:
        record = messages.get_inbound(message_id, conn)
        contact = contacts.get(conn, record.contact_id)
        conversation = conversations.get(conn, record.conversation_id)
        # A number with its own assistant config is an assistant whatever WAPIPE_MODE says (issue 5).
        assistant_number = assistant_configs.get(conn, record.business_number) is not None
    assert contact is not None
    assert conversation is not None
    text = " ".join((record.body or "").split())
    word = text.upper()

    if word in {w.upper() for w in settings.opt_out_words}:
        with transaction() as conn:
            contacts.set_opted_out(conn, contact.id, True)
        notice = OPT_OUT_TEXT_ES if word == "BAJA" else OPT_OUT_TEXT
        queue_opt_out_notice(message_id, notice, key="opt-out")
        return RouteOutcome(message_id, "opted_out")
    if word in {w.upper() for w in settings.opt_in_words}:
        with transaction() as conn:
            contacts.set_opted_out(conn, contact.id, False)
        queue_reply(message_id, OPT_IN_TEXT, key="opt-in")
        return RouteOutcome(message_id, "opted_in")
    if contact.opted_out:
        # They asked for no messages: keep what they write, answer nothing until they send START.
        return RouteOutcome(message_id, "from_opted_out")

    verdict = RateLimiter(get_publisher().redis).inbound(
        record.user_key, message_id, settings.rate_limit_per_minute
    )
    if not verdict.allowed:
        if verdict.send_notice:
            queue_reply(message_id, RATE_LIMIT_TEXT, key="rate-limit")
        return RouteOutcome(message_id, "rate_limited")

    if conversation.status == "handoff":
        return RouteOutcome(message_id, "handoff")

    mode = Mode.assistant if assistant_number else settings.mode
    handler = pick_handler(text, linked=record.user_id is not None, mode=mode)
    # Recorded before publishing, so the handler can never run before its dispatch is known: from now on
    # this message holds its conversation's turn until it is answered (shared/db/turns.py).
    with transaction() as conn:
        turns.mark_dispatched(conn, message_id, handler)
    get_publisher().publish([Job(handler, {"message_id": message_id}, dedupe_key=f"handle:{message_id}")])
    return RouteOutcome(message_id, "handler", handler)


def pick_handler(text: str, *, linked: bool, mode: Mode) -> str:
    """The task that answers a message (INTERFACES.md, "Routing in inbound.route")."""
    if VERIFY.match(text):
        return "verify.check_code"
    if mode is Mode.menu:
        return "flows.step"
    if mode is Mode.assistant:
        return "ai.reply"
    # Project mode: commands, and the linking instructions for numbers not linked yet; free text from a
    # linked user becomes a proposal. A message with no text (a photo alone) gets the commands' help.
    if text.startswith("/") or not linked or not text:
        return "commands.handle"
    return "ai.parse_proposal"


@event_task("inbound.route")
def route_task(self: Any, event: dict[str, Any]) -> None:
    route(event)
