"""Meta's ``value.messages[]`` (with the ``contacts[]`` beside them) -> :class:`InboundMessage`.

Every message type of the reference is modelled:
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
Senders may be known only by their business-scoped user id (``from_user_id``, ``contacts[].user_id``;
``from``/``wa_id`` may then be empty):
https://developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids

Kapso delivers the same Cloud-API-shaped messages, so :func:`inbound_from_message` serves both providers.
A message whose known fields do not have the shape we expect, or whose type we do not know, still becomes
an ``unknown`` event with its raw JSON kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field, ValidationError

from shared.wire.events import FlowReply, InboundMessage, Location, Media, MessageType, Provider, Reply
from shared.wire.meta.base import MetaError, MetaModel, log, provider_phone, unix_time

_MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


class Profile(MetaModel):
    name: str | None = None
    username: str | None = None
    country_code: str | None = None


class Contact(MetaModel):
    """``value.contacts[]``: who sent the messages in the same value (profile name, ids)."""

    wa_id: str | None = None
    user_id: str | None = None  # business-scoped user id (BSUID)
    profile: Profile | None = None


class MediaObject(MetaModel):
    """image / video / audio / document / sticker: a media id to fetch from the Graph API."""

    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    voice: bool | None = None
    animated: bool | None = None
    url: str | None = None


class Text(MetaModel):
    body: str | None = None


class Reaction(MetaModel):
    message_id: str | None = None
    emoji: str | None = None  # absent when the user removes their reaction


class ReplyObject(MetaModel):
    id: str
    title: str | None = None
    description: str | None = None


class Interactive(MetaModel):
    type: str | None = None
    button_reply: ReplyObject | None = None
    list_reply: ReplyObject | None = None
    nfm_reply: dict[str, Any] | None = None  # a WhatsApp Flow's response


class Button(MetaModel):
    """A tapped quick-reply button of a template message."""

    payload: str | None = None
    text: str | None = None


class Order(MetaModel):
    catalog_id: str | None = None
    text: str | None = None
    product_items: list[dict[str, Any]] = Field(default_factory=list)


class System(MetaModel):
    body: str | None = None
    type: str | None = None
    wa_id: str | None = None
    user_id: str | None = None


class Context(MetaModel):
    id: str | None = None
    from_: str | None = Field(default=None, alias="from")
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None


class Message(MetaModel):
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
    location: dict[str, Any] | None = None  # Location.parsed: unusable coordinates cost only themselves
    contacts: list[dict[str, Any]] | None = None
    reaction: Reaction | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    order: Order | None = None
    system: System | None = None
    context: Context | None = None
    errors: list[MetaError] = Field(default_factory=list)


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
    location: Location | None = None
    flow_reply: FlowReply | None = None
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
    elif message_type is MessageType.location:
        location = Location.parsed(msg.location)
    elif message_type is MessageType.interactive and msg.interactive is not None:
        tapped = msg.interactive.button_reply or msg.interactive.list_reply
        if tapped is not None:
            reply = Reply(id=tapped.id, title=tapped.title)
        elif msg.interactive.nfm_reply is not None:
            flow_reply = FlowReply.parsed(msg.interactive.nfm_reply)
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
        location=location,
        flow_reply=flow_reply,
        context_message_id=context_id,
        sent_at=unix_time(msg.timestamp),
        raw=raw,
    )


def _contact_for(contacts: Iterable[Contact], wa_id: str | None, bsuid: str | None) -> Contact | None:
    contacts = list(contacts)
    for contact in contacts:
        if (wa_id and contact.wa_id == wa_id) or (bsuid and contact.user_id == bsuid):
            return contact
    # One contact per value is the usual case; use it when the message names nobody we can match.
    return contacts[0] if len(contacts) == 1 and not wa_id and not bsuid else None


def _str(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and raw else None
