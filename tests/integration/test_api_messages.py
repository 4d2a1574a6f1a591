"""The notify API through the real Flask app, PostgreSQL and Redis: every outbound type accepted and stored
once with its job queued; WhatsApp limits, bad numbers and types the provider cannot send refused with a
422 naming the field, before anything is stored; idempotency keys; the legacy endpoint's shapes."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import redis
from flask.testing import FlaskClient

from ingress import create_app
from ingress.api.group_store import GroupStore
from ingress.json_body import MAX_DEPTH, MAX_NUMBER_DIGITS
from shared.db import messages, outbound_api, pool
from shared.db.errors import Unavailable
from shared.settings import get_settings, load_settings
from tests.fakes.twilio_api import ACCOUNT_SID, AUTH_TOKEN, WHATSAPP_NUMBER
from tests.integration.test_inbound_routing import queued

KEY = "notify-api-key"
AUTH = {"X-API-Key": KEY}
CO_MOBILE = "+573103055424"


@pytest.fixture
def client(db: psycopg.Connection, redis_client: redis.Redis) -> FlaskClient:
    # Console provider (no credentials): it sends every type.
    return create_app(load_settings(api_keys=KEY, default_region="CO")).test_client()


def post(client: FlaskClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post("/api/v1/messages", json=body, headers={**AUTH, **(headers or {})})


def stored(db: psycopg.Connection) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT m.*, c.phone FROM messages m JOIN contacts c ON c.id = m.contact_id ORDER BY m.id"
    ).fetchall()


BUTTONS = {
    "kind": "buttons",
    "body": "Ticket #42 is assigned to you. Accept it?",
    "header": "New ticket",
    "footer": "Helpdesk",
    "buttons": [{"id": "accept", "title": "Accept"}, {"id": "decline", "title": "Decline"}],
}
LIST = {
    "kind": "list",
    "body": "Pick a slot",
    "button_text": "Slots",
    "sections": [
        {"title": "Morning", "rows": [{"id": "m9", "title": "9:00", "description": "Front desk"}]},
        {"title": "Afternoon", "rows": [{"id": "a3", "title": "15:00"}]},
    ],
}

ACCEPTED = [
    ({"type": "text", "text": "Ticket #42 assigned to you"}, "text", "Ticket #42 assigned to you", {}),
    (
        {"type": "image", "media": {"url": "https://cdn.example.com/a.jpg", "caption": "The part"}},
        "media",
        "The part",
        {
            "type": "media",
            "media": {"kind": "image", "url": "https://cdn.example.com/a.jpg", "caption": "The part"},
        },
    ),
    (
        {
            "type": "media",
            "media": {"kind": "document", "url": "https://cdn.example.com/r.pdf", "filename": "report.pdf"},
        },
        "media",
        None,
        {
            "type": "media",
            "media": {"kind": "document", "url": "https://cdn.example.com/r.pdf", "filename": "report.pdf"},
        },
    ),
    (
        {"type": "interactive", "interactive": BUTTONS},
        "interactive",
        "New ticket\nTicket #42 is assigned to you. Accept it?\n1. Accept\n2. Decline\nHelpdesk",
        None,
    ),
    ({"type": "interactive", "interactive": LIST}, "interactive", "Pick a slot\n1. 9:00\n2. 15:00", None),
    (
        {"type": "template", "template": {"name": "ticket_assigned", "language": "es", "variables": ["42"]}},
        "template",
        None,
        {"type": "template", "template": {"name": "ticket_assigned", "language": "es", "variables": ["42"]}},
    ),
    (
        {"type": "reaction", "reaction": {"message_id": "wamid.HBgL", "emoji": "👍"}},
        "reaction",
        "👍",
        {"type": "reaction", "reaction": {"message_id": "wamid.HBgL", "emoji": "👍"}},
    ),
]


@pytest.mark.parametrize(("content", "kind", "body", "payload"), ACCEPTED, ids=lambda v: None)
def test_each_type_is_accepted_stored_queued_and_enqueued(
    client: FlaskClient, db, redis_client, content: dict, kind: str, body: str | None, payload: dict | None
) -> None:
    response = post(client, {"to": "310 305 5424", **content})

    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert answer == {"id": answer["id"], "status": "queued"}
    assert response.headers["Location"] == f"/api/v1/messages/{answer['id']}"
    [row] = stored(db)
    assert (row["id"], row["direction"], row["status"], row["type"]) == (answer["id"], "out", "queued", kind)
    assert row["phone"] == CO_MOBILE  # normalised with WAPIPE_DEFAULT_REGION=CO
    assert row["body"] == body
    if payload is not None:
        assert row["payload"] == payload
    assert row["idempotency_key"].startswith("api@")
    events = db.execute("SELECT status FROM message_events WHERE message_id = %s", (row["id"],)).fetchall()
    assert [e["status"] for e in events] == ["queued"]
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": row["id"]})]


def test_interactive_payload_is_what_the_providers_read(client: FlaskClient, db) -> None:
    from shared.providers.base import OutboundMessage
    from shared.providers.meta.client import build_payload

    post(client, {"to": CO_MOBILE, "type": "interactive", "interactive": LIST})
    [row] = stored(db)
    message = OutboundMessage.from_record(
        id=row["id"],
        to=row["phone"],
        type=row["type"],
        body=row["body"],
        payload=row["payload"],
        from_number=None,
    )
    graph = build_payload(message)
    assert graph["interactive"]["action"]["button"] == "Slots"
    assert [s["title"] for s in graph["interactive"]["action"]["sections"]] == ["Morning", "Afternoon"]


REFUSED = [
    ({"type": "text", "text": "x" * 4097}, "text", "at most 4096 characters"),
    ({"type": "text", "text": "   "}, "text", "must not be blank"),
    ({"type": "text"}, "text", "required for type text"),
    ({"type": "text", "text": "hi", "media": {"url": "https://a.example/x.jpg"}}, "media", "not allowed"),
    ({"type": "sms", "text": "hi"}, "type", "Input should be"),
    ({"type": "text", "txt": "hi"}, "txt", "unknown field"),
    ({"type": "image", "media": {"url": "http://a.example/x.jpg"}}, "media.url", "https://"),
    (
        {"type": "image", "media": {"url": "https://a.example/x.jpg", "caption": "c" * 1025}},
        "media.caption",
        "1024",
    ),
    (
        {"type": "audio", "media": {"url": "https://a.example/x.ogg", "caption": "hi"}},
        "media.caption",
        "no caption",
    ),
    ({"type": "media", "media": {"url": "https://a.example/x.jpg"}}, "media.kind", "one of image"),
    (
        {"type": "interactive", "interactive": {**BUTTONS, "buttons": []}},
        "interactive.buttons",
        "1 to 3; got 0",
    ),
    (
        {
            "type": "interactive",
            "interactive": {**BUTTONS, "buttons": [{"id": str(i), "title": f"B{i}"} for i in range(4)]},
        },
        "interactive.buttons",
        "1 to 3; got 4",
    ),
    (
        {
            "type": "interactive",
            "interactive": {**BUTTONS, "buttons": [{"id": "a", "title": "Twenty-one characters"}]},
        },
        "interactive.buttons[0].title",
        "at most 20 characters (WhatsApp's limit); this one has 21",
    ),
    (
        {
            "type": "interactive",
            "interactive": {**BUTTONS, "buttons": [{"id": "a", "title": "A"}, {"id": "a", "title": "B"}]},
        },
        "interactive.buttons",
        "'a' appears twice",
    ),
    (
        {"type": "interactive", "interactive": {**BUTTONS, "header": "h" * 61}},
        "interactive.header",
        "at most 60",
    ),
    (
        {"type": "interactive", "interactive": {**BUTTONS, "footer": "f" * 61}},
        "interactive.footer",
        "at most 60",
    ),
    (
        {"type": "interactive", "interactive": {**BUTTONS, "body": "b" * 1025}},
        "interactive.body",
        "at most 1024",
    ),
    (
        {
            "type": "interactive",
            "interactive": {
                **LIST,
                "sections": [
                    {"title": f"S{s}", "rows": [{"id": f"{s}-{r}", "title": "r"} for r in range(4)]}
                    for s in range(3)
                ],
            },
        },
        "interactive.sections",
        "at most 10 rows in all; got 12",
    ),
    (
        {
            "type": "interactive",
            "interactive": {**LIST, "sections": [{"rows": [{"id": "1", "title": "t" * 25}]}]},
        },
        "interactive.sections[0].rows[0].title",
        "at most 24",
    ),
    (
        {
            "type": "interactive",
            "interactive": {
                **LIST,
                "sections": [{"rows": [{"id": "1", "title": "t", "description": "d" * 73}]}],
            },
        },
        "interactive.sections[0].rows[0].description",
        "at most 72",
    ),
    (
        {
            "type": "interactive",
            "interactive": {**LIST, "sections": [{"title": "s" * 25, "rows": [{"id": "1", "title": "t"}]}]},
        },
        "interactive.sections[0].title",
        "at most 24",
    ),
    (
        {"type": "interactive", "interactive": {**LIST, "button_text": "b" * 21}},
        "interactive.button_text",
        "at most 20",
    ),
    (
        {
            "type": "interactive",
            "interactive": {
                **LIST,
                "sections": [{"rows": [{"id": "1", "title": "a"}]}, {"rows": [{"id": "2", "title": "b"}]}],
            },
        },
        "interactive.sections",
        "needs a title when there are several",
    ),
    (
        {"type": "template", "template": {"name": "Ticket Assigned", "language": "es"}},
        "template.name",
        "template's name",
    ),
    (
        {"type": "template", "template": {"name": "ticket", "language": "spanish"}},
        "template.language",
        "language code",
    ),
    (
        {"type": "template", "template": {"name": "ticket", "language": "es", "variables": ["42", " "]}},
        "template.variables[1]",
        "blank",
    ),
    (
        {"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "ok"}},
        "reaction.emoji",
        "single emoji",
    ),
    ({"type": "reaction", "reaction": {"emoji": "👍"}}, "reaction.message_id", "required"),
    # PostgreSQL cannot store U+0000: a 422 naming the field, not a 500 when the row is written.
    ({"type": "text", "text": "a\u0000b"}, "text", "NUL character"),
    ({"type": "image", "media": {"url": "https://a.example/x\u0000.jpg"}}, "media.url", "NUL character"),
    (
        {"type": "template", "template": {"name": "t", "language": "es", "variables": ["4\u00002"]}},
        "template.variables[0]",
        "NUL character",
    ),
    ({"type": "text", "text": "hi", "idempotency_key": "k\u0000"}, "idempotency_key", "NUL character"),
    # A variable's name too: it is stored in the payload (jsonb) as much as its value. The field is the
    # variables object, not the name itself, which an error should not echo back.
    (
        {"type": "template", "template": {"name": "t", "language": "es", "variables": {"a\u0000": "x"}}},
        "template.variables",
        "NUL character",
    ),
    # Nor can UTF-8 encode a lone surrogate half (JSON's "\ud800"): a 422, not a 500 when it is hashed.
    ({"type": "text", "text": "\ud800"}, "text", "lone surrogate"),
    ({"type": "image", "media": {"url": "https://a.example/\udfff.jpg"}}, "media.url", "lone surrogate"),
    (
        {"type": "template", "template": {"name": "t", "language": "es", "variables": ["x\ud800"]}},
        "template.variables[0]",
        "lone surrogate",
    ),
    (
        {"type": "template", "template": {"name": "t", "language": "es", "variables": {"\udc00": "x"}}},
        "template.variables",
        "lone surrogate",
    ),
    ({"type": "reaction", "reaction": {"message_id": "w", "emoji": "\ud83d"}}, "reaction.emoji", "surrogate"),
]


@pytest.mark.parametrize(("content", "field", "says"), REFUSED, ids=[r[1] + ":" + r[2][:20] for r in REFUSED])
def test_whatsapp_limits_are_a_422_naming_the_field_and_nothing_is_stored(
    client: FlaskClient, db, redis_client, content: dict, field: str, says: str
) -> None:
    response = post(client, {"to": CO_MOBILE, **content})

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert says in error["message"]
    assert stored(db) == []
    assert queued(redis_client, "notify") == []


@pytest.mark.parametrize(
    ("to", "says"),
    [
        ("12", "not a valid phone number"),
        ("+1 555 123 4567", "not a valid phone number"),
        ("call me", "not a phone number"),
    ],
)
def test_an_invalid_number_is_a_422_naming_to(client: FlaskClient, db, to: str, says: str) -> None:
    response = post(client, {"to": to, "type": "text", "text": "hi"})

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == ("invalid_phone", "to")
    assert error["message"].startswith("to: ")
    assert says in error["message"]
    assert stored(db) == []


def test_numbers_are_read_with_the_default_region(db, redis_client) -> None:
    us = create_app(load_settings(api_keys=KEY, default_region="US")).test_client()
    assert post(us, {"to": "(415) 555-0123", "type": "text", "text": "hi"}).status_code == 202
    assert post(us, {"to": "+57 310 305 5424", "type": "text", "text": "hi"}).status_code == 202
    assert [row["phone"] for row in stored(db)] == ["+14155550123", CO_MOBILE]


def test_a_type_the_active_provider_cannot_send_is_a_422(db, redis_client) -> None:
    settings = load_settings(
        api_keys=KEY,
        provider="twilio",
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_whatsapp_number=WHATSAPP_NUMBER,
    )
    twilio = create_app(settings).test_client()
    response = post(
        twilio, {"to": "+14155550123", "type": "reaction", "reaction": {"message_id": "SM1", "emoji": "👍"}}
    )

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == ("unsupported_type", "type")
    assert "(twilio) cannot send reaction messages" in error["message"]
    assert stored(db) == []
    # What it can send is accepted.
    assert post(twilio, {"to": "+14155550123", "type": "text", "text": "hi"}).status_code == 202


def test_same_key_same_body_is_the_same_message_and_another_body_is_a_409(
    client: FlaskClient, db, redis_client
) -> None:
    body = {"to": "310 305 5424", "type": "text", "text": "Ticket #42"}
    first = post(client, body, {"Idempotency-Key": "ticket-42"})
    # The same request written differently: E.164 number, the key as a field, Meta's text object.
    again = post(
        client,
        {"to": CO_MOBILE, "type": "text", "text": {"body": "Ticket #42"}, "idempotency_key": "ticket-42"},
    )
    other = post(client, {**body, "text": "Ticket #43"}, {"Idempotency-Key": "ticket-42"})
    fresh = post(client, {**body, "text": "Ticket #43"}, {"Idempotency-Key": "ticket-43"})

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_conflict"
    assert fresh.status_code == 202
    assert fresh.get_json()["id"] != first.get_json()["id"]
    assert len(stored(db)) == 2
    assert re.fullmatch(r"api@[0-9a-f]{16}:ticket-42", stored(db)[0]["idempotency_key"])


def test_two_api_keys_using_the_same_idempotency_key_each_get_their_own_message(db, redis_client) -> None:
    # Two services, two WAPIPE_API_KEYS entries, both numbering their requests "order-1".
    two = create_app(load_settings(api_keys="billing-key,shipping-key", default_region="CO")).test_client()
    body = {"to": CO_MOBILE, "type": "text", "text": "Order #1"}

    def as_caller(api_key: str, text: str) -> Any:
        headers = {"X-API-Key": api_key, "Idempotency-Key": "order-1"}
        return two.post("/api/v1/messages", json={**body, "text": text}, headers=headers)

    billing = as_caller("billing-key", "Order #1 is paid")
    shipping = as_caller("shipping-key", "Order #1 has shipped")
    same_as_billing = as_caller("shipping-key", "Order #1 is paid")
    billing_again = as_caller("billing-key", "Order #1 is paid")

    assert (billing.status_code, shipping.status_code) == (202, 202)
    assert shipping.get_json()["id"] != billing.get_json()["id"]
    # Each caller's key is its own: shipping's "order-1" already stands for its first message (409), and
    # billing's replay is billing's own message.
    assert same_as_billing.status_code == 409
    assert (billing_again.status_code, billing_again.get_json()) == (200, billing.get_json())
    rows = stored(db)
    assert [row["body"] for row in rows] == ["Order #1 is paid", "Order #1 has shipped"]
    # The stored key names the caller by a short digest, never by its API key.
    assert not any("billing-key" in row["idempotency_key"] for row in rows)
    assert not any("shipping-key" in row["idempotency_key"] for row in rows)


def test_a_key_stored_before_keys_were_scoped_still_answers_with_its_message(
    client: FlaskClient, db, redis_client
) -> None:
    body = {"to": CO_MOBILE, "type": "text", "text": "Ticket #9"}
    first = post(client, body, {"Idempotency-Key": "ticket-9"})
    # As an earlier release stored it: "api:<key>", whoever the caller.
    legacy = "UPDATE messages SET idempotency_key = 'api:ticket-9' WHERE id = %s"
    db.execute(legacy, (first.get_json()["id"],))

    again = post(client, body, {"Idempotency-Key": "ticket-9"})
    other = post(client, {**body, "text": "Ticket #10"}, {"Idempotency-Key": "ticket-9"})

    assert (again.status_code, again.get_json()) == (200, first.get_json())
    assert other.status_code == 409
    assert len(stored(db)) == 1


def test_without_a_key_each_call_is_a_new_message(client: FlaskClient, db) -> None:
    body = {"to": CO_MOBILE, "type": "text", "text": "hi"}
    assert post(client, body).get_json()["id"] != post(client, body).get_json()["id"]


def test_a_nul_in_the_idempotency_key_header_is_a_422(client: FlaskClient, db) -> None:
    response = post(client, {"to": CO_MOBILE, "type": "text", "text": "hi"}, {"Idempotency-Key": "k\x00"})

    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "idempotency_key"
    assert stored(db) == []


def test_header_and_field_keys_must_agree(client: FlaskClient, db) -> None:
    response = post(
        client,
        {"to": CO_MOBILE, "type": "text", "text": "hi", "idempotency_key": "a"},
        {"Idempotency-Key": "b"},
    )
    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "idempotency_key"


def test_get_shows_status_error_and_timeline(client: FlaskClient, db) -> None:
    message_id = post(client, {"to": "310 305 5424", "type": "text", "text": "hi"}).get_json()["id"]
    db.execute(
        "UPDATE messages SET status = 'failed', error_code = '131026',"
        " error_message = 'Message undeliverable' WHERE id = %s",
        (message_id,),
    )
    db.execute(
        "INSERT INTO message_events (message_id, status, error_code) VALUES (%s, 'failed', '131026')",
        (message_id,),
    )

    response = client.get(f"/api/v1/messages/{message_id}", headers=AUTH)

    assert response.status_code == 200
    body = response.get_json()
    assert (body["id"], body["to"], body["type"], body["status"]) == (message_id, CO_MOBILE, "text", "failed")
    assert body["error"] == {"code": "131026", "message": "Message undeliverable"}
    assert [(e["status"], e["errorCode"]) for e in body["timeline"]] == [
        ("queued", None),
        ("failed", "131026"),
    ]
    assert all(e["at"] for e in body["timeline"])
    assert client.get("/api/v1/messages/999999", headers=AUTH).status_code == 404
    assert client.get(f"/api/v1/messages/{message_id}").status_code == 401


def test_every_route_needs_the_key(client: FlaskClient, db) -> None:
    body = {"to": CO_MOBILE, "type": "text", "text": "hi"}
    assert client.post("/api/v1/messages", json=body).status_code == 401
    legacy = client.post("/api/whatsapp/notify", json={"to": CO_MOBILE, "message": "hi"})
    assert legacy.status_code == 401
    assert legacy.get_json()["success"] is False
    assert "X-API-Key" in legacy.get_json()["error"]["message"]
    assert stored(db) == []


def test_legacy_notify_keeps_its_shapes(client: FlaskClient, db, redis_client) -> None:
    ok = client.post(
        "/api/whatsapp/notify", json={"to": "310 305 5424", "message": "Ticket #42"}, headers=AUTH
    )
    assert ok.status_code == 200
    body = ok.get_json()
    assert body == {"success": True, "data": {"messageId": body["data"]["messageId"], "to": CO_MOBILE}}
    [row] = stored(db)
    assert (row["id"], row["type"], row["body"]) == (body["data"]["messageId"], "text", "Ticket #42")
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": row["id"]})]

    bad_number = client.post("/api/whatsapp/notify", json={"to": "12", "message": "hi"}, headers=AUTH)
    assert bad_number.status_code == 422
    assert bad_number.get_json()["success"] is False
    assert bad_number.get_json()["error"]["message"].startswith("to: ")
    missing = client.post("/api/whatsapp/notify", json={"to": CO_MOBILE}, headers=AUTH)
    assert missing.status_code == 422
    assert missing.get_json() == {
        "success": False,
        "error": {"code": "validation_error", "message": "message: required", "field": "message"},
    }
    assert len(stored(db)) == 1


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/api/v1/messages", b'{"to": "+573103055424", "type": "text", "text": "\\ud800"}', "text"),
        ("/api/whatsapp/notify", b'{"to": "+573103055424", "message": "\\udfff x"}', "message"),
    ],
)
def test_a_lone_surrogate_sent_as_a_json_escape_is_a_422_naming_the_field(
    client: FlaskClient, db, path: str, raw: bytes, field: str
) -> None:
    response = client.post(path, data=raw, content_type="application/json", headers=AUTH)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert (error["field"], error["code"]) == (field, "validation_error")
    assert "lone surrogate" in error["message"]
    assert stored(db) == []


TEXT_BODY = b'{"to": "+573103055424", "type": "text", "text": "hi"}'
# A body that is no JSON object, and what the 422 must say about it: each says what is wrong.
UNREADABLE_BODIES = [
    (b'{"to": "+573103055424", "type": ', "application/json", "body: not valid JSON: Expecting value"),
    (b"\xff\xfe{}", "application/json", "body: not valid JSON"),
    (b"", "application/json", "body: empty; a JSON object is expected"),
    (b"[" * 5_000 + b"]" * 5_000, "application/json", f"body: nested deeper than {MAX_DEPTH} levels"),
    (b'{"to": ' + b"1" * 5_000 + b"}", "application/json", f"body: a number longer than {MAX_NUMBER_DIGITS}"),
    (TEXT_BODY, None, "body: Content-Type must be application/json"),
    (TEXT_BODY, "text/plain", "body: Content-Type must be application/json"),
    (b'["+573103055424", "hi"]', "application/json", "body: must be a JSON object"),
]


@pytest.mark.parametrize("path", ["/api/v1/messages", "/api/whatsapp/notify"])
@pytest.mark.parametrize(("raw", "content_type", "says"), UNREADABLE_BODIES, ids=lambda v: None)
def test_a_body_that_is_no_json_object_is_a_422_saying_what_is_wrong(
    client: FlaskClient, db, path: str, raw: bytes, content_type: str | None, says: str
) -> None:
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    response = client.post(path, data=raw, headers=headers)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == ("validation_error", "body")
    assert error["message"].startswith(says), error["message"]
    assert stored(db) == []


def test_a_broker_outage_is_a_503_and_a_message_without_a_key_is_reported_not_stuck(db, redis_client) -> None:
    settings = load_settings(api_keys=KEY, redis_url="redis://127.0.0.1:1/0")
    down = create_app(settings).test_client()
    response = post(down, {"to": CO_MOBILE, "type": "text", "text": "hi"})

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "queue_unavailable"
    # The caller can only send it again as a new message: this one must never go out as well.
    [row] = stored(db)
    assert (row["status"], row["error_code"]) == ("failed", "queue_unavailable")


def test_a_keyed_retry_never_requeues_a_message_that_failed_otherwise_since_it_looked(
    client: FlaskClient, db, redis_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The retry read the row as failed for want of the broker (as a keyed message was once marked), but
    # meanwhile (another retry requeued it, its send's answer was lost) it failed as outcome_unknown: the
    # provider may have it, so requeueing it would send it twice.
    body = {"to": CO_MOBILE, "type": "text", "text": "hi"}
    assert post(client, body, {"Idempotency-Key": "ticket-7"}).status_code == 202
    db.execute("UPDATE messages SET status = 'failed', error_code = 'queue_unavailable'")
    redis_client.delete("notify")
    requeue_failed = messages.requeue_failed

    def failed_otherwise_first(conn, message_id: int, **options: Any) -> bool:
        db.execute("UPDATE messages SET error_code = 'outcome_unknown' WHERE id = %s", (message_id,))
        return requeue_failed(conn, message_id, **options)

    monkeypatch.setattr(messages, "requeue_failed", failed_otherwise_first)

    response = post(client, body, {"Idempotency-Key": "ticket-7"})

    [row] = stored(db)
    assert (row["status"], row["error_code"]) == ("failed", "outcome_unknown")
    assert response.get_json()["status"] == "failed"
    assert queued(redis_client, "notify") == []


def test_a_keyless_message_claimed_for_sending_after_all_is_accepted_not_a_503(
    db, redis_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The publish reached Redis and only its answer was lost: a notify batch claims the row before the
    # ingress marks it failed. A 503 ("never sent, send it again") would have the caller send it twice.
    fail_unqueued = outbound_api.fail_unqueued

    def claimed_first(conn, message_id: int, code: str, message: str) -> bool:
        db.execute("UPDATE messages SET status = 'sending' WHERE id = %s", (message_id,))
        return fail_unqueued(conn, message_id, code, message)

    monkeypatch.setattr(outbound_api, "fail_unqueued", claimed_first)
    down = create_app(load_settings(api_keys=KEY, redis_url="redis://127.0.0.1:1/0")).test_client()

    response = post(down, {"to": CO_MOBILE, "type": "text", "text": "hi"})

    [row] = stored(db)
    assert response.status_code == 202
    assert response.get_json()["id"] == row["id"]
    assert (row["status"], row["error_code"]) == ("sending", None)


def test_a_keyless_message_neither_published_nor_marked_failed_is_accepted_for_the_sweep(
    db, redis_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis refused the job and PostgreSQL went away before the row could be marked failed: the row stays
    # queued and notify.sweep sends it. A 503 ("send it again") had the caller send a second message.
    def database_gone(conn, message_id: int, code: str, message: str) -> bool:
        raise Unavailable("connection refused")

    monkeypatch.setattr(outbound_api, "fail_unqueued", database_gone)
    down = create_app(load_settings(api_keys=KEY, redis_url="redis://127.0.0.1:1/0")).test_client()

    response = post(down, {"to": CO_MOBILE, "type": "text", "text": "hi"})

    [row] = stored(db)
    assert response.status_code == 202
    assert response.get_json()["id"] == row["id"]
    assert (row["status"], row["error_code"]) == ("queued", None)


def test_a_broker_outage_leaves_a_keyed_message_queued_for_the_retry_with_its_key(db, redis_client) -> None:
    settings = load_settings(api_keys=KEY, redis_url="redis://127.0.0.1:1/0")
    down = create_app(settings).test_client()
    response = post(down, {"to": CO_MOBILE, "type": "text", "text": "hi"}, {"Idempotency-Key": "k1"})

    assert response.status_code == 503
    # Queued, not failed: a retry with the key may already have published its job and been told so
    # (notify.sweep re-enqueues it if no retry comes).
    [row] = stored(db)
    assert (row["status"], row["error_code"]) == ("queued", None)

    # The caller retries with the same key once the broker is back: the one message, its job published.
    up = create_app(load_settings(api_keys=KEY)).test_client()
    again = post(up, {"to": CO_MOBILE, "type": "text", "text": "hi"}, {"Idempotency-Key": "k1"})
    assert again.status_code == 200
    assert again.get_json() == {"id": row["id"], "status": "queued"}
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": row["id"]})]
    assert len(stored(db)) == 1


def _at_once(calls: int, call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` for i in range(calls), from as many threads released together."""
    start = threading.Barrier(calls)

    def run(index: int) -> Any:
        start.wait()
        return call(index)

    with ThreadPoolExecutor(calls) as pool:
        return list(pool.map(run, range(calls)))


