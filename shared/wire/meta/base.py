"""What every part of a Meta webhook shares: the model base, the error object, phone and time fields.

Kapso's webhooks reuse these too (:mod:`shared.wire.kapso`): they wrap Cloud-API-shaped messages.
Error objects are documented at
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/errors
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.logging import get_logger
from shared.phone import provider_number

# One logger for the whole Meta wire format, named ``shared.wire.meta`` as its log lines always were.
log = get_logger(__package__)


# Frozen, and blind to fields it does not know: Meta adds fields without notice.
class MetaModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


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
