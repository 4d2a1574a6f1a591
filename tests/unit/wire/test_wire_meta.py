"""Meta Cloud API webhook payloads (tests/data/meta, in Meta's documented shapes) -> canonical events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.wire.events import DeliveryStatus, InboundMessage, MessageType, Provider
from shared.wire.meta import parse_webhook

DATA = Path(__file__).resolve().parents[2] / "data" / "meta"
BUSINESS = "106540352242922"
USER = "+16505551234"
BSUID = "US.13491208655302741918"


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_bytes())


def only_message(name: str) -> InboundMessage:
    parsed = parse_webhook(load(name))
    assert len(parsed.messages) == 1, parsed
    assert parsed.statuses == []
    message = parsed.messages[0]
    assert message.provider is Provider.meta
    assert message.business_number == BUSINESS
    return message


def test_text_keeps_non_ascii_and_identifies_the_sender() -> None:
    message = only_message("text")
    assert message.type is MessageType.text
    assert message.text == "Café para mañana ¿sí? 😀"
    assert message.sender_phone == USER
    assert message.sender_bsuid == BSUID
    assert message.profile_name == "Sheena Nelson"
    assert message.sent_at == datetime.fromtimestamp(1750090702, tz=UTC)
    assert message.dedupe_key == f"seen:meta:{message.provider_message_id}"
    assert message.raw["text"]["body"] == message.text


@pytest.mark.parametrize(
    ("name", "kind", "media_id", "mime", "caption", "filename"),
    [
        ("image", MessageType.image, "1479537139650973", "image/jpeg", "Foto del daño", None),
        ("video", MessageType.video, "1166846181421424", "video/mp4", "Demo", None),
        ("audio", MessageType.audio, "1003383421387256", "audio/ogg; codecs=opus", None, None),
        (
            "document",
            MessageType.document,
            "1090732159359318",
            "application/pdf",
            "Factura",
            "factura-0042.pdf",
        ),
        ("sticker", MessageType.sticker, "1086328329852186", "image/webp", None, None),
    ],
)
def test_media_messages_carry_the_media_id_to_download(
    name: str, kind: MessageType, media_id: str, mime: str, caption: str | None, filename: str | None
) -> None:
    message = only_message(name)
    assert message.type is kind
    [media] = message.media
    assert media.media_id == media_id
    assert media.mime_type == mime
    assert media.caption == caption
    assert media.filename == filename
    assert media.sha256
    assert message.text == caption


def test_location_and_contacts_are_typed_and_kept_raw() -> None:
    location = only_message("location")
    assert location.type is MessageType.location
    assert location.raw["location"]["latitude"] == pytest.approx(37.483307)
    contacts = only_message("contacts")
    assert contacts.type is MessageType.contacts
    assert contacts.raw["contacts"][0]["name"]["formatted_name"] == "José Pérez"


def test_location_carries_its_coordinates_and_place() -> None:
    message = only_message("location")
    assert message.location is not None
    assert message.location.latitude == pytest.approx(37.483307)
    assert message.location.longitude == pytest.approx(-122.148981)
    assert message.location.name == "Main Office"
    assert message.location.address == "1 Hacker Way, Menlo Park, CA 94025"
    assert message.location.url == "https://www.meta.com"
    # The event survives the JSON trip the queue gives it.
    assert InboundMessage.model_validate(message.model_dump(mode="json")) == message


@pytest.mark.parametrize(
    "location",
    [
        {"latitude": "north", "longitude": 1},
        {"latitude": 91, "longitude": 0},
        {"longitude": 1.5},
    ],
)
def test_a_location_without_usable_coordinates_is_still_a_location_message(location: Any) -> None:
    payload = load("location")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["location"] = location
    [message] = parse_webhook(payload).messages
    assert message.type is MessageType.location
    assert message.location is None
    assert message.raw["location"] == location


def test_a_location_that_is_not_an_object_is_a_malformed_message_as_before() -> None:
    payload = load("location")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["location"] = "not an object"
    [message] = parse_webhook(payload).messages
    assert message.type is MessageType.unknown
    assert message.location is None


def test_flow_reply_carries_the_parsed_answers() -> None:
    message = only_message("interactive_flow_reply")
    assert message.type is MessageType.interactive
    assert message.flow_reply is not None
    assert message.flow_reply.name == "flow"
    assert message.flow_reply.response == {
        "flow_token": "booking-42",
        "date": "2026-12-09",
        "party_size": "4",
        "notes": "Mesa junto a la ventana",
    }
    assert message.reply is None
    assert InboundMessage.model_validate(message.model_dump(mode="json")) == message


@pytest.mark.parametrize(
    "response_json",
    ["{not json", '["a", "list"]', "", None, 42, "[" * 100_000, '{"a":' * 300 + "1" + "}" * 300],
)
def test_flow_reply_with_unreadable_answers_is_kept_without_them(response_json: Any) -> None:
    payload = load("interactive_flow_reply")
    nfm = payload["entry"][0]["changes"][0]["value"]["messages"][0]["interactive"]["nfm_reply"]
    nfm["response_json"] = response_json
    [message] = parse_webhook(payload).messages
    assert message.type is MessageType.interactive
    assert message.flow_reply is not None
    assert message.flow_reply.response is None
    assert message.raw["interactive"]["nfm_reply"]["response_json"] == response_json


def test_reaction_points_at_the_reacted_message() -> None:
    message = only_message("reaction")
    assert message.type is MessageType.reaction
    assert message.text == "👍"
    assert message.context_message_id == "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"


@pytest.mark.parametrize(
    ("name", "kind", "reply_id", "title"),
    [
        ("interactive_button_reply", MessageType.interactive, "confirm-yes", "Sí, confirmar"),
        ("interactive_list_reply", MessageType.interactive, "menu-2", "Estado de pedido"),
        ("button", MessageType.button, "STOP_PROMOS", "Detener promociones"),
    ],
)
def test_tapped_buttons_and_rows_become_a_reply(
    name: str, kind: MessageType, reply_id: str, title: str
) -> None:
    message = only_message(name)
    assert message.type is kind
    assert message.reply is not None
    assert (message.reply.id, message.reply.title) == (reply_id, title)
    assert message.answer_text == title
    assert message.context_message_id
    assert message.context_message_id.startswith("wamid.")


def test_order_and_system_messages() -> None:
    order = only_message("order")
    assert order.type is MessageType.order
    assert order.text == "Para el viernes"
    assert order.raw["order"]["product_items"][0]["quantity"] == 2
    system = only_message("system")
    assert system.type is MessageType.system
    assert system.text
    assert "changed from" in system.text
    assert system.sender_phone == USER


@pytest.mark.parametrize("name", ["unsupported", "unknown_type"])
def test_unknown_types_are_stored_raw_not_dropped(name: str) -> None:
    message = only_message(name)
    assert message.type is MessageType.unknown
    assert message.raw == load(name)["entry"][0]["changes"][0]["value"]["messages"][0]
    assert message.sender_phone == USER


def test_a_malformed_known_type_still_becomes_an_unknown_event() -> None:
    body = load("text")
    body["entry"][0]["changes"][0]["value"]["messages"][0]["text"] = "not an object"
    message = parse_webhook(body).messages[0]
    assert message.type is MessageType.unknown
    assert message.raw["text"] == "not an object"
    assert message.sender_phone == USER


def test_business_scoped_user_without_phone_number() -> None:
    message = only_message("bsuid_only")
    assert message.sender_phone is None
    assert message.sender_bsuid == BSUID
    assert message.profile_name == "Sheena Nelson"
    assert message.text == "Does it come in another color?"


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("status_sent", DeliveryStatus.sent),
        ("status_delivered", DeliveryStatus.delivered),
        ("status_read", DeliveryStatus.read),
    ],
)
def test_statuses(name: str, status: DeliveryStatus) -> None:
    parsed = parse_webhook(load(name))
    assert parsed.messages == []
    [update] = parsed.statuses
    assert update.provider is Provider.meta
    assert update.status is status
    assert update.recipient == USER
    assert update.error_code is None
    assert update.at == datetime.fromtimestamp(1750030073, tz=UTC)
    assert update.dedupe_key == f"seen-status:meta:{update.provider_message_id}:{status}"


def test_sent_status_keeps_conversation_and_pricing_raw() -> None:
    [update] = parse_webhook(load("status_sent")).statuses
    assert update.raw["pricing"]["category"] == "utility"
    assert update.raw["conversation"]["origin"]["type"] == "utility"


def test_failed_status_carries_the_error_code_and_title() -> None:
    [update] = parse_webhook(load("status_failed")).statuses
    assert update.status is DeliveryStatus.failed
    assert update.error_code == "131047"
    assert update.error_message == "Re-engagement message"


@pytest.mark.parametrize(
    ("field", "odd"),
    [
        ("errors", [{"code": 131026, "error_data": "odd"}, {"code": 131047, "title": "Re-engagement"}]),
        ("errors", {"code": 131047}),
        ("conversation", "not an object"),
        ("pricing", ["not", "an", "object"]),
        ("biz_opaque_callback_data", 42),
        ("recipient_user_id", {"id": "US.1"}),
    ],
)
def test_a_receipt_with_an_odd_optional_field_still_reports_its_status(field: str, odd: Any) -> None:
    # Acknowledged with a 200, a dropped receipt is never redelivered: the message would stay "sent".
    body = load("status_failed")
    body["entry"][0]["changes"][0]["value"]["statuses"][0][field] = odd
    [update] = parse_webhook(body).statuses
    assert update.status is DeliveryStatus.failed
    assert update.recipient == USER
    assert update.raw[field] == odd
    if field == "errors" and isinstance(odd, list):
        assert (update.error_code, update.error_message) == ("131047", "Re-engagement")


def test_unknown_and_played_statuses() -> None:
    body = load("status_read")
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "played"
    assert parse_webhook(body).statuses[0].status is DeliveryStatus.read
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "deleted_by_user"
    assert parse_webhook(body).statuses[0].status is DeliveryStatus.unknown


def test_value_level_errors_are_reported_per_business_number() -> None:
    parsed = parse_webhook(load("value_errors"))
    assert parsed.messages == []
    assert parsed.statuses == []
    [reported] = parsed.errors
    assert reported.business_number == BUSINESS
    assert reported.error.code == 130429
    assert reported.error.title == "Rate limit hit"
    assert reported.error.details
    assert "too many messages" in reported.error.details


def test_several_entries_and_changes_in_one_post() -> None:
    parsed = parse_webhook(load("multi_entry"))
    assert [(m.business_number, m.text) for m in parsed.messages] == [
        (BUSINESS, "Hola"),
        (BUSINESS, "¿Están abiertos?"),
        ("209876543210987", "Segundo número"),
    ]
    assert parsed.messages[2].profile_name == "José"
    assert [s.status for s in parsed.statuses] == [DeliveryStatus.delivered, DeliveryStatus.read]


@pytest.mark.parametrize(
    "odd",
    [
        "not an entry",
        {"id": 102290129340398, "changes": []},  # a number where Meta writes the account id as a string
        {"id": "1", "changes": "not a list"},
        {"id": "1", "changes": [{"field": "messages", "value": None}]},
        {"id": "1", "changes": ["not a change", {"field": ["messages"], "value": {}}]},
    ],
)
def test_an_odd_entry_or_change_does_not_cost_the_others_their_messages(odd: Any) -> None:
    # A 400 would make Meta redeliver the same body, refused again each time, until it gives up on it.
    body = load("multi_entry")
    body["entry"].insert(1, odd)
    parsed = parse_webhook(body)
    assert len(parsed.messages) == 3
    assert len(parsed.statuses) == 2


def test_a_body_without_entry_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_webhook({"object": "whatsapp_business_account"})


def test_items_without_ids_are_skipped_not_fatal() -> None:
    body = load("text")
    value = body["entry"][0]["changes"][0]["value"]
    value["messages"].append({"type": "text", "text": {"body": "no id"}})
    value["statuses"] = [{"status": "read"}]
    parsed = parse_webhook(body)
    assert len(parsed.messages) == 1
    assert parsed.skipped == 2


@pytest.mark.parametrize(
    ("wa_id", "phone"),
    [
        ("5215512345678", "+525512345678"),  # a Mexican mobile as WhatsApp writes it, in the plan's form
        ("3546123456", "+3546123456"),  # ten digits, Iceland's: not read as a US number
    ],
)
def test_every_wa_id_is_read_with_its_country_code(wa_id: str, phone: str) -> None:
    body = load("text")
    value = body["entry"][0]["changes"][0]["value"]
    value["messages"][0]["from"] = wa_id
    for contact in value.get("contacts", []):
        contact["wa_id"] = wa_id

    [message] = parse_webhook(body, region="US").messages

    assert message.sender_phone == phone


@pytest.mark.parametrize("changes", ["not a list", {"field": "messages"}, None])
def test_an_entry_whose_changes_cannot_be_read_is_counted_as_skipped(changes: Any) -> None:
    # Whatever it held is lost with it: the operator sees it in wapipe_webhooks_received{outcome="malformed"}.
    body = load("multi_entry")
    body["entry"].insert(1, {"id": "1", "changes": changes})
    parsed = parse_webhook(body)
    assert len(parsed.messages) == 3
    assert parsed.skipped == 1
