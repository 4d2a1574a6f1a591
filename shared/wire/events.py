"""The canonical events a webhook becomes, whatever the provider: what queues carry between stages.

Provider modules (``twilio.py``, ``meta.py``, ``kapso.py``) parse their payloads into these; the workers
never see a provider's own format. Events travel as JSON dicts (``model_dump(mode="json")``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        # PostgreSQL text and jsonb cannot hold U+0000, nor a lone surrogate (UTF-8 has no encoding for
        # it), and a webhook can carry both: JSON as \u0000 or \ud800, a Twilio form as %00. Stored as is,
        # the message failed inbound.route for good after the provider had its 200. So every event's
        # strings, the raw payload's included, get U+FFFD instead, once, where the event is made (the
        # ingress, before it is queued), and the message is stored and answered.
        return _storable(data) if _unstorable(data) else data

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        # A copy's update is not validated: the same replacement (Kapso's parser sets raw this way).
        if update is not None and _unstorable(dict(update)):
            update = _storable(dict(update))
        return super().model_copy(update=update, deep=deep)


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate half (JSON's \\ud800), which UTF-8, and so PostgreSQL, cannot
    encode; the pattern only for text that is not ASCII."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def _unstorable(value: Any) -> bool:
    # Every event passes here, on the ingress's hot path: a loop, not recursion through generators.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or has_lone_surrogate(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        # else numbers, None, and nested events (cleaned when they were made)
    return False


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value.replace("\x00", "\ufffd"))
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value


class Provider(StrEnum):
    twilio = "twilio"
    meta = "meta"
    kapso = "kapso"
    console = "console"


class MessageType(StrEnum):
    text = "text"
    image = "image"
    video = "video"
    audio = "audio"
    document = "document"
    sticker = "sticker"
    location = "location"
    contacts = "contacts"
    reaction = "reaction"
    interactive = "interactive"  # a tapped reply button or list row
    button = "button"  # a tapped template quick-reply button
    order = "order"
    system = "system"
    unknown = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> MessageType:
        # A type a provider adds tomorrow is stored and acknowledged, never a crash.
        return cls.unknown


class DeliveryStatus(StrEnum):
    """Ordered states of an outbound message; see :data:`STATUS_RANK`."""

    queued = "queued"
    sent = "sent"
    delivered = "delivered"
    read = "read"
    failed = "failed"
    undelivered = "undelivered"
    unknown = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> DeliveryStatus:
        return cls.unknown


# Status only moves forward; failed and undelivered are final (ARCHITECTURE.md, guarantees).
STATUS_RANK: dict[DeliveryStatus, int] = {
    DeliveryStatus.queued: 0,
    DeliveryStatus.sent: 1,
    DeliveryStatus.delivered: 2,
    DeliveryStatus.read: 3,
    DeliveryStatus.failed: 4,
    DeliveryStatus.undelivered: 4,
}


class Media(Frozen):
    """Media attached to an inbound message: a provider URL (Twilio) or a media id (Meta, Kapso)."""

    url: str | None = None
    media_id: str | None = None
    mime_type: str | None = None
    caption: str | None = None
    filename: str | None = None
    sha256: str | None = None


class Reply(Frozen):
    """The button or list row a user tapped."""

    id: str
    title: str | None = None


class Location(Frozen):
    """A location the user shared: a dropped pin, or a place with its name and address.

    Coordinates are finite and in range, since they are stored as JSON (jsonb has no NaN) and read by
    people: a pair that is not a place is no location (:meth:`parsed`).
    """

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = None
    address: str | None = None
    url: str | None = None

    @classmethod
    def parsed(cls, fields: Any) -> Location | None:
        """The location a provider's fields describe; None when they are not an object or name no usable
        coordinates (the message is still stored, as a location without one, its raw payload kept)."""
        if not isinstance(fields, Mapping):
            return None
        texts = {key: _text(fields.get(key)) for key in ("name", "address", "url")}
        try:
            return cls(latitude=fields.get("latitude"), longitude=fields.get("longitude"), **texts)
        except ValidationError:
            return None


class FlowReply(Frozen):
    """A WhatsApp Flow the user submitted: Meta's ``interactive.nfm_reply`` (Kapso's too), whose
    ``response_json`` is a JSON string of the Flow's answers
    (https://developers.facebook.com/docs/whatsapp/flows/reference/responsemsgwebhook).

    ``response`` is that string parsed, when it is a JSON object; None when it is not (then the reply is
    still stored and answered, its raw payload kept): a Flow's answers are the business's own design, so
    a malformed one must not cost the message.
    """

    name: str | None = None  # "flow", or "address_message" for an address form
    body: str | None = None  # what the chat showed, "Sent"
    response: dict[str, Any] | None = None

    @classmethod
    def parsed(cls, fields: Mapping[str, Any]) -> FlowReply:
        response = _json_object(fields.get("response_json"))
        return cls(name=_text(fields.get("name")), body=_text(fields.get("body")), response=response)


# A Flow's answers are a form's fields, a level or two deep. Far deeper ones could not travel: the
# queue's JSON dump stops at a few hundred levels (after the webhook had its 200), the parser at ~1,000.
_FLOW_RESPONSE_DEPTH = 32


def _json_object(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    if not isinstance(value, dict) or not _shallow(value, _FLOW_RESPONSE_DEPTH):
        return None
    return value


def _shallow(value: Any, limit: int) -> bool:
    """Whether ``value`` nests no more than ``limit`` objects or arrays deep (a loop: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def _text(value: Any) -> str | None:
    # An optional text the provider may send empty (Twilio's Label) or in another shape: absent, then.
    return value if isinstance(value, str) and value else None


INBOUND_KEY_PREFIX = "seen:"


def inbound_key_parts(key: str) -> tuple[str, str] | None:
    """The provider and provider message id an :attr:`InboundMessage.dedupe_key` names; None for another
    key."""
    if not key.startswith(INBOUND_KEY_PREFIX):
        return None
    provider, _, provider_message_id = key.removeprefix(INBOUND_KEY_PREFIX).partition(":")
    return (provider, provider_message_id) if provider and provider_message_id else None


class InboundMessage(Frozen):
    """A message a WhatsApp user sent to one of our business numbers."""

    provider: Provider
    provider_message_id: str
    business_number: str  # our E.164 number, or Meta's phone_number_id
    sender_phone: str | None = None  # E.164; absent when the provider only gives a business-scoped id
    sender_bsuid: str | None = None
    profile_name: str | None = None
    type: MessageType = MessageType.text
    text: str | None = None
    media: list[Media] = Field(default_factory=list)
    reply: Reply | None = None
    location: Location | None = None  # type location, when it named usable coordinates
    flow_reply: FlowReply | None = None  # type interactive: a submitted WhatsApp Flow
    context_message_id: str | None = None  # the message this one answers, when quoted
    sent_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    raw: dict[str, Any] = Field(default_factory=dict)

    @property
    def dedupe_key(self) -> str:
        return f"{INBOUND_KEY_PREFIX}{self.provider}:{self.provider_message_id}"

    @property
    def answer_text(self) -> str:
        """What the user said, whether typed or tapped: a tapped button counts as its title."""
        if self.text:
            return self.text
        if self.reply is not None:
            return self.reply.title or self.reply.id
        return ""


# How a send names our own message to the provider, so its receipts can name it back: Meta's (and Kapso's
# proxy's) ``biz_opaque_callback_data``, echoed in status webhooks
# (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages), and a query parameter of
# Twilio's StatusCallback URL (shared/wire/twilio.py).
OUR_ID_PREFIX = "wapipe:"
# Ids are PostgreSQL bigint; a longer run of digits is nobody's message.
_OUR_ID_DIGITS_MAX = 18


def our_id_tag(message_id: int) -> str:
    """Our outbound message id as sent in ``biz_opaque_callback_data``."""
    return f"{OUR_ID_PREFIX}{message_id}"


def our_id_from_tag(tag: object) -> int | None:
    """The message id a receipt's ``biz_opaque_callback_data`` names; None for anything else (another
    system's data on the same number, nothing at all)."""
    if not isinstance(tag, str) or not tag.startswith(OUR_ID_PREFIX):
        return None
    return our_id_from_digits(tag.removeprefix(OUR_ID_PREFIX))


def our_id_from_digits(raw: object) -> int | None:
    """A positive message id written as plain digits; None for anything else."""
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > _OUR_ID_DIGITS_MAX:
        return None
    return int(raw) or None


class StatusUpdate(Frozen):
    """A delivery receipt for a message we sent."""

    provider: Provider
    provider_message_id: str
    status: DeliveryStatus
    recipient: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    # Our message id as the provider echoed it from the send (:data:`OUR_ID_PREFIX`): a hint only, looked
    # at when the provider id names no message (a send whose answer was lost), and trusted then only for
    # an outbound message of the same provider that has no provider id yet (shared/db/sending.py).
    our_message_id: int | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    raw: dict[str, Any] = Field(default_factory=dict)

    @property
    def dedupe_key(self) -> str:
        return f"seen-status:{self.provider}:{self.provider_message_id}:{self.status}"
