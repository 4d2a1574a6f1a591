"""Meta's ``value.statuses[]``: delivery receipts for messages the business sent -> :class:`StatusUpdate`.

Reference (sent/delivered/read/failed, ``errors[]``, ``conversation``, ``pricing``):
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/status
A status word we do not know becomes ``unknown`` rather than an error; Kapso's status events use the
same words (:func:`delivery_status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError

from shared.wire.events import DeliveryStatus, Provider, StatusUpdate, our_id_from_tag
from shared.wire.meta.base import LenientModel, log, meta_errors, provider_phone, unix_time

# A voice note that has been played has necessarily been read; status only moves forward.
_STATUS_ALIASES = {"played": DeliveryStatus.read}


class Status(LenientModel):
    """``value.statuses[]``: a delivery receipt for a message the business sent. Only the id and the status
    word are required; any other field of an odd shape is read as absent."""

    id: str = Field(min_length=1)
    status: str
    timestamp: str | int | None = None
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    errors: list[Any] = Field(default_factory=list)  # error objects; malformed ones are skipped
    conversation: dict[str, Any] | None = None
    pricing: dict[str, Any] | None = None
    biz_opaque_callback_data: str | None = None


def status_from_meta(
    raw: Mapping[str, Any], provider: Provider = Provider.meta, region: str = "US"
) -> StatusUpdate | None:
    """One ``statuses[]`` item -> :class:`StatusUpdate`; None (logged) when it has no id or status."""
    raw = dict(raw)
    try:
        status = Status.model_validate(raw)
    except ValidationError as exc:
        log.warning("meta.status_malformed", errors=exc.error_count(), message_id=raw.get("id"))
        return None
    errors = meta_errors(status.errors)
    error = errors[0] if errors else None
    return StatusUpdate(
        provider=provider,
        provider_message_id=status.id,
        status=delivery_status(status.status),
        recipient=provider_phone(status.recipient_id, region) or status.recipient_user_id,
        error_code=str(error.code) if error and error.code is not None else None,
        error_message=(error.title or error.message) if error else None,
        at=unix_time(status.timestamp),
        our_message_id=our_id_from_tag(status.biz_opaque_callback_data),
        raw=raw,
    )


def delivery_status(value: str | None) -> DeliveryStatus:
    """Meta's status word -> ours; a word we do not know becomes ``unknown`` (never a crash)."""
    word = (value or "").lower()
    return _STATUS_ALIASES.get(word) or DeliveryStatus(word)