def test_concurrent_retries_with_one_key_store_one_message(db, redis_client) -> None:
    # A caller whose first POST timed out retries on several connections at once: every answer names the
    # same message, exactly one of them created it, and it is stored, timelined and sent once.
    app = create_app(load_settings(api_keys=KEY, default_region="CO"))
    body = {"to": CO_MOBILE, "type": "text", "text": "Ticket #42", "idempotency_key": "retry-42"}

    answers = _at_once(8, lambda _: post(app.test_client(), body))

    assert sorted(a.status_code for a in answers) == [200] * 7 + [202]
    assert {a.get_json()["id"] for a in answers} == {answers[0].get_json()["id"]}
    [row] = stored(db)
    events = db.execute("SELECT status FROM message_events WHERE message_id = %s", (row["id"],)).fetchall()
    assert [e["status"] for e in events] == ["queued"]
    # A replay of a queued message publishes its job again (the first may be the one that was lost);
    # every job names the one message and notify.send's claim sends it once.
    jobs = queued(redis_client, "notify")
    assert jobs
    assert all(job == ("notify.send", {"message_id": row["id"]}) for job in jobs)


def test_concurrent_first_messages_to_a_new_number_share_one_contact(db, redis_client) -> None:
    app = create_app(load_settings(api_keys=KEY, default_region="CO"))

    answers = _at_once(
        8, lambda i: post(app.test_client(), {"to": CO_MOBILE, "type": "text", "text": f"update {i}"})
    )

    assert [a.status_code for a in answers] == [202] * 8
    rows = stored(db)
    assert len(rows) == 8
    assert {row["phone"] for row in rows} == {CO_MOBILE}
    assert db.execute("SELECT count(*) AS n FROM contacts").fetchone()["n"] == 1


