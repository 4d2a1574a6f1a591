"""POST /webhooks/kapso against real Redis: signature, batch fan-out, per-message and per-delivery dedupe."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from ingress import create_app
from shared.providers.kapso.signature import sign
from shared.settings import load_settings

DATA = Path(__file__).resolve().parents[1] / "data" / "kapso"
SECRET = "kapso-webhook-secret"
URL = "/webhooks/kapso"


@pytest.fixture
def client(redis_client: redis.Redis) -> FlaskClient:
    return create_app(load_settings(kapso_webhook_secret=SECRET)).test_client()


def raw(name: str) -> bytes:
    return (DATA / f"{name}.json").read_bytes()


def post(
    client: FlaskClient,
    body: bytes,
    event: str,
    *,
    signature: str | None = "sign",
    batch: bool = False,
    idempotency_key: str | None = None,
) -> Any:
    headers = {"X-Webhook-Event": event}
    if signature == "sign":
        headers["X-Webhook-Signature"] = sign(SECRET, body)
    elif signature is not None:
        headers["X-Webhook-Signature"] = signature
    if batch:
        headers["X-Webhook-Batch"] = "true"
    if idempotency_key:
        headers["X-Idempotency-Key"] = idempotency_key
    return client.post(URL, data=body, content_type="application/json", headers=headers)


def queued(r: redis.Redis, queue: str) -> list[dict[str, Any]]:
    events = []
    for message in reversed(r.lrange(queue, 0, -1)):
        _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(message)["body"]))
        events.append(kwargs["event"])
    return events


def test_received_message_is_enqueued(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = post(client, raw("message_received"), "whatsapp.message.received", idempotency_key="evt-1")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    [event] = queued(redis_client, "inbound")
    assert event["provider"] == "kapso"
    assert event["business_number"] == "597907523413541"
    assert event["sender_phone"] == "+573103055424"
    assert event["text"] == "Hola, ¿cómo va mi pedido?"


def test_batch_of_three_with_one_duplicate_makes_two_jobs(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    response = post(
        client, raw("batch_received"), "whatsapp.message.received", batch=True, idempotency_key="b-1"
    )
    assert response.status_code == 200
    assert [e["text"] for e in queued(redis_client, "inbound")] == ["uno", "dos"]


def test_a_redelivery_with_the_same_idempotency_key_is_acknowledged_only(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = raw("message_received")
    assert post(client, body, "whatsapp.message.received", idempotency_key="same").status_code == 200
    second = post(client, body, "whatsapp.message.received", idempotency_key="same")
    assert second.status_code == 200
    assert second.get_json() == {"status": "ok", "duplicate": True}
    assert len(queued(redis_client, "inbound")) == 1
    # A new delivery key with an already-seen message is still deduped per message.
    assert post(client, body, "whatsapp.message.received", idempotency_key="other").status_code == 200
    assert len(queued(redis_client, "inbound")) == 1


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("message_sent", "sent"),
        ("message_delivered", "delivered"),
        ("message_read", "read"),
        ("message_failed", "failed"),
    ],
)
def test_delivery_events_go_to_the_status_queue(
    client: FlaskClient, redis_client: redis.Redis, name: str, status: str
) -> None:
    assert post(client, raw(name), f"whatsapp.{name.replace('_', '.')}").status_code == 200
    [event] = queued(redis_client, "status")
    assert event["provider"] == "kapso"
    assert event["status"] == status
    assert redis_client.llen("inbound") == 0


def test_conversation_events_are_acknowledged_without_jobs(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    assert post(client, raw("message_received"), "whatsapp.conversation.created").status_code == 200
    assert redis_client.llen("inbound") == 0


@pytest.mark.parametrize("signature", [None, "", "0" * 64, "sha256=abc"])
def test_forged_signature_is_403_and_enqueues_nothing(
    client: FlaskClient, redis_client: redis.Redis, signature: str | None
) -> None:
    response = post(
        client, raw("batch_received"), "whatsapp.message.received", signature=signature, batch=True
    )
    assert response.status_code == 403
    assert redis_client.llen("inbound") == 0
    assert not redis_client.keys("seen*")


def test_a_forged_request_does_not_burn_the_idempotency_key(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = raw("message_received")
    assert (
        post(client, body, "whatsapp.message.received", signature="0" * 64, idempotency_key="k").status_code
        == 403
    )
    assert post(client, body, "whatsapp.message.received", idempotency_key="k").status_code == 200
    assert len(queued(redis_client, "inbound")) == 1


def test_a_replayed_delivery_with_chosen_keys_cannot_suppress_the_real_ones(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    # X-Idempotency-Key is not signed: whoever holds one captured delivery can replay it under the keys
    # of deliveries still to come. The real delivery carrying such a key must still be enqueued.
    captured = raw("message_received")
    for key in ("future-1", "future-2"):
        assert post(client, captured, "whatsapp.message.received", idempotency_key=key).status_code == 200
    real_body = raw("message_received_image")
    real = post(client, real_body, "whatsapp.message.received", idempotency_key="future-1")
    assert real.status_code == 200
    assert real.get_json() == {"status": "ok"}
    assert [e["type"] for e in queued(redis_client, "inbound")] == ["text", "image"]


def test_without_a_secret_nothing_is_accepted(redis_client: redis.Redis) -> None:
    client = create_app(load_settings()).test_client()
    body = raw("message_received")
    response = client.post(URL, data=body, headers={"X-Webhook-Signature": sign("", body)})
    assert response.status_code == 403
    assert redis_client.llen("inbound") == 0


@pytest.mark.parametrize("body", [b"{oops", b"[]", b'{"batch": true, "data": "x"}'])
def test_malformed_bodies_are_400(client: FlaskClient, redis_client: redis.Redis, body: bytes) -> None:
    response = post(client, body, "whatsapp.message.received")
    assert response.status_code == 400
    assert redis_client.llen("inbound") == 0


def test_a_delivery_that_got_503_is_processed_on_retry(redis_client: redis.Redis) -> None:
    body = raw("message_received")
    down = create_app(load_settings(kapso_webhook_secret=SECRET, redis_url="redis://127.0.0.1:1/0"))
    assert post(down.test_client(), body, "whatsapp.message.received", idempotency_key="r").status_code == 503
    up = create_app(load_settings(kapso_webhook_secret=SECRET)).test_client()
    assert post(up, body, "whatsapp.message.received", idempotency_key="r").status_code == 200
    assert len(queued(redis_client, "inbound")) == 1


def test_a_button_tap_whose_kapso_content_is_an_object_is_enqueued(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    # Kapso documents message.kapso.content as possibly the whole interactive payload: the tap a menu
    # flow waits for must not be acked with a 200 and dropped.
    body = json.loads(raw("message_received"))
    tap = {"type": "button_reply", "button_reply": {"id": "opt_1", "title": "Sí"}}
    body["message"].update(type="interactive", interactive=tap)
    body["message"]["kapso"]["content"] = tap
    del body["message"]["text"]
    response = post(client, json.dumps(body).encode(), "whatsapp.message.received")
    assert response.status_code == 200
    [event] = queued(redis_client, "inbound")
    assert (event["type"], event["reply"]["id"]) == ("interactive", "opt_1")


def test_a_failed_status_whose_errors_are_not_a_list_is_a_200_not_a_500(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = json.loads(raw("message_failed"))
    body["message"]["kapso"]["statuses"][-1]["errors"] = 5
    response = post(client, json.dumps(body).encode(), "whatsapp.message.failed")
    assert response.status_code == 200
    [event] = queued(redis_client, "status")
    assert event["status"] == "failed"


def test_a_batch_without_the_event_header_is_enqueued_by_its_signed_type(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = raw("batch_received")
    headers = {"X-Webhook-Signature": sign(SECRET, body), "X-Webhook-Batch": "true"}
    response = client.post(URL, data=body, content_type="application/json", headers=headers)
    assert response.status_code == 200
    assert [e["text"] for e in queued(redis_client, "inbound")] == ["uno", "dos"]


def test_a_replay_with_another_event_header_cannot_change_what_the_body_says(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = json.loads(raw("message_delivered"))
    body["type"] = "whatsapp.message.delivered"
    signed = json.dumps(body).encode()
    assert post(client, signed, "whatsapp.message.delivered").status_code == 200
    # The same signed body again, with the unsigned header claiming the message failed.
    assert post(client, signed, "whatsapp.message.failed").status_code == 200
    assert [e["status"] for e in queued(redis_client, "status")] == ["delivered"]


def test_a_delivery_naming_no_event_is_a_400_not_a_silent_200(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = raw("message_received")
    response = client.post(
        URL, data=body, content_type="application/json", headers={"X-Webhook-Signature": sign(SECRET, body)}
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed_payload"
    assert "X-Webhook-Event" in response.get_json()["error"]["message"]
    assert redis_client.llen("inbound") == 0
