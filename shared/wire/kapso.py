"""Kapso v2 webhooks -> canonical events (provider ``kapso``).

Kapso wraps a Meta-compatible ``message`` (same ``type`` and per-type objects as the Cloud API) with a
``message.kapso`` block (direction, status, statuses history, content, media_url...), a ``conversation``
(id, phone_number, phone_number_id, business_scoped_user_id, username) and a top-level
``phone_number_id``. The event name travels in the ``X-Webhook-Event`` header; buffered deliveries
arrive as ``{"batch": true, "data": [payload, ...]}`` with ``X-Webhook-Batch: true``.
Phone number, ``from``, ``to`` and ``wa_id`` may all be absent (business-scoped user ids).

- https://docs.kapso.ai/docs/platform/webhooks/overview
- https://docs.kapso.ai/docs/platform/webhooks/event-types
- https://docs.kapso.ai/docs/platform/webhooks/security
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.logging import get_logger
from shared.wire.events import DeliveryStatus, InboundMessage, Provider, StatusUpdate
from shared.wire.meta.base import MetaError, provider_phone, unix_time
from shared.wire.meta.message import inbound_from_message
from shared.wire.meta.status import delivery_status

log = get_logger(__name__)

RECEIVED = "whatsapp.message.received"
# Delivery events -> the status they report (failed carries its error in the message's statuses).
STATUS_EVENTS: dict[str, DeliveryStatus] = {
    "whatsapp.message.sent": DeliveryStatus.sent,
    "whatsapp.message.delivered": DeliveryStatus.delivered,
    "whatsapp.message.read": DeliveryStatus.read,
    "whatsapp.message.failed": DeliveryStatus.failed,
}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class KapsoBlock(_Model):
    """``message.kapso``: Kapso's own view of the message."""

    direction: str | None = None
    status: str | None = None
    processing_status: str | None = None
    origin: str | None = None
    has_media: bool | None = None
    content: str | None = None
    transcript: Any = None
    media_url: str | None = None
    media_data: dict[str, Any] | None = None
    contact_name: str | None = None
    statuses: list[dict[str, Any]] = Field(default_factory=list)
    error: Any = None


class KapsoMessage(_Model):
    id: str
    from_: str | None = Field(default=None, alias="from")
    from_user_id: str | None = None
    to: str | None = None
    timestamp: str | int | None = None
    type: str | None = None
    errors: list[MetaError] = Field(default_factory=list)
    kapso: KapsoBlock | None = None


class Conversation(_Model):
    id: str | None = None
    phone_number: str | None = None
    phone_number_id: str | None = None
    business_scoped_user_id: str | None = None
    parent_business_scoped_user_id: str | None = None
    username: str | None = None
    contact_name: str | None = None


class Payload(_Model):
    """One event's payload (one item of a batch's ``data``)."""

    message: dict[str, Any] | None = None
    conversation: Conversation | None = None
    phone_number_id: str | None = None
    is_new_conversation: bool | None = None

    @field_validator("conversation", mode="wrap")
    @classmethod
    def _lenient_conversation(cls, value: Any, handler: Any) -> Conversation | None:
        # The conversation block only adds who the sender is; a malformed one must not cost the message
        # beside it (the message's own from/wa_id still identify the sender, and the raw item is kept).
        try:
            return handler(value)
        except ValidationError:
            return None


@dataclass
class Parsed:
    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    ignored: int = 0  # conversation events, outbound echoes: acknowledged, nothing to do
    skipped: int = 0  # malformed items: logged


def payloads(body: Mapping[str, Any], batch_header: str | None = None) -> list[Mapping[str, Any]]:
    """The individual payloads of one delivery: ``data[]`` of a batch, else the body itself."""
    is_batch = (batch_header or "").strip().lower() == "true" or body.get("batch") is True
    if is_batch:
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

    Raises ValueError when the body claims to be a batch but has no ``data`` list.
    """
    parsed = Parsed()
    for item in payloads(body, batch_header):
        name = event or _str(item.get("event")) or _str(item.get("type")) or ""
        _parse_payload(item, name, parsed, region)
    return parsed


def _parse_payload(item: Mapping[str, Any], event: str, parsed: Parsed, region: str) -> None:
    if event != RECEIVED and event not in STATUS_EVENTS:
        log.info("kapso.event_ignored", kapso_event=event)
        parsed.ignored += 1
        return
    try:
        payload = Payload.model_validate(item)
        message = KapsoMessage.model_validate(payload.message or {})
    except ValidationError as exc:
        log.warning("kapso.payload_malformed", kapso_event=event, errors=exc.error_count())
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
        inbound = inbound_from_message(
            payload.message or {},
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
            status=STATUS_EVENTS[event],
            recipient=provider_phone(message.to, region)
            or provider_phone(conversation.phone_number, region)
            or conversation.business_scoped_user_id,
            error_code=code,
            error_message=reason,
            at=unix_time(message.timestamp),
            raw=dict(item),
        )
    )


def _failure(message: KapsoMessage, block: KapsoBlock) -> tuple[str | None, str | None]:
    """The error of a failed message: Meta's own errors[], from the message or its latest status."""
    errors = list(message.errors)
    for status in reversed(block.statuses):
        if delivery_status(_str(status.get("status"))) is DeliveryStatus.failed:
            for raw in status.get("errors") or []:
                try:
                    errors.append(MetaError.model_validate(raw))
                except ValidationError:
                    continue
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
