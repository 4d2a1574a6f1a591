"""What every part of a Meta webhook shares: the model base, the error object, phone and time fields.

Kapso's webhooks reuse these too (:mod:`shared.wire.kapso`): they wrap Cloud-API-shaped messages.
Error objects are documented at
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/errors
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from shared.logging import get_logger
from shared.phone import provider_number

# One logger for the whole Meta wire format, named ``shared.wire.meta`` as its log lines always were.
log = get_logger(__package__)


# Frozen, and blind to fields it does not know: Meta adds fields without notice.
class MetaModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class LenientModel(MetaModel):
    """A model whose optional fields fall back to their default when the provider sends another shape.

    A field read only to help (an error's details, pricing, a hint) must not cost the item beside it: the
    webhook is acknowledged with a 200 and never redelivered, so a dropped item is lost. The raw item is
    kept either way; a required field that is malformed still fails the item.
    """

    @field_validator("*", mode="wrap")
    @classmethod
    def _default_when_malformed(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        try:
            return handler(value)
        except ValidationError:
            field = cls.model_fields[info.field_name or ""]
            if field.is_required():
                raise
            return field.get_default(call_default_factory=True)


class MetaError(MetaModel):
    """An error object, as in ``value.errors[]``, ``statuses[].errors[]`` and ``messages[].errors[]``."""

    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: dict[str, Any] | None = None
    href: str | None = None

    @property
    def details(self) -> str | None:
        return (self.error_data or {}).get("details")


def meta_errors(raw: Any) -> list[MetaError]:
    """The well-formed error objects of an ``errors`` list; a malformed one, or an ``errors`` that is not a
    list at all, is skipped: the failure it explains still counts."""
    if not isinstance(raw, list):
        return []
    errors = []
    for item in raw:
        try:
            errors.append(MetaError.model_validate(item))
        except ValidationError:
            continue
    return errors


def provider_phone(raw: Any, region: str) -> str | None:
    """A provider-delivered number -> E.164, or None when absent/empty (username users) or unusable."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    return provider_number(raw, region)


def unix_time(raw: Any) -> datetime:
    """Meta's Unix timestamps are strings of seconds; a missing or odd one means "now"."""
    try:
        return datetime.fromtimestamp(int(raw), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)
