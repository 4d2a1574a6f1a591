"""Twilio WhatsApp webhooks (form-encoded) -> canonical events.

Two kinds of POST reach ``/webhooks/twilio``:

- an inbound message: ``MessageSid``, ``From``/``To`` (``whatsapp:+E164``), ``Body``, ``NumMedia`` with
  ``MediaUrlN``/``MediaContentTypeN``, ``ProfileName``, ``WaId``, tapped buttons (``ButtonText``,
  ``ButtonPayload``), shared locations (``Latitude``, ``Longitude``, ``Address``, ``Label``), quoted
  replies (``OriginalRepliedMessageSid``), ``MessageType``.
  https://www.twilio.com/docs/messaging/guides/webhook-request
  https://www.twilio.com/docs/whatsapp/api#incoming-message-webhook-parameters
- a status callback for a message we sent: ``MessageSid``, ``MessageStatus``, ``ErrorCode``,
  ``ErrorMessage``, ``To``.
  https://www.twilio.com/docs/messaging/guides/track-outbound-message-status

Twilio adds parameters without notice, so unknown ones are ignored (and kept in ``raw``); an unknown
``MessageStatus`` becomes ``unknown`` and an unknown ``MessageType`` an ``unknown`` message, never an error.
Only a payload that cannot be an event at all (no ``MessageSid`` in Twilio's SID format, no sender or
business number) raises :class:`MalformedWebhook`, which the ingress answers with a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.phone import provider_number
from shared.wire.events import (
    DeliveryStatus,
    InboundMessage,
    Location,
    Media,
    MessageType,
    Provider,
    Reply,
    StatusUpdate,
    our_id_from_digits,
)

# The query parameter of our StatusCallback URL that names our outbound message
# (shared/providers/twilio/client.py): Twilio signs the URL with its query, so it is as trusted as the
# callback's fields (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
OUR_ID_PARAM = "wapipe_message"

# WhatsApp allows at most 10 media per message; a bigger NumMedia is not Twilio talking.
MAX_MEDIA = 10

# Twilio's message lifecycle -> ours (https://www.twilio.com/docs/messaging/api/message-resource#message-status-values).
# accepted/scheduled/sending are not yet "sent"; canceled is final without delivery.
_STATUSES: dict[str, DeliveryStatus] = {
    "accepted": DeliveryStatus.queued,
    "scheduled": DeliveryStatus.queued,
    "queued": DeliveryStatus.queued,
    "sending": DeliveryStatus.queued,
    "sent": DeliveryStatus.sent,
    "delivered": DeliveryStatus.delivered,
    "read": DeliveryStatus.read,
    "failed": DeliveryStatus.failed,
    "undelivered": DeliveryStatus.undelivered,
    "canceled": DeliveryStatus.failed,
}
# Statuses Twilio reports for messages it received, i.e. inbound ones: never a receipt for ours.
_INBOUND_STATUSES = frozenset({"received", "receiving"})

_MEDIA_KINDS: tuple[tuple[str, MessageType], ...] = (
    ("image/webp", MessageType.sticker),
    ("image/", MessageType.image),
    ("video/", MessageType.video),
    ("audio/", MessageType.audio),
    ("application/", MessageType.document),
    ("text/", MessageType.document),
)


# A Message SID: SM (or MM for media) and 32 hex digits, the form Twilio itself validates
# (https://www.twilio.com/docs/api/errors/90001, https://www.twilio.com/docs/glossary/what-is-a-sid).
# Enforced because Twilio signs ``key1value1key2value2...`` with no separator: in a captured request
# ``MessageSid`` is followed by ``MessageType`` (or ``MessageStatus``), so without a fixed shape a replay
# with ``MessageSid=SM...MessageTypetext`` and no MessageType verifies yet names a new message, and slips
# past the per-message dedupe. A well-formed SID cannot absorb a neighbouring key's letters.
MESSAGE_SID_PATTERN = r"^(SM|MM)[0-9a-fA-F]{32}$"


class MalformedWebhook(ValueError):
    """The payload cannot be a Twilio message or status callback; the message says what is missing."""


class OtherChannel(Exception):
    """An inbound message that came by another channel than WhatsApp (SMS, Messenger, RCS) to a number that
    also takes those on the same webhook URL: not ours to answer."""

    def __init__(self, channel: str) -> None:
        super().__init__(f"a message by {channel}, not WhatsApp")
        self.channel = channel


# Twilio addresses a WhatsApp user as ``whatsapp:+E164``; an SMS sender is a bare number, other channels
# have their own prefix (``messenger:``, ``rcs:``).
WHATSAPP_PREFIX = "whatsapp:"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, coerce_numbers_to_str=True)


class TwilioInbound(_Model):
    """The fields of an inbound WhatsApp message webhook that we use."""

    message_sid: str = Field(alias="MessageSid", pattern=MESSAGE_SID_PATTERN)
    from_: str = Field(alias="From", min_length=1)
    to: str = Field(alias="To", min_length=1)
    account_sid: str | None = Field(default=None, alias="AccountSid")
    body: str | None = Field(default=None, alias="Body")
    num_media: str | None = Field(default=None, alias="NumMedia")
    message_type: str | None = Field(default=None, alias="MessageType")
    profile_name: str | None = Field(default=None, alias="ProfileName")
    wa_id: str | None = Field(default=None, alias="WaId")
    button_text: str | None = Field(default=None, alias="ButtonText")
    button_payload: str | None = Field(default=None, alias="ButtonPayload")
    list_id: str | None = Field(default=None, alias="ListId")
    list_title: str | None = Field(default=None, alias="ListTitle")
    latitude: str | None = Field(default=None, alias="Latitude")
    longitude: str | None = Field(default=None, alias="Longitude")
    address: str | None = Field(default=None, alias="Address")
    label: str | None = Field(default=None, alias="Label")
    original_replied_message_sid: str | None = Field(default=None, alias="OriginalRepliedMessageSid")


class TwilioStatus(_Model):
    """The fields of a status callback that we use."""

    message_sid: str = Field(alias="MessageSid", pattern=MESSAGE_SID_PATTERN)
    # Not read, but the same message's id under its older name: one that is not a SID is not Twilio.
    sms_sid: str | None = Field(default=None, alias="SmsSid", pattern=MESSAGE_SID_PATTERN)
    message_status: str = Field(alias="MessageStatus", min_length=1)
    to: str | None = Field(default=None, alias="To")
    error_code: str | None = Field(default=None, alias="ErrorCode")
    error_message: str | None = Field(default=None, alias="ErrorMessage")


def is_status_callback(params: Mapping[str, Any]) -> bool:
    """Status callbacks carry ``MessageStatus``; inbound messages carry none, or ``received``."""
    status = params.get("MessageStatus")
    return bool(status) and str(status).lower() not in _INBOUND_STATUSES


def parse(
    params: Mapping[str, Any], *, region: str = "US", our_message_id: str | None = None
) -> InboundMessage | StatusUpdate:
    """A webhook's parameters (first value per key, e.g. ``request.form.to_dict()``) -> one event.
    ``our_message_id``: the :data:`OUR_ID_PARAM` query parameter of the URL Twilio called (signed with it).

    Raises :class:`MalformedWebhook` when required fields are missing or unusable, and
    :class:`OtherChannel` for an inbound message that did not come by WhatsApp.
    """
    if is_status_callback(params):
        return parse_status(params, region=region, our_message_id=our_message_id)
    return parse_inbound(params, region=region)


def parse_inbound(params: Mapping[str, Any], *, region: str = "US") -> InboundMessage:
    raw = dict(params)
    try:
        msg = TwilioInbound.model_validate(raw)
    except ValidationError as exc:
        raise MalformedWebhook(_missing("inbound message", exc)) from None
    if not msg.from_.lower().startswith(WHATSAPP_PREFIX):
        channel, colon, _ = msg.from_.partition(":")
        raise OtherChannel(channel.lower() if colon else "sms")
    business = provider_phone(msg.to, region)
    if business is None:
        raise MalformedWebhook("To is not a phone number")
    sender = provider_phone(msg.from_, region) or provider_phone(msg.wa_id, region)
    if sender is None:
        raise MalformedWebhook("From is not a phone number")

    media = _media(raw, msg.num_media)
    message_type = _message_type(msg, media)
    reply: Reply | None = None
    if msg.button_payload or msg.button_text:
        reply = Reply(id=msg.button_payload or msg.button_text or "", title=msg.button_text)
    elif msg.list_id or msg.list_title:
        reply = Reply(id=msg.list_id or msg.list_title or "", title=msg.list_title)
    text = msg.body or None
    if reply is not None and text == reply.title:
        # Twilio repeats the tapped title as Body; the tap is the reply, not typed text.
        text = None

    return InboundMessage(
        provider=Provider.twilio,
        provider_message_id=msg.message_sid,
        business_number=business,
        sender_phone=sender,
        profile_name=msg.profile_name or None,
        type=message_type,
        text=text,
        media=media,
        reply=reply,
        location=_location(msg) if message_type is MessageType.location else None,
        context_message_id=msg.original_replied_message_sid or None,
        raw=raw,
    )


def parse_status(
    params: Mapping[str, Any], *, region: str = "US", our_message_id: str | None = None
) -> StatusUpdate:
    raw = dict(params)
    try:
        status = TwilioStatus.model_validate(raw)
    except ValidationError as exc:
        raise MalformedWebhook(_missing("status callback", exc)) from None
    return StatusUpdate(
        provider=Provider.twilio,
        provider_message_id=status.message_sid,
        status=delivery_status(status.message_status),
        recipient=provider_phone(status.to, region),
        error_code=status.error_code or None,
        error_message=status.error_message or None,
        our_message_id=our_id_from_digits(our_message_id),
        raw=raw,
    )


def delivery_status(value: str | None) -> DeliveryStatus:
    """Twilio's ``MessageStatus`` -> ours; a word we do not know becomes ``unknown``."""
    return _STATUSES.get((value or "").strip().lower(), DeliveryStatus.unknown)


