"""Kapso v2 webhook payloads (tests/data/kapso) -> canonical events with provider ``kapso``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.wire.events import DeliveryStatus, MessageType, Provider
from shared.wire.kapso import parse_delivery

DATA = Path(__file__).resolve().parents[2] / "data" / "kapso"
BUSINESS = "597907523413541"


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_bytes())


def test_received_text() -> None:
    parsed = parse_delivery(load("message_received"), "whatsapp.message.received")
    [message] = parsed.messages
    assert message.provider is Provider.kapso
    assert message.business_number == BUSINESS
    assert message.type is MessageType.text
    assert message.text == "Hola, ¿cómo va mi pedido?"
    assert message.sender_phone == "+573103055424"
    assert message.sender_bsuid == "CO.1502576394655843"
    assert message.profile_name == "María Gómez"
    assert message.dedupe_key == f"seen:kapso:{message.provider_message_id}"
    assert message.raw["conversation"]["id"] == "0e8c4f2a-6a7c-4b2e-9b9e-3f1d2c4b5a60"


def test_received_image_uses_kapso_media_url() -> None:
    [message] = parse_delivery(load("message_received_image"), "whatsapp.message.received").messages
    assert message.type is MessageType.image
    [media] = message.media
    assert media.url == "https://api.kapso.ai/media/1479537139650973"
    assert media.media_id == "1479537139650973"


def test_received_location_is_typed_as_from_meta() -> None:
    [message] = parse_delivery(load("message_received_location"), "whatsapp.message.received").messages
    assert message.type is MessageType.location
    assert message.location is not None
    assert (message.location.latitude, message.location.longitude) == (4.6097, -74.0817)
    assert (message.location.name, message.location.address) == ("Oficina", "Cra 7 #32-16, Bogotá")
    assert message.location.url is None


def test_received_flow_reply_carries_its_answers() -> None:
    payload = load("message_received")
    payload["message"]["type"] = "interactive"
    payload["message"]["interactive"] = {
        "type": "nfm_reply",
        "nfm_reply": {
            "name": "flow",
            "body": "Sent",
            "response_json": '{"flow_token": "t-1", "rating": "5"}',
        },
    }
    [message] = parse_delivery(payload, "whatsapp.message.received").messages
    assert message.flow_reply is not None
    assert message.flow_reply.response == {"flow_token": "t-1", "rating": "5"}


def test_received_without_any_phone_number_uses_the_business_scoped_id() -> None:
    [message] = parse_delivery(load("message_received_no_phone"), "whatsapp.message.received").messages
    assert message.sender_phone is None
    assert message.sender_bsuid == "CO.1502576394655843"
    assert message.text == "Sin número"


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("message_sent", DeliveryStatus.sent),
        ("message_delivered", DeliveryStatus.delivered),
        ("message_read", DeliveryStatus.read),
    ],
)
def test_delivery_events(name: str, status: DeliveryStatus) -> None:
    parsed = parse_delivery(load(name), f"whatsapp.{name.replace('_', '.')}")
    assert parsed.messages == []
    [update] = parsed.statuses
    assert update.provider is Provider.kapso
    assert update.status is status
    assert update.recipient == "+573103055424"
    assert update.error_code is None


def test_failed_event_carries_meta_error() -> None:
    [update] = parse_delivery(load("message_failed"), "whatsapp.message.failed").statuses
    assert update.status is DeliveryStatus.failed
    assert update.error_code == "131050"
    assert update.error_message
    assert "stop receiving" in update.error_message


def test_batch_fans_out_one_event_per_item() -> None:
    parsed = parse_delivery(load("batch_received"), "whatsapp.message.received", batch_header="true")
    assert [m.text for m in parsed.messages] == ["uno", "dos", "uno"]
    # The repeated item keeps its id, so the publisher's per-message dedupe drops it.
    assert parsed.messages[0].dedupe_key == parsed.messages[2].dedupe_key


def test_batch_flag_in_body_is_enough() -> None:
    parsed = parse_delivery(load("batch_received"), "whatsapp.message.received")
    assert len(parsed.messages) == 3


def test_batch_without_data_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="data"):
        parse_delivery({"batch": True, "data": {"oops": 1}}, "whatsapp.message.received")


def test_conversation_events_and_outbound_echoes_are_acknowledged_not_routed() -> None:
    parsed = parse_delivery(load("message_received"), "whatsapp.conversation.created")
    assert parsed.messages == []
    assert parsed.ignored == 1
    echo = load("message_received")
    echo["message"]["kapso"]["direction"] = "outbound"
    parsed = parse_delivery(echo, "whatsapp.message.received")
    assert parsed.messages == []
    assert parsed.ignored == 1


def test_unknown_message_type_is_kept_raw() -> None:
    body = load("message_received")
    body["message"]["type"] = "poll_vote"
    [message] = parse_delivery(body, "whatsapp.message.received").messages
    assert message.type is MessageType.unknown
    assert message.raw["message"]["type"] == "poll_vote"


def test_payload_without_message_id_is_skipped() -> None:
    body = load("message_received")
    del body["message"]["id"]
    parsed = parse_delivery(body, "whatsapp.message.received")
    assert parsed.messages == []
    assert parsed.skipped == 1


def test_a_malformed_conversation_block_does_not_cost_the_message() -> None:
    body = load("message_received")
    body["conversation"] = {"id": ["not", "a", "string"], "phone_number": {"bad": True}}
    [message] = parse_delivery(body, "whatsapp.message.received").messages
    assert message.text == "Hola, ¿cómo va mi pedido?"
    assert message.sender_phone == "+573103055424"  # the message's own sender still identifies them
    assert message.raw["conversation"]["phone_number"] == {"bad": True}  # kept as received


def _button_tap() -> dict[str, Any]:
    body = load("message_received")
    tap = {"type": "button_reply", "button_reply": {"id": "opt_1", "title": "Sí"}}
    body["message"].update(type="interactive", interactive=tap)
    del body["message"]["text"]
    return body


def test_a_kapso_content_object_does_not_cost_the_button_tap() -> None:
    # Kapso documents message.kapso.content as possibly the whole interactive payload, an object.
    body = _button_tap()
    body["message"]["kapso"]["content"] = body["message"]["interactive"]
    [message] = parse_delivery(body, "whatsapp.message.received").messages
    assert message.type is MessageType.interactive
    assert message.reply is not None
    assert message.reply.id == "opt_1"
    assert message.raw["message"]["kapso"]["content"]["button_reply"]["id"] == "opt_1"


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("kapso", "has_media", "maybe"),
        ("kapso", "media_data", ["not", "an", "object"]),
        ("kapso", "statuses", "none yet"),
        ("kapso", "direction", {"odd": True}),
        ("message", "kapso", "not an object"),
        ("body", "is_new_conversation", "maybe"),
        ("body", "conversation", ["not", "an", "object"]),
    ],
)
def test_fields_we_do_not_need_may_have_any_shape(where: str, key: str, value: Any) -> None:
    body = load("message_received")
    target = {"body": body, "message": body["message"], "kapso": body["message"]["kapso"]}[where]
    target[key] = value
    parsed = parse_delivery(body, "whatsapp.message.received")
    [message] = parsed.messages
    assert (parsed.skipped, message.text) == (0, "Hola, ¿cómo va mi pedido?")


def test_a_message_whose_own_fields_are_malformed_is_kept_as_unknown_not_dropped() -> None:
    # As on the Meta path: stored and acknowledged with its raw JSON rather than lost after a 200.
    body = load("message_received")
    body["message"]["from"] = 573103055424
    body["message"]["timestamp"] = ["1761000000"]
    parsed = parse_delivery(body, "whatsapp.message.received")
    [message] = parsed.messages
    assert parsed.skipped == 0
    assert message.type is MessageType.unknown
    assert message.business_number == BUSINESS
    assert message.sender_phone == "+573103055424"  # from the conversation block
    assert message.raw["message"]["from"] == 573103055424


def test_an_empty_message_id_is_skipped() -> None:
    body = load("message_received")
    body["message"]["id"] = ""
    parsed = parse_delivery(body, "whatsapp.message.received")
    assert (parsed.messages, parsed.skipped) == ([], 1)


def test_a_status_with_malformed_errors_keeps_the_well_formed_ones() -> None:
    body = load("message_failed")
    body["message"]["errors"] = [{"code": "not a number"}, "oops"]
    body["message"]["kapso"]["statuses"].insert(0, "not a status")
    [update] = parse_delivery(body, "whatsapp.message.failed").statuses
    assert update.status is DeliveryStatus.failed
    assert update.error_code == "131050"  # from the latest failed status


@pytest.mark.parametrize("errors", [5, "rate limited", {"code": 131050}, None])
def test_a_failed_status_whose_errors_are_not_a_list_is_still_a_failure(errors: Any) -> None:
    body = load("message_failed")
    for status in body["message"]["kapso"]["statuses"]:
        status["errors"] = errors
    [update] = parse_delivery(body, "whatsapp.message.failed").statuses
    assert update.status is DeliveryStatus.failed
    assert update.error_code is None


def test_the_signed_batch_type_wins_over_the_unsigned_header() -> None:
    # The batch's own "type" is signed; X-Webhook-Event is not.
    parsed = parse_delivery(load("batch_received"), "whatsapp.message.failed", batch_header="true")
    assert [m.text for m in parsed.messages] == ["uno", "dos", "uno"]
    assert parsed.statuses == []


def test_a_batch_without_the_header_takes_its_type_from_the_body() -> None:
    parsed = parse_delivery(load("batch_received"), None)
    assert len(parsed.messages) == 3


def test_a_batch_naming_no_event_anywhere_is_received_messages() -> None:
    # Kapso buffers whatsapp.message.received only (docs.kapso.ai/docs/platform/webhooks/advanced).
    body = load("batch_received")
    del body["type"]
    assert len(parse_delivery(body, None, batch_header="true").messages) == 3


def test_an_event_named_in_the_body_wins_over_the_header() -> None:
    body = load("message_delivered")
    body["type"] = "whatsapp.message.delivered"
    [update] = parse_delivery(body, "whatsapp.message.failed").statuses
    assert update.status is DeliveryStatus.delivered


@pytest.mark.parametrize("name", ["message_sent", "message_delivered", "message_read"])
def test_a_single_delivery_event_replayed_with_another_header_keeps_its_signed_status(name: str) -> None:
    # A single event names itself only in the unsigned header; message.kapso.status is signed.
    [update] = parse_delivery(load(name), "whatsapp.message.failed").statuses
    assert update.status.value == name.removeprefix("message_")


def test_a_delivery_event_without_a_signed_status_takes_the_headers() -> None:
    body = load("message_delivered")
    body["message"]["kapso"]["status"] = "processing"
    [update] = parse_delivery(body, "whatsapp.message.delivered").statuses
    assert update.status is DeliveryStatus.delivered


def test_a_single_event_named_nowhere_is_an_error() -> None:
    with pytest.raises(ValueError, match="event type is missing"):
        parse_delivery(load("message_received"), None)
    with pytest.raises(ValueError, match="event type is missing"):
        parse_delivery(load("message_received"), "")
