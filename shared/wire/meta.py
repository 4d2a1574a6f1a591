"""Meta WhatsApp Cloud API webhooks -> canonical events.

One POST carries ``entry[]``, each with ``changes[]``, each with a ``value`` holding any of
``messages[]``, ``statuses[]``, ``contacts[]`` and ``errors[]`` for one business number
(``value.metadata.phone_number_id``). Reference:

- payload envelope and every message type:
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
- statuses (sent/delivered/read/failed, ``errors[]``, ``conversation``, ``pricing``):
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/status
- value-level ``errors[]``:
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/errors
- business-scoped user ids (``user_id``, ``from_user_id``, ``recipient_user_id``; ``wa_id``/``from`` may
  be empty): https://developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids

Models are frozen and ignore fields they do not know; a message whose known fields do not have the shape
we expect, or whose type we do not know, still becomes an ``unknown`` event with its raw JSON kept, so a
change on Meta's side is stored and acknowledged rather than lost or crashing the webhook.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.logging import get_logger
from shared.phone import provider_number
from shared.wire.events import (
    DeliveryStatus,
    InboundMessage,
    Media,
    MessageType,
    Provider,
    Reply,
    StatusUpdate,
)

log = get_logger(__name__)

_M = TypeVar("_M", bound=BaseModel)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class MetaError(_Model):
    """An error object, as in ``value.errors[]``, ``statuses[].errors[]`` and ``messages[].errors[]``."""

    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: dict[str, Any] | None = None
    href: str | None = None

    @property
    def details(self) -> str | None:
        return (self.error_data or {}).get("details")


class Profile(_Model):
    name: str | None = None
    username: str | None = None
    country_code: str | None = None


class Contact(_Model):
    """``value.contacts[]``: who sent the messages in the same value (profile name, ids)."""

    wa_id: str | None = None
    user_id: str | None = None  # business-scoped user id (BSUID)
    profile: Profile | None = None


class Metadata(_Model):
    display_phone_number: str | None = None
    phone_number_id: str | None = None


class MediaObject(_Model):
    """image / video / audio / document / sticker: a media id to fetch from the Graph API."""

    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    voice: bool | None = None
    animated: bool | None = None
    url: str | None = None


class Text(_Model):
    body: str | None = None


class Reaction(_Model):
    message_id: str | None = None
    emoji: str | None = None  # absent when the user removes their reaction


class ReplyObject(_Model):
    id: str
    title: str | None = None
    description: str | None = None


class Interactive(_Model):
    type: str | None = None
    button_reply: ReplyObject | None = None
    list_reply: ReplyObject | None = None
    nfm_reply: dict[str, Any] | None = None  # a WhatsApp Flow's response


class Button(_Model):
    """A tapped quick-reply button of a template message."""

    payload: str | None = None
    text: str | None = None


class Order(_Model):
    catalog_id: str | None = None
    text: str | None = None
    product_items: list[dict[str, Any]] = Field(default_factory=list)


class System(_Model):
    body: str | None = None
    type: str | None = None
    wa_id: str | None = None
    user_id: str | None = None


class Context(_Model):
    id: str | None = None
    from_: str | None = Field(default=None, alias="from")
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None


class Message(_Model):
    """``value.messages[]``: one message a user sent to the business number."""

    id: str = Field(min_length=1)  # the wamid: what makes a redelivery one effect, so never empty
    from_: str | None = Field(default=None, alias="from")
    from_user_id: str | None = None
    timestamp: str | int | None = None
    type: str | None = None
    text: Text | None = None
    image: MediaObject | None = None
    video: MediaObject | None = None
    audio: MediaObject | None = None
    voice: MediaObject | None = None
    document: MediaObject | None = None
    sticker: MediaObject | None = None
    location: dict[str, Any] | None = None
    contacts: list[dict[str, Any]] | None = None
    reaction: Reaction | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    order: Order | None = None
    system: System | None = None
    context: Context | None = None
    errors: list[MetaError] = Field(default_factory=list)


class Status(_Model):
    """``value.statuses[]``: a delivery receipt for a message the business sent."""

    id: str = Field(min_length=1)
    status: str
    timestamp: str | int | None = None
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    errors: list[MetaError] = Field(default_factory=list)
    conversation: dict[str, Any] | None = None
    pricing: dict[str, Any] | None = None
    biz_opaque_callback_data: str | None = None


class Value(_Model):
    """``entry[].changes[].value`` for ``field == "messages"``; items stay raw until parsed one by one.

    Every list is ``list[Any]`` and each item is validated on its own (:func:`_each`): one odd contact,
    error or status must not make the whole value fail, which would drop the good messages beside it.
    """

    messaging_product: str | None = None
    metadata: Metadata | None = None
    contacts: list[Any] = Field(default_factory=list)
    messages: list[Any] = Field(default_factory=list)
    statuses: list[Any] = Field(default_factory=list)
    errors: list[Any] = Field(default_factory=list)


class Change(_Model):
    field: str | None = None
    value: dict[str, Any] = Field(default_factory=dict)


class Entry(_Model):
    id: str | None = None
    changes: list[Change] = Field(default_factory=list)


class Webhook(_Model):
    """The whole POST body."""

    object: str | None = None
    entry: list[Entry]


@dataclass(frozen=True)
class ReportedError:
    """A value-level error Meta reported for one business number (rate limits, account problems)."""

    business_number: str | None
    error: MetaError


@dataclass
class Parsed:
    """Everything one webhook POST carried, in the order Meta sent it."""

    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    errors: list[ReportedError] = field(default_factory=list)
    skipped: int = 0  # items without even an id: logged, nothing to store


# A voice note that has been played has necessarily been read; status only moves forward.
_STATUS_ALIASES = {"played": DeliveryStatus.read}
_MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


def parse_webhook(body: Mapping[str, Any], *, region: str = "US") -> Parsed:
    """Walk every ``entry[].changes[].value`` of a Meta webhook body.

    Raises :class:`pydantic.ValidationError` only when the envelope itself is not a webhook (no
    ``entry`` list); anything inside that is malformed is logged and kept raw where it has an id.
    """
    webhook = Webhook.model_validate(body)
    parsed = Parsed()
    for entry in webhook.entry:
        for change in entry.changes:
            if change.field not in (None, "messages"):
                # Other subscriptions (template status, account updates) carry no messages for us.
                log.info("meta.change_ignored", field=change.field)
                continue
            _parse_value(change.value, parsed, region)
    return parsed


def _parse_value(raw_value: Mapping[str, Any], parsed: Parsed, region: str) -> None:
    try:
        value = Value.model_validate(raw_value)
    except ValidationError as exc:
        log.warning("meta.value_malformed", errors=exc.error_count())
        parsed.skipped += 1
        return
    business = value.metadata.phone_number_id if value.metadata else None
    for error in _each(MetaError, value.errors):
        parsed.errors.append(ReportedError(business_number=business, error=error))
    if not business:
        if value.messages or value.statuses:
            log.warning("meta.value_without_phone_number_id", items=len(value.messages) + len(value.statuses))
            parsed.skipped += len(value.messages) + len(value.statuses)
        return
    contacts = _each(Contact, value.contacts)
    for raw in value.messages:
        event = (
            inbound_from_message(raw, business, contacts, Provider.meta, region)
            if isinstance(raw, Mapping)
            else None
        )
        if event is None:
            parsed.skipped += 1
        else:
            parsed.messages.append(event)
    for raw in value.statuses:
        status = status_from_meta(raw, Provider.meta, region) if isinstance(raw, Mapping) else None
        if status is None:
            parsed.skipped += 1
        else:
            parsed.statuses.append(status)


def inbound_from_message(
    raw: Mapping[str, Any],
    business_number: str,
    contacts: Iterable[Contact] = (),
    provider: Provider = Provider.meta,
    region: str = "US",
    *,
    sender_phone: str | None = None,
    sender_bsuid: str | None = None,
    profile_name: str | None = None,
    media_url: str | None = None,
) -> InboundMessage | None:
    """One Cloud-API-shaped message (Meta's, or Kapso's which reuses it) -> :class:`InboundMessage`.

    The keyword arguments let a wrapper (Kapso) supply what it knows about the sender when the message
    itself lacks it. Returns None only when the message has no id at all.
    """
    raw = dict(raw)
    try:
        msg = Message.model_validate(raw)
    except ValidationError as exc:
        message_id = raw.get("id")
        if not isinstance(message_id, str) or not message_id:
            log.warning("meta.message_without_id", errors=exc.error_count())
            return None
        log.warning("meta.message_malformed", message_id=message_id, type=raw.get("type"))
        return InboundMessage(
            provider=provider,
            provider_message_id=message_id,
            business_number=business_number,
            sender_phone=sender_phone or provider_phone(raw.get("from"), region),
            sender_bsuid=sender_bsuid or _str(raw.get("from_user_id")),
            profile_name=profile_name,
            type=MessageType.unknown,
            sent_at=unix_time(raw.get("timestamp")),
            raw=raw,
        )

    phone = provider_phone(msg.from_, region) or sender_phone
    bsuid = msg.from_user_id or sender_bsuid
    contact = _contact_for(contacts, msg.from_, bsuid)
    if contact is not None:
        phone = phone or provider_phone(contact.wa_id, region)
        bsuid = bsuid or contact.user_id
        if contact.profile and contact.profile.name:
            profile_name = profile_name or contact.profile.name

    kind = "audio" if msg.type == "voice" else (msg.type or "")
    message_type = MessageType(kind)
    text: str | None = None
    media: list[Media] = []
    reply: Reply | None = None
    context_id = msg.context.id if msg.context else None

    if message_type is MessageType.text and msg.text is not None:
        text = msg.text.body
    elif kind in _MEDIA_TYPES:
        obj = getattr(msg, kind) or msg.voice
        if obj is not None:
            media.append(
                Media(
                    url=media_url or obj.url,
                    media_id=obj.id,
                    mime_type=obj.mime_type,
                    caption=obj.caption,
                    filename=obj.filename,
                    sha256=obj.sha256,
                )
            )
            text = obj.caption
    elif message_type is MessageType.reaction and msg.reaction is not None:
        text = msg.reaction.emoji
        context_id = msg.reaction.message_id
    elif message_type is MessageType.interactive and msg.interactive is not None:
        tapped = msg.interactive.button_reply or msg.interactive.list_reply
        if tapped is not None:
            reply = Reply(id=tapped.id, title=tapped.title)
    elif message_type is MessageType.button and msg.button is not None:
        reply = Reply(id=msg.button.payload or msg.button.text or "", title=msg.button.text)
    elif message_type is MessageType.order and msg.order is not None:
        text = msg.order.text
    elif message_type is MessageType.system and msg.system is not None:
        text = msg.system.body

    if message_type is MessageType.unknown:
        # Includes Meta's own "unsupported" type (edits, polls...): kept raw for a later look.
        log.info("meta.message_unknown_type", message_id=msg.id, type=msg.type)

    return InboundMessage(
        provider=provider,
        provider_message_id=msg.id,
        business_number=business_number,
        sender_phone=phone,
        sender_bsuid=bsuid,
        profile_name=profile_name,
        type=message_type,
        text=text,
        media=media,
        reply=reply,
        context_message_id=context_id,
        sent_at=unix_time(msg.timestamp),
        raw=raw,
    )


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
    error = status.errors[0] if status.errors else None
    return StatusUpdate(
        provider=provider,
        provider_message_id=status.id,
        status=delivery_status(status.status),
        recipient=provider_phone(status.recipient_id, region) or status.recipient_user_id,
        error_code=str(error.code) if error and error.code is not None else None,
        error_message=(error.title or error.message) if error else None,
        at=unix_time(status.timestamp),
        raw=raw,
    )


def delivery_status(value: str | None) -> DeliveryStatus:
    """Meta's status word -> ours; a word we do not know becomes ``unknown`` (never a crash)."""
    word = (value or "").lower()
    return _STATUS_ALIASES.get(word) or DeliveryStatus(word)


def _each(model: type[_M], items: list[Any]) -> list[_M]:
    """The items that are valid ``model`` objects; the others are logged and left out."""
    valid = []
    for item in items:
        try:
            valid.append(model.model_validate(item))
        except ValidationError as exc:
            log.warning("meta.item_malformed", model=model.__name__, errors=exc.error_count())
    return valid


def _contact_for(contacts: Iterable[Contact], wa_id: str | None, bsuid: str | None) -> Contact | None:
    contacts = list(contacts)
    for contact in contacts:
        if (wa_id and contact.wa_id == wa_id) or (bsuid and contact.user_id == bsuid):
            return contact
    # One contact per value is the usual case; use it when the message names nobody we can match.
    return contacts[0] if len(contacts) == 1 and not wa_id and not bsuid else None


def provider_phone(raw: Any, region: str) -> str | None:
    """A provider-delivered number -> E.164, or None when absent/empty (username users) or unusable."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    return provider_number(raw, region)


def _str(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and raw else None


def unix_time(raw: Any) -> datetime:
    """Meta's Unix timestamps are strings of seconds; a missing or odd one means "now"."""
    try:
        return datetime.fromtimestamp(int(raw), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)
