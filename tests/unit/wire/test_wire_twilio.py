"""Twilio webhook payloads (captured shapes under tests/data/twilio) -> canonical events."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from shared.wire.events import DeliveryStatus, InboundMessage, MessageType, StatusUpdate
from shared.wire.twilio import MalformedWebhook, delivery_status, parse

DATA = Path(__file__).resolve().parents[2] / "data" / "twilio"


def load(name: str) -> dict[str, str]:
    return dict(parse_qsl((DATA / name).read_text(), keep_blank_values=True))


def test_text_message() -> None:
    event = parse(load("inbound_text.txt"))
    assert isinstance(event, InboundMessage)
    assert event.provider == "twilio"
    assert event.provider_message_id == "SM0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    assert event.sender_phone == "+15551234567"
    assert event.business_number == "+14155238886"
    assert event.profile_name == "Ana Pérez"
    assert event.type is MessageType.text
    assert event.text == "Hola, ¿qué tal? 😀"
    assert event.dedupe_key == "seen:twilio:SM0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    # The event survives the JSON trip the queue gives it.
    assert InboundMessage.model_validate(event.model_dump(mode="json")) == event


def test_media_message_keeps_every_attachment() -> None:
    event = parse(load("inbound_media.txt"))
    assert isinstance(event, InboundMessage)
    assert event.type is MessageType.image
    assert event.text == "receipt"
    assert [m.mime_type for m in event.media] == ["image/jpeg", "application/pdf"]
    assert all(m.url and m.url.startswith("https://api.twilio.com/") for m in event.media)


def test_button_tap_is_a_reply_quoting_our_message() -> None:
    event = parse(load("inbound_button.txt"))
    assert isinstance(event, InboundMessage)
    assert event.type is MessageType.button
    assert event.reply is not None
    assert (event.reply.id, event.reply.title) == ("confirm_order_42", "Confirm")
    assert event.answer_text == "Confirm"
    assert event.context_message_id == "SM99998888777766665555444433332222"


def test_location_is_typed_and_kept_raw() -> None:
    event = parse(load("inbound_location.txt"), region="CO")
    assert isinstance(event, InboundMessage)
    assert event.type is MessageType.location
    assert event.sender_phone == "+573103055424"
    assert event.raw["Latitude"] == "4.6097"
    assert event.location is not None
    assert (event.location.latitude, event.location.longitude) == (4.6097, -74.0817)
    assert event.location.name == "Oficina"
    assert event.location.address == "Cra 7 #32-16, Bogotá"
    assert InboundMessage.model_validate(event.model_dump(mode="json")) == event


@pytest.mark.parametrize(("latitude", "longitude"), [("nan", "1"), ("4.6", "inf"), ("", "-74"), ("95", "0")])
def test_location_with_unusable_coordinates_is_kept_without_them(latitude: str, longitude: str) -> None:
    params = {**load("inbound_location.txt"), "Latitude": latitude, "Longitude": longitude}
    event = parse(params, region="CO")
    assert isinstance(event, InboundMessage)
    assert event.type is MessageType.location
    assert event.location is None


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("status_delivered.txt", DeliveryStatus.delivered, None),
        ("status_read.txt", DeliveryStatus.read, None),
        ("status_failed.txt", DeliveryStatus.failed, "63016"),
    ],
)
def test_status_callbacks(name: str, status: DeliveryStatus, code: str | None) -> None:
    event = parse(load(name))
    assert isinstance(event, StatusUpdate)
    assert event.status is status
    assert event.recipient == "+15551234567"
    assert event.error_code == code
    assert event.dedupe_key == f"seen-status:twilio:{event.provider_message_id}:{status}"


def test_unknown_status_and_type_do_not_crash() -> None:
    assert delivery_status("teleported") is DeliveryStatus.unknown
    assert delivery_status("Sent") is DeliveryStatus.sent
    params = load("inbound_text.txt") | {"MessageType": "hologram"}
    event = parse(params)
    assert isinstance(event, InboundMessage)
    assert event.type is MessageType.unknown


def test_inferred_types_without_message_type() -> None:
    params = load("inbound_media.txt")
    del params["MessageType"]
    params["MediaContentType0"] = "audio/ogg"
    assert parse(params).type is MessageType.audio  # type: ignore[union-attr]


def test_missing_message_sid_is_malformed() -> None:
    with pytest.raises(MalformedWebhook, match="MessageSid"):
        parse(load("malformed_no_sid.txt"))


def _shifted(params: dict[str, str], next_key: str) -> dict[str, str]:
    """``params`` with the key after MessageSid folded into its value: the same string Twilio signs."""
    shifted = dict(params)
    shifted["MessageSid"] += next_key + shifted.pop(next_key)
    return shifted


@pytest.mark.parametrize(
    ("name", "next_key"), [("inbound_text.txt", "MessageType"), ("status_delivered.txt", "MessageStatus")]
)
def test_a_message_sid_with_a_neighbouring_key_folded_in_is_malformed(name: str, next_key: str) -> None:
    # Twilio signs key1value1key2value2... with no separator, so this forgery verifies: the SID's fixed
    # shape is what stops it from naming a new message.
    with pytest.raises(MalformedWebhook, match="MessageSid"):
        parse(_shifted(load(name), next_key))


@pytest.mark.parametrize(
    "sid",
    ["SM1", "", "SMforged" + "0" * 26, "XX" + "0" * 32, "SM" + "0" * 33, "sm" + "0" * 32, "SM" + "g" * 32],
)
@pytest.mark.parametrize("name", ["inbound_text.txt", "status_failed.txt"])
def test_a_message_sid_not_in_twilios_format_is_malformed(name: str, sid: str) -> None:
    with pytest.raises(MalformedWebhook, match="MessageSid"):
        parse(load(name) | {"MessageSid": sid})


def test_a_status_callback_whose_sms_sid_is_not_a_sid_is_malformed() -> None:
    with pytest.raises(MalformedWebhook, match="SmsSid"):
        parse(load("status_read.txt") | {"SmsSid": "SM44445555666677778888999900001111MessageStatusread"})


@pytest.mark.parametrize("sid", ["MM" + "ab" * 16, "SM" + "AB" * 16])
def test_media_and_upper_case_sids_are_accepted(sid: str) -> None:
    # Twilio's own check: ^(SM|MM)[0-9a-fA-F]{32}$ (https://www.twilio.com/docs/api/errors/90001).
    assert parse(load("inbound_text.txt") | {"MessageSid": sid}).provider_message_id == sid


@pytest.mark.parametrize("field", ["From", "To"])
def test_unusable_phone_is_malformed(field: str) -> None:
    params = load("inbound_text.txt") | {field: "whatsapp:not-a-number", "WaId": ""}
    with pytest.raises(MalformedWebhook, match=field):
        parse(params)


def test_absurd_num_media_is_bounded() -> None:
    params = load("inbound_text.txt") | {"NumMedia": "100000000", "MediaUrl0": "https://x/0"}
    event = parse(params)
    assert [m.url for m in event.media] == ["https://x/0"]  # type: ignore[union-attr]
    assert parse(load("inbound_text.txt") | {"NumMedia": "lots"}).media == []  # type: ignore[union-attr]


def test_a_mexican_mobile_as_whatsapp_writes_it_is_kept_in_the_plans_form() -> None:
    # +52 1 and ten digits: the numbering plan dropped that 1, WhatsApp did not; refused, it was a 400.
    # Kept as +52 and ten digits, the form API callers send to, so both are one contact.
    params = {**load("inbound_text.txt"), "From": "whatsapp:+5215512345678", "WaId": "5215512345678"}
    event = parse(params)
    assert isinstance(event, InboundMessage)
    assert event.sender_phone == "+525512345678"
