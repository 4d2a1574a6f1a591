"""Meta WhatsApp Cloud API webhooks -> canonical events: the envelope, and :func:`parse_webhook`.

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

This module walks the envelope and keeps each item apart, so one odd item cannot drop its neighbours;
the items themselves are parsed beside it: ``message.py`` (messages and contacts), ``status.py``
(delivery receipts), ``base.py`` (the error object and the fields they all share).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from shared.wire.events import InboundMessage, Provider, StatusUpdate
from shared.wire.meta.base import LenientModel, MetaError, MetaModel, log
from shared.wire.meta.message import Contact, inbound_from_message
from shared.wire.meta.status import status_from_meta

_M = TypeVar("_M", bound=BaseModel)


class Metadata(MetaModel):
    display_phone_number: str | None = None
    phone_number_id: str | None = None


class Value(MetaModel):
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


class Change(MetaModel):
    field: str | None = None
    value: dict[str, Any] = Field(default_factory=dict)


class Entry(LenientModel):
    """``entry[]``: its changes stay raw until parsed one by one, as the value's items do. Required, so an
    entry whose changes are not a list is counted as skipped rather than read as empty."""

    id: str | None = None
    changes: list[Any]


class Webhook(LenientModel):
    """The whole POST body: only a missing ``entry`` list makes it no webhook at all."""

    object: str | None = None
    entry: list[Any]


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


def parse_webhook(body: Mapping[str, Any], *, region: str = "US") -> Parsed:
    """Walk every ``entry[].changes[].value`` of a Meta webhook body.

    Raises :class:`pydantic.ValidationError` only when the envelope itself is not a webhook (no
    ``entry`` list); anything inside that is malformed is logged and kept raw where it has an id.
    """
    webhook = Webhook.model_validate(body)
    parsed = Parsed()
    for raw_entry in webhook.entry:
        entry = _one(Entry, raw_entry)
        if entry is None:
            parsed.skipped += 1
            continue
        for raw_change in entry.changes:
            _parse_change(raw_change, parsed, region)
    return parsed


def _parse_change(raw_change: Any, parsed: Parsed, region: str) -> None:
    change = _one(Change, raw_change)
    if change is None:
        parsed.skipped += 1
    elif change.field not in (None, "messages"):
        # Other subscriptions (template status, account updates) carry no messages for us.
        log.info("meta.change_ignored", field=change.field)
    else:
        _parse_value(change.value, parsed, region)


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


def _each(model: type[_M], items: list[Any]) -> list[_M]:
    """The items that are valid ``model`` objects; the others are logged and left out."""
    return [valid for item in items if (valid := _one(model, item)) is not None]


def _one(model: type[_M], item: Any) -> _M | None:
    """``item`` as a ``model`` object; None (logged) when it is not one."""
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        log.warning("meta.item_malformed", model=model.__name__, errors=exc.error_count())
        return None
