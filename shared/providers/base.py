"""What every outbound provider implements: one :class:`Sender` Protocol and the models it speaks.

An :class:`OutboundMessage` is built from a stored outbound row (:meth:`OutboundMessage.from_record`): the
row's ``body`` is the plain text (always present for replies, the fallback where a richer type cannot be
sent), and its ``payload`` holds the typed content under the key named like the type (``media``,
``interactive``, ``template``, ``reaction``). Providers send what they support and raise a permanent
:class:`SendError` for what they cannot, before calling anything.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class OutboundType(StrEnum):
    text = "text"
    media = "media"  # image, video, audio or document: see Media.kind
    interactive = "interactive"  # reply buttons or a list
    template = "template"
    reaction = "reaction"


class Media(_Model):
    """A media message by https URL (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media)."""

    kind: Literal["image", "video", "audio", "document", "sticker"] = "image"
    url: str
    caption: str | None = None
    filename: str | None = None


class Button(_Model):
    id: str
    title: str


class ListRow(_Model):
    id: str
    title: str
    description: str | None = None


class ListSection(_Model):
    title: str | None = None
    rows: list[ListRow] = Field(default_factory=list)


class Interactive(_Model):
    """Reply buttons (up to 3) or a list (up to 10 rows); limits are checked by each provider."""

    kind: Literal["buttons", "list"] = "buttons"
    body: str
    header: str | None = None
    footer: str | None = None
    buttons: list[Button] = Field(default_factory=list)
    button_text: str | None = None  # the list's opening button
    sections: list[ListSection] = Field(default_factory=list)


class Template(_Model):
    """An approved template: name, language and its variables (positional or named)."""

    name: str
    language: str = "en_US"
    variables: list[str] | dict[str, str] = Field(default_factory=list)
    content_sid: str | None = None  # Twilio's Content API id for the same template


class Reaction(_Model):
    message_id: str  # the provider's id of the message reacted to
    emoji: str


class OutboundMessage(_Model):
    """One message to send, whatever the provider."""

    id: int  # our messages row id, for logs and the console channel
    to: str  # E.164
    from_number: str | None = None  # our business number when the conversation names one
    type: OutboundType = OutboundType.text
    text: str | None = None
    media: Media | None = None
    interactive: Interactive | None = None
    template: Template | None = None
    reaction: Reaction | None = None
    payload: dict[str, Any] = Field(default_factory=dict)  # the stored typed content, as stored

    @classmethod
    def from_record(
        cls,
        *,
        id: int,
        to: str,
        type: str,
        body: str | None,
        payload: dict[str, Any],
        from_number: str | None,
    ) -> OutboundMessage:
        kind = OutboundType(type) if type in OutboundType._value2member_map_ else OutboundType.text
        return cls(
            id=id,
            to=to,
            from_number=from_number,
            type=kind,
            text=body,
            media=payload.get("media"),
            interactive=payload.get("interactive"),
            template=payload.get("template"),
            reaction=payload.get("reaction"),
            payload=payload,
        )


class SendResult(_Model):
    """The provider accepted the message: its id for the message (Twilio ``SM...``, Meta ``wamid...``)."""

    provider: str
    provider_message_id: str
    status: str = "sent"


# The longest wait a provider's Retry-After is taken at. It blocks the sender number for every process
# (shared/ratelimit.py block_sender), so one huge value (a proxy's, a misconfigured gateway's) must not stop
# every send from the number for days. Real throttles ask for seconds to a minute; a longer outage is still
# waited out, as a 429 after the block blocks again and each send's own backoff grows to the broker's
# MAX_COUNTDOWN_SECONDS (shared/queues.py).
MAX_RETRY_AFTER_SECONDS = 300.0


def retry_after_seconds(value: str | None) -> float | None:
    """The delay a ``Retry-After`` header asks for, finite, at most :data:`MAX_RETRY_AFTER_SECONDS`; None
    when absent or not a non-negative number (an HTTP date is rare from these providers: the backoff
    schedule applies instead). https://www.rfc-editor.org/rfc/rfc9110#field.retry-after"""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