def provider_phone(raw: str | None, region: str) -> str | None:
    """A Twilio address (``whatsapp:+15551234567``) -> E.164, or None when absent or unusable."""
    if not raw:
        return None
    return provider_number(raw, region)


def _media(raw: Mapping[str, Any], num_media: str | None) -> list[Media]:
    try:
        count = min(max(int(num_media or 0), 0), MAX_MEDIA)
    except ValueError:
        count = 0
    media = []
    for index in range(count):
        url = raw.get(f"MediaUrl{index}")
        if url:
            media.append(Media(url=str(url), mime_type=_opt_str(raw.get(f"MediaContentType{index}"))))
    return media


def _location(msg: TwilioInbound) -> Location | None:
    # Twilio's Label is the place's name (Meta's location.name); a dropped pin has neither it nor Address.
    fields = {"latitude": msg.latitude, "longitude": msg.longitude, "name": msg.label, "address": msg.address}
    return Location.parsed(fields)


def _message_type(msg: TwilioInbound, media: list[Media]) -> MessageType:
    if msg.message_type:
        # Twilio names WhatsApp types as Meta does (text, image, location, button, interactive...).
        return MessageType(msg.message_type.strip().lower())
    if msg.button_payload or msg.button_text:
        return MessageType.button
    if msg.list_id or msg.list_title:
        return MessageType.interactive
    if msg.latitude and msg.longitude:
        return MessageType.location
    if media:
        mime = (media[0].mime_type or "").lower()
        for prefix, kind in _MEDIA_KINDS:
            if mime.startswith(prefix):
                return kind
        return MessageType.document
    return MessageType.text


def _missing(what: str, exc: ValidationError) -> str:
    fields = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
    return f"not a Twilio {what}: missing or invalid {', '.join(fields) or 'fields'}"


def _opt_str(value: Any) -> str | None:
    return str(value) if value else None
