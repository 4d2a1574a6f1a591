"""GET/POST /webhooks/meta against real Redis: verification, signatures over raw bytes, atomic enqueueing."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from ingress import create_app
from shared.arrivals import line_of
from shared.providers.meta.signature import sign
from shared.settings import load_settings
from shared.wire.events import InboundMessage
from shared.wire.meta import parse_webhook

DATA = Path(__file__).resolve().parents[1] / "data" / "meta"
SECRET = "meta-app-secret"
VERIFY_TOKEN = "verify-me-please"
URL = "/webhooks/meta"


@pytest.fixture
def client(redis_client: redis.Redis) -> FlaskClient:
    settings = load_settings(meta_app_secret=SECRET, meta_verify_token=VERIFY_TOKEN)
    return create_app(settings).test_client()


def raw(name: str) -> bytes:
    return (DATA / f"{name}.json").read_bytes()


def post(client: FlaskClient, body: bytes, signature: str | None = "sign") -> Any:
    headers = {}
    if signature == "sign":
        headers["X-Hub-Signature-256"] = sign(SECRET, body)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return client.post(URL, data=body, content_type="application/json", headers=headers)


def queued(r: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The ``event`` kwarg of every Celery message on the queue, oldest first."""
    task = {"inbound": "inbound.route", "status": "status.apply"}[queue]
    events = []
    for message in reversed(r.lrange(queue, 0, -1)):
        envelope = json.loads(message)
        assert envelope["headers"]["task"] == task
        _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        events.append(kwargs["event"])
    return events


def test_verification_echoes_the_challenge(client: FlaskClient) -> None:
    response = client.get(
        URL,
        query_string={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.data == b"1158201444"


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.challenge": "1"},
    ],
)
def test_verification_refuses_anything_else(client: FlaskClient, query: dict[str, str]) -> None:
    response = client.get(URL, query_string=query)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "verification_failed"
    assert response.mimetype == "application/json"


def test_verification_without_a_configured_token_is_refused(redis_client: redis.Redis) -> None:
    app = create_app(load_settings(meta_app_secret=SECRET))
    response = app.test_client().get(URL, query_string={"hub.mode": "subscribe", "hub.verify_token": ""})
    assert response.status_code == 403


def test_text_message_is_enqueued_as_its_canonical_event(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = raw("text")
    response = post(client, body)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    [event] = queued(redis_client, "inbound")
    assert event == parse_webhook(json.loads(body)).messages[0].model_dump(mode="json")
    assert event["text"] == "Café para mañana ¿sí? 😀"
    assert redis_client.llen("status") == 0


def test_several_entries_and_changes_go_out_in_one_post(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    response = post(client, raw("multi_entry"))
    assert response.status_code == 200
    assert [e["text"] for e in queued(redis_client, "inbound")] == [
        "Hola",
        "¿Están abiertos?",
        "Segundo número",
    ]
    assert [e["status"] for e in queued(redis_client, "status")] == ["delivered", "read"]


def test_the_messages_of_one_post_join_their_conversations_arrival_lines_in_order(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    assert post(client, raw("multi_entry")).status_code == 200
    events = [InboundMessage.model_validate(event) for event in queued(redis_client, "inbound")]
    lines = {line_of(event) for event in events}
    in_lines = {line: [entry.decode() for entry in redis_client.zrange(line, 0, -1)] for line in lines}
    for line, entries in in_lines.items():
        assert entries == [event.dedupe_key for event in events if line_of(event) == line]
    assert sorted(len(entries) for entries in in_lines.values()) == [1, 2]  # "Hola", then its follow-up


def test_an_odd_entry_does_not_cost_the_other_entries_their_messages(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = json.loads(raw("multi_entry"))
    body["entry"].append({"id": 102290129340398, "changes": [{"field": "messages", "value": None}]})
    assert post(client, json.dumps(body).encode()).status_code == 200
    assert len(queued(redis_client, "inbound")) == 3
    assert len(queued(redis_client, "status")) == 2


def test_failed_status_goes_to_the_status_queue_with_its_error(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    assert post(client, raw("status_failed")).status_code == 200
    [event] = queued(redis_client, "status")
    assert (event["status"], event["error_code"]) == ("failed", "131047")
    assert redis_client.llen("inbound") == 0


def test_unknown_type_is_acknowledged_and_stored_raw(client: FlaskClient, redis_client: redis.Redis) -> None:
    assert post(client, raw("unknown_type")).status_code == 200
    [event] = queued(redis_client, "inbound")
    assert event["type"] == "unknown"
    assert event["raw"]["brand_new_field"] == {"nested": True}


def test_value_errors_are_acknowledged_without_jobs(client: FlaskClient, redis_client: redis.Redis) -> None:
    assert post(client, raw("value_errors")).status_code == 200
    assert redis_client.llen("inbound") == 0
    assert redis_client.llen("status") == 0


def test_the_same_wamid_twice_makes_one_job(client: FlaskClient, redis_client: redis.Redis) -> None:
    body = raw("image")
    assert post(client, body).status_code == 200
    assert post(client, body).status_code == 200
    doubled = json.loads(body)
    doubled["entry"].append(doubled["entry"][0])
    assert post(client, json.dumps(doubled).encode()).status_code == 200
    assert len(queued(redis_client, "inbound")) == 1


@pytest.mark.parametrize("signature", [None, "", "sha256=" + "0" * 64, "deadbeef"])
def test_forged_or_missing_signature_is_403_and_enqueues_nothing(
    client: FlaskClient, redis_client: redis.Redis, signature: str | None
) -> None:
    response = post(client, raw("text"), signature=signature)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] in {"signature_missing", "signature_invalid"}
    assert redis_client.llen("inbound") == 0


def test_signature_of_another_body_is_refused(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = post(client, raw("text"), signature=sign(SECRET, raw("image")))
    assert response.status_code == 403
    assert redis_client.llen("inbound") == 0


def test_signature_is_over_the_raw_escaped_bytes(client: FlaskClient, redis_client: redis.Redis) -> None:
    body = raw("text")
    assert b"\\u00e9" in body
    reserialised = json.dumps(json.loads(body), ensure_ascii=False).encode()
    # Signed as Meta signs (escaped bytes), sent re-serialised: the bytes differ, so it must fail...
    assert post(client, reserialised, signature=sign(SECRET, body)).status_code == 403
    assert redis_client.llen("inbound") == 0
    # ...and the exact bytes Meta sent pass.
    assert post(client, body, signature=sign(SECRET, body)).status_code == 200
    assert redis_client.llen("inbound") == 1


def test_without_an_app_secret_nothing_is_accepted(redis_client: redis.Redis) -> None:
    client = create_app(load_settings(meta_verify_token=VERIFY_TOKEN)).test_client()
    body = raw("text")
    response = client.post(URL, data=body, headers={"X-Hub-Signature-256": sign("", body)})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "signature_unverifiable"
    assert redis_client.llen("inbound") == 0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "malformed_payload"),
        (b'{"object": "x"}', "malformed_payload"),
    ],
)
def test_malformed_bodies_are_400(
    client: FlaskClient, redis_client: redis.Redis, body: bytes, code: str
) -> None:
    response = post(client, body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code
    assert redis_client.llen("inbound") == 0


def test_broker_down_is_503_so_meta_retries(redis_client: redis.Redis) -> None:
    settings = load_settings(meta_app_secret=SECRET, redis_url="redis://127.0.0.1:1/0")
    response = post(create_app(settings).test_client(), raw("text"))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "queue_unavailable"
