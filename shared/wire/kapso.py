"""Kapso v2 webhooks -> canonical events (provider ``kapso``).

Kapso wraps a Meta-compatible ``message`` (same ``type`` and per-type objects as the Cloud API) with a
``message.kapso`` block (direction, status, statuses history, content, media_url...), a ``conversation``
(id, phone_number, phone_number_id, business_scoped_user_id, username) and a top-level
``phone_number_id``. The event name travels in the ``X-Webhook-Event`` header, which the signature does
not cover, so a name in the signed body wins, and a delivery event's status is the message's signed
``kapso.status`` when it names one; buffered deliveries arrive as
``{"type": "whatsapp.message.received", "batch": true, "data": [payload, ...]}`` with
``X-Webhook-Batch: true``.
Phone number, ``from``, ``to`` and ``wa_id`` may all be absent (business-scoped user ids).

- https://docs.kapso.ai/docs/platform/webhooks/overview
- https://docs.kapso.ai/docs/platform/webhooks/event-types
- https://docs.kapso.ai/docs/platform/webhooks/security
- https://docs.kapso.ai/docs/platform/webhooks/advanced (message buffering, the batch format)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationError

from shared.logging import get_logger
from shared.wire.events import DeliveryStatus, InboundMessage, Provider, StatusUpdate, our_id_from_tag
from shared.wire.meta.base import LenientModel, meta_errors, provider_phone, unix_time
from shared.wire.meta.message import inbound_from_message
from shared.wire.meta.status import delivery_status

log = get_logger(__name__)

EVENT_HEADER = "X-Webhook-Event"
RECEIVED = "whatsapp.message.received"
# Delivery events -> the status they report (failed carries its error in the message's statuses).
STATUS_EVENTS: dict[str, DeliveryStatus] = {
    "whatsapp.message.sent": DeliveryStatus.sent,
    "whatsapp.message.delivered": DeliveryStatus.delivered,
    "whatsapp.message.read": DeliveryStatus.read,
    "whatsapp.message.failed": DeliveryStatus.failed,
}


class KapsoBlock(LenientModel):
    """``message.kapso``: Kapso's own view of the message. Only what we read is modelled: everything
    else (processing_status, origin, has_media, content, transcript, media_data...) may be any
    JSON and stays in the raw item."""

    direction: str | None = None
    status: str | None = None  # the message's delivery status as Kapso signed it
    media_url: str | None = None
    contact_name: str | None = None
    statuses: list[Any] = Field(default_factory=list)  # each a Meta status object; others are skipped
    error: Any = None


class KapsoMessage(LenientModel):
    """The fields of ``message`` the status path reads (inbound messages go through the Meta parser)."""

    id: str = Field(min_length=1)  # the wamid: what makes a redelivery one effect, so never empty
    from_: str | None = Field(default=None, alias="from")
    from_user_id: str | None = None
    to: str | None = None
    timestamp: str | int | None = None
    type: str | None = None
    errors: list[Any] = Field(default_factory=list)  # Meta error objects; malformed ones are skipped
    kapso: KapsoBlock | None = None


class Conversation(LenientModel):
    # The conversation block only adds who the sender is; a malformed field must not cost the message
    # beside it (the message's own from/wa_id still identify the sender, and the raw item is kept).
    id: str | None = None
    phone_number: str | None = None
    phone_number_id: str | None = None
    business_scoped_user_id: str | None = None
    parent_business_scoped_user_id: str | None = None
    username: str | None = None
    contact_name: str | None = None


class Payload(LenientModel):
    """One event's payload (one item of a batch's ``data``). ``is_new_conversation`` and the rest are not
    read, so they may be anything."""

    message: dict[str, Any] | None = None
    conversation: Conversation | None = None
    phone_number_id: str | None = None


@dataclass
class Parsed:
    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    ignored: int = 0  # conversation events, outbound echoes: acknowledged, nothing to do
    skipped: int = 0  # malformed items: logged


def payloads(body: Mapping[str, Any], batch_header: str | None = None) -> list[Mapping[str, Any]]:
    """The individual payloads of one delivery: ``data[]`` of a batch, else the body itself."""
    if _is_batch(body, batch_header):
        data = body.get("data")
        if not isinstance(data, list):
            raise ValueError("a batched delivery needs a data list")
        return [item for item in data if isinstance(item, Mapping)]
    return [body]


def parse_delivery(
    body: Mapping[str, Any],
    event: str | None,
    *,
    batch_header: str | None = None,
    region: str = "US",
) -> Parsed:
    """Every event in one Kapso delivery. ``event`` is the ``X-Webhook-Event`` header.

    The signature covers the body only, so an event name in the body (an item's ``event``/``type``, a
    batch's top-level ``type``) wins over the header: a captured delivery replayed with another header
    must not turn "delivered" into "failed". The header is used only when the body names no event, and a
    batch that names none anywhere is ``whatsapp.message.received``, the one event Kapso buffers
    (https://docs.kapso.ai/docs/platform/webhooks/advanced).

    Raises ValueError when the body claims to be a batch but has no ``data`` list, or when neither the
    body nor the header names the event (nothing would say what the items are).
    """
    parsed = Parsed()
    items = payloads(body, batch_header)
    fallback = _event_name(body) or _str(event) or (RECEIVED if _is_batch(body, batch_header) else None)
    overruled = False
    for item in items:
        name = _event_name(item) or fallback
        if name is None:
            raise ValueError(f"the event type is missing: no {EVENT_HEADER} header and none in the body")
        overruled = overruled or (bool(event) and name != event)
        _parse_payload(item, name, parsed, region)
    if overruled:
        log.warning("kapso.event_header_overruled_by_body", header_event=(event or "")[:100])
    return parsed


def _is_batch(body: Mapping[str, Any], batch_header: str | None) -> bool:
    return (batch_header or "").strip().lower() == "true" or body.get("batch") is True


def _event_name(payload: Mapping[str, Any]) -> str | None:
    return _str(payload.get("event")) or _str(payload.get("type"))


def _parse_payload(item: Mapping[str, Any], event: str, parsed: Parsed, region: str) -> None:
    if event != RECEIVED and event not in STATUS_EVENTS:
        log.info("kapso.event_ignored", kapso_event=event)
        parsed.ignored += 1
        return
    try:
        payload = Payload.model_validate(item)
    except ValidationError as exc:
        log.warning("kapso.payload_malformed", kapso_event=event, errors=exc.error_count())
        parsed.skipped += 1
        return
    raw_message = payload.message or {}
    try:
        message = KapsoMessage.model_validate(raw_message)
    except ValidationError:
        # Only a missing or empty id gets here (every other field falls back): nothing to dedupe or
        # store it by, as on the Meta path.
        log.warning("kapso.message_without_id", kapso_event=event)
        parsed.skipped += 1
        return
    conversation = payload.conversation or Conversation()
    business = payload.phone_number_id or conversation.phone_number_id
    if not business:
        log.warning("kapso.payload_without_phone_number_id", kapso_event=event, message_id=message.id)
        parsed.skipped += 1
        return
    block = message.kapso or KapsoBlock()

    if event == RECEIVED:
        if block.direction not in (None, "inbound"):
            parsed.ignored += 1  # an echo of our own outbound message
            return
        # A message whose fields do not have the shapes we expect still becomes an unknown event here.
        inbound = inbound_from_message(
            raw_message,
            business,
            (),
            Provider.kapso,
            region,
            sender_phone=provider_phone(message.from_, region)
            or provider_phone(conversation.phone_number, region),
            sender_bsuid=message.from_user_id or conversation.business_scoped_user_id,
            profile_name=block.contact_name or conversation.contact_name,
            media_url=block.media_url,
        )
        if inbound is None:
            parsed.skipped += 1
            return
        # Kapso's payload carries conversation data the Meta message lacks: keep the whole item raw.
        parsed.messages.append(inbound.model_copy(update={"raw": dict(item)}))
        return

    code, reason = _failure(message, block)
    parsed.statuses.append(
        StatusUpdate(
            provider=Provider.kapso,
            provider_message_id=message.id,
            status=_signed_status(block, event),
            recipient=provider_phone(message.to, region)
            or provider_phone(conversation.phone_number, region)
            or conversation.business_scoped_user_id,
            error_code=code,
            error_message=reason,
            at=unix_time(message.timestamp),
            our_message_id=_our_message_id(raw_message, block),
            raw=dict(item),
        )
    )


def _our_message_id(raw_message: Mapping[str, Any], block: KapsoBlock) -> int | None:
    """Our id, sent as ``biz_opaque_callback_data`` through Kapso's Meta proxy, as Meta echoes it: in the
    raw Meta statuses Kapso keeps (``message.kapso.statuses``), or on the message itself."""
    for status in reversed(block.statuses):
        if isinstance(status, Mapping):
            found = our_id_from_tag(status.get("biz_opaque_callback_data"))
            if found is not None:
                return found
    return our_id_from_tag(raw_message.get("biz_opaque_callback_data"))


def _signed_status(block: KapsoBlock, event: str) -> DeliveryStatus:
    """The status a delivery event reports. A single event names itself only in the unsigned header, so
    ``message.kapso.status`` (signed, and the event's own status in Kapso's payloads) decides when it names
    one of the delivery statuses: a captured "delivered" replayed with a "failed" header stays delivered."""
    named = STATUS_EVENTS[event]
    signed = delivery_status(block.status) if block.status else None
    if signed is None or signed not in STATUS_EVENTS.values():
        return named
    if signed is not named:
        log.warning("kapso.event_header_disagrees_with_status", header_event=event, status=signed.value)
    return signed


def _failure(message: KapsoMessage, block: KapsoBlock) -> tuple[str | None, str | None]:
    """The error of a failed message: Meta's own errors[], from the message or its latest status."""
    errors = meta_errors(message.errors)
    for status in reversed(block.statuses):
        if not isinstance(status, Mapping):
            continue
        if delivery_status(_str(status.get("status"))) is DeliveryStatus.failed:
            errors += meta_errors(status.get("errors"))
            break
    if errors:
        first = errors[0]
        return (str(first.code) if first.code is not None else None), first.title or first.message
    if isinstance(block.error, Mapping):
        code = block.error.get("code")
        return (str(code) if code is not None else None), _str(block.error.get("message"))
    if isinstance(block.error, str):
        return None, block.error
    return None, None


def _str(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and raw else None