def test_a_message_for_a_known_contact_keeps_the_contact_as_it_was(client: FlaskClient, db) -> None:
    # The accept reads the contact without rewriting it: its window and opt-out stay what inbound set.
    db.execute(
        "INSERT INTO contacts (phone, profile_name, last_inbound_at)"
        " VALUES (%s, 'Ana', now() - interval '1 hour')",
        (CO_MOBILE,),
    )
    before = db.execute("SELECT * FROM contacts").fetchone()

    assert post(client, {"to": CO_MOBILE, "type": "text", "text": "hi"}).status_code == 202

    assert db.execute("SELECT * FROM contacts").fetchone() == before
    assert stored(db)[0]["contact_id"] == before["id"]


def test_any_configured_key_opens_the_api_and_a_near_miss_does_not(db, redis_client) -> None:
    # Keys are rotated by listing the old and the new one: both work, whatever their lengths.
    client = create_app(
        load_settings(api_keys="old-key,a-much-longer-new-key", default_region="CO")
    ).test_client()
    body = {"to": CO_MOBILE, "type": "text", "text": "hi"}

    for key in ("old-key", "a-much-longer-new-key"):
        assert client.post("/api/v1/messages", json=body, headers={"X-API-Key": key}).status_code == 202
    for key in ("old-ke", "old-keyy", "a-much-longer-new-key,old-key", "OLD-KEY"):
        assert client.post("/api/v1/messages", json=body, headers={"X-API-Key": key}).status_code == 401
    assert len(stored(db)) == 2