class SendError(Exception):
    """The provider refused or could not be reached.

    ``permanent``: retrying cannot help (invalid number, outside the 24-hour window, opted out, auth):
    mark the message failed. Otherwise it is transient (429, 5xx, timeouts): retry later, no sooner than
    ``retry_after`` seconds when the provider said so.
    """

    def __init__(self, code: str, message: str, *, permanent: bool, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after


class OutcomeUnknown(SendError):
    """The request may have reached the provider, but its answer was lost: a timeout once the request was
    on its way, a connection dropped before the answer, a 2xx without the message's id.

    Neither Twilio nor Meta takes an idempotency key on send, so sending again could deliver the message
    twice, and a doubled WhatsApp message cannot be recalled. It is never retried: notify fails it as
    ``outcome_unknown`` with a dead letter, for an operator to check the provider's log before replaying.
    """

    CODE = "outcome_unknown"

    def __init__(self, message: str) -> None:
        super().__init__(self.CODE, message, permanent=True)


# HTTP statuses that refuse the caller rather than the request (401 unauthenticated, 403 forbidden): every
# provider's are the account's problem, whatever its own error code says.
ACCOUNT_STATUSES = frozenset({401, 403})


class AccountRefused(SendError):
    """The provider refused our credentials or the account's permissions, not this message: an expired or
    rotated token, a revoked permission. Every message fails alike until an operator fixes the
    configuration, so notify keeps each one as a dead letter (failed, with the provider's code), to send
    with ``wapipe dlq replay`` once the credentials work again, and logs an error naming the cause."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, permanent=True)


# A 4xx that is no refusal: 408, the server (or a proxy before it) stopped waiting before it had the whole
# request, so it did nothing with it, and the client may send it again
# (https://www.rfc-editor.org/rfc/rfc9110#section-15.5.9). Retried later, as a 503 is.
RETRIED_4XX_STATUSES = frozenset({408})


# A gateway's answer about the provider's server behind it, which had our request: 502, that server's answer
# was invalid; 504, none came in time (https://www.rfc-editor.org/rfc/rfc9110#section-15.6.3 and 15.6.5).
# Whether the message went out is as unknown as after a timeout of our own. A 500 or 503 is the answering
# server's own "not done" (an unexpected condition, unavailable), and is retried.
GATEWAY_STATUSES = frozenset({502, 504})


def gateway_outcome(status: int, provider: str) -> OutcomeUnknown | None:
    """The :class:`OutcomeUnknown` a gateway's 502 or 504 is; None for any other status."""
    if status not in GATEWAY_STATUSES:
        return None
    return OutcomeUnknown(
        f"{provider}'s gateway answered HTTP {status}: the server behind it may have the message"
    )


@runtime_checkable
class Sender(Protocol):
    """An outbound provider. ``send`` makes (at most) one provider API call for one message."""

    name: str

    def send(self, message: OutboundMessage) -> SendResult:
        """Send the message or raise :class:`SendError`."""
        ...


@runtime_checkable
class MarksRead(Protocol):
    """A sender that can mark an inbound message read with a typing indicator (Meta, Kapso); others (Twilio,
    console) have no such call, and callers skip it."""

    name: str

    def mark_read(
        self, provider_message_id: str, *, typing: bool = True, from_number: str | None = None
    ) -> None:
        """Mark the message read (and show typing) or raise :class:`SendError`."""
        ...


ALL_TYPES: frozenset[OutboundType] = frozenset(OutboundType)
# The longest text body WhatsApp delivers; a sender whose API takes less says so in a ``text_max`` class
# attribute (Twilio's Messages API refuses a body over 1,600 characters, on every channel).
TEXT_MAX = 4096


def text_max(sender: object) -> int:
    """The longest plain text a sender (instance or class) can send in one message."""
    return int(getattr(sender, "text_max", TEXT_MAX))


def supports(sender: object, kind: OutboundType | str) -> bool:
    """Whether a sender (instance or class) can send ``kind``: its ``supported_types`` class attribute.

    A sender that declares none sends every type. The notify API asks this before storing a message, so a
    type the active provider cannot send is a 422 at once rather than a failure after the fact.
    """
    return str(kind) in {str(t) for t in getattr(sender, "supported_types", ALL_TYPES)}


def unsupported(provider: str, message: OutboundMessage) -> SendError:
    """The permanent error for a type this provider cannot send (yet)."""
    return SendError("unsupported_type", f"{provider} cannot send {message.type} messages", permanent=True)
