"""Receipts carry our own message id as the send named it, so a send whose answer was lost can be settled:
Meta's ``biz_opaque_callback_data`` (also in the raw Meta statuses Kapso keeps), and the query parameter of
Twilio's StatusCallback URL. Anything else there (another system's data, junk) names nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from shared.providers.base import OutboundMessage
from shared.providers.meta.client import build_payload
from shared.wire import twilio
from shared.wire.events import our_id_from_tag, our_id_tag
from shared.wire.kapso import parse_delivery
from shared.wire.meta import parse_webhook

DATA = Path(__file__).resolve().parents[2] / "data"


def load(path: str) -> Any:
    return json.loads((DATA / path).read_text())


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (our_id_tag(42), 42),
        ("wapipe:9223372036854775807", None),  # more digits than a bigint id has
        ("wapipe:0", None),
        ("wapipe:-3", None),
        ("wapipe:4 2", None),
        ("wapipe:\u0664\u0662", None),  # Arabic-Indic digits are digits to str.isdigit, not to us
        ("42", None),
        ("order-42", None),
        (None, None),
        (42, None),
    ],
)
def test_only_our_tag_names_a_message(tag: object, expected: int | None) -> None:
    assert our_id_from_tag(tag) == expected


def test_a_cloud_api_send_names_our_message() -> None:
    body = build_payload(OutboundMessage(id=7, to="+573103055424", text="hi"))
    assert body["biz_opaque_callback_data"] == "wapipe:7"


def test_a_meta_receipt_carries_the_id_its_send_named() -> None:
    body = load("meta/status_delivered.json")
    [status] = body["entry"][0]["changes"][0]["value"]["statuses"]
    assert parse_webhook(body).statuses[0].our_message_id is None
    status["biz_opaque_callback_data"] = "wapipe:7"
    assert parse_webhook(body).statuses[0].our_message_id == 7


def test_a_kapso_receipt_carries_the_id_from_its_meta_statuses() -> None:
    body = load("kapso/message_delivered.json")
    assert parse_delivery(body, "whatsapp.message.delivered").statuses[0].our_message_id is None
    body["message"]["kapso"]["statuses"][-1]["biz_opaque_callback_data"] = "wapipe:7"
    assert parse_delivery(body, "whatsapp.message.delivered").statuses[0].our_message_id == 7


def test_a_twilio_receipt_carries_the_id_of_its_callback_url() -> None:
    params = dict(parse_qsl((DATA / "twilio" / "status_delivered.txt").read_text()))
    assert twilio.parse(params).our_message_id is None
    assert twilio.parse(params, our_message_id="7").our_message_id == 7
    assert twilio.parse(params, our_message_id="7x").our_message_id is None