@pytest.mark.parametrize("error", [Unavailable("connection refused"), psycopg.OperationalError("gone")])
def test_a_database_outage_is_a_503_with_retry_after_in_both_shapes(
    client: FlaskClient, db, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def down(*_: object, **__: object) -> None:
        raise error

    monkeypatch.setattr(GroupStore, "accept", down)

    response = post(client, {"to": CO_MOBILE, "type": "text", "text": "hi"})
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.get_json()["error"]["code"] == "database_unavailable"

    legacy = client.post("/api/whatsapp/notify", json={"to": CO_MOBILE, "message": "hi"}, headers=AUTH)
    assert legacy.status_code == 503
    assert legacy.get_json()["success"] is False  # every answer of the old shape carries success
    assert legacy.get_json()["error"]["code"] == "database_unavailable"
    assert stored(db) == []


def test_a_statement_timeout_is_a_503_that_says_so_and_stores_nothing(
    client: FlaskClient, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Waiting on a lock past the statement timeout is no lost server: the operator is told which it was.
    monkeypatch.setenv("WAPIPE_DB_STATEMENT_TIMEOUT", "0.3")
    get_settings.cache_clear()
    pool.close_pool()
    try:
        with psycopg.connect(db.info.dsn) as holder:
            holder.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            response = post(client, {"to": CO_MOBILE, "type": "text", "text": "hi"})
    finally:
        monkeypatch.delenv("WAPIPE_DB_STATEMENT_TIMEOUT")
        get_settings.cache_clear()
        pool.close_pool()

    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.get_json()["error"]["code"] == "database_timeout"
    assert stored(db) == []


def test_get_shows_a_failure_that_has_only_its_reason(client: FlaskClient, db) -> None:
    # Kapso can report a failure with its text and no code: the caller must still see why.
    message_id = post(client, {"to": CO_MOBILE, "type": "text", "text": "hi"}).get_json()["id"]
    db.execute(
        "UPDATE messages SET status = 'failed', error_message = 'Recipient blocked' WHERE id = %s",
        (message_id,),
    )

    body = client.get(f"/api/v1/messages/{message_id}", headers=AUTH).get_json()

    assert (body["status"], body["error"]) == ("failed", {"code": None, "message": "Recipient blocked"})
