"""``/api/v1/conversations`` against real PostgreSQL through the Flask test client, plus the API-key
check on every read/maintenance view (conversations, stats, sessions, assistant configs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import psycopg
import pytest
import structlog
from flask.testing import FlaskClient

from ingress import create_app
from ingress.api import conversations as conversations_api
from shared.db import conversations, history
from shared.settings import load_settings
from shared.wire import kapso, twilio
from shared.wire.events import InboundMessage
from shared.wire.meta import parse_webhook
from tests.integration import history_seed as seed
from workers.inbound import route

KEY = {"X-API-Key": "views-test-key"}


@pytest.fixture
def client(clean: None) -> FlaskClient:
    app = create_app(load_settings(api_keys="views-test-key", default_region="US"))
    return app.test_client()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/conversations"),
        ("GET", "/api/v1/conversations/1/messages"),
        ("POST", "/api/v1/conversations/1/close"),
        ("GET", "/api/v1/stats"),
        ("GET", "/api/v1/sessions"),
        ("DELETE", "/api/v1/sessions/+14155550101"),
        ("GET", "/api/v1/assistant-configs/+14155238886"),
        ("PUT", "/api/v1/assistant-configs/+14155238886"),
    ],
)
def test_every_view_refuses_a_missing_or_wrong_key(client: FlaskClient, method: str, path: str) -> None:
    for headers in ({}, {"X-API-Key": "not-the-key"}):
        response = client.open(path, method=method, headers=headers, json={"system_prompt": "x"})
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"


def _ids(response) -> list[int]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.get_json()
    return [row["id"] for row in response.get_json()["data"]]


def test_lists_newest_first_and_filters_by_status_provider_and_phone(
    client: FlaskClient, db: psycopg.Connection
) -> None:
    ana = seed.contact(db, "+14155550101", name="Ana")
    ben = seed.contact(db, "+14155550102")
    cleo = seed.contact(db, None, bsuid="US.cleo0001")
    first = seed.conversation(db, ana, status="closed")
    second = seed.conversation(db, ana, provider="meta", number="106540352242922", status="handoff")
    third = seed.conversation(db, ben)
    fourth = seed.conversation(db, cleo, provider="meta", number="106540352242922")

    assert _ids(client.get("/api/v1/conversations", headers=KEY)) == [fourth, third, second, first]
    assert _ids(client.get("/api/v1/conversations?status=handoff", headers=KEY)) == [second]
    assert _ids(client.get("/api/v1/conversations?provider=meta", headers=KEY)) == [fourth, second]
    # The phone is normalised with WAPIPE_DEFAULT_REGION, so a national format finds the E.164 contact.
    by_phone = client.get("/api/v1/conversations?phone=(415)%20555-0101", headers=KEY)
    assert _ids(by_phone) == [second, first]
    both = client.get("/api/v1/conversations?phone=%2B14155550101&status=closed", headers=KEY)
    assert _ids(both) == [first]

    row = by_phone.get_json()["data"][1]
    assert row["contact"] == {"id": ana, "phone": "+14155550101", "bsuid": None, "name": "Ana"}
    assert row["status"] == "closed"
    assert row["closed_at"] is not None
    assert row["provider"] == "twilio"
    assert row["business_number"] == "+14155238886"


def test_pages_follow_the_cursor_without_gaps_or_repeats(client: FlaskClient, db: psycopg.Connection) -> None:
    contact = seed.contact(db, "+14155550101")
    created = [seed.conversation(db, contact, status="closed") for _ in range(5)]

    seen: list[int] = []
    url = "/api/v1/conversations?limit=2"
    pages = 0
    while True:
        body = client.get(url, headers=KEY).get_json()
        seen += [row["id"] for row in body["data"]]
        pages += 1
        if body["next_cursor"] is None:
            break
        url = f"/api/v1/conversations?limit=2&cursor={body['next_cursor']}"
    assert seen == sorted(created, reverse=True)
    assert pages == 3


def test_a_traversal_misses_nothing_that_was_there_and_a_late_commit_heads_the_next_read(
    client: FlaskClient, db: psycopg.Connection, test_servers: dict[str, str]
) -> None:
    contact = seed.contact(db, "+14155550101")
    older = [seed.conversation(db, contact, status="closed") for _ in range(3)]
    url = test_servers["WAPIPE_DATABASE_URL"]
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as late:
        # Its id is taken now, between the first page's rows; it commits only after that page was read.
        late_id = seed.conversation(late, contact, status="closed")
        newer = [seed.conversation(db, contact, status="closed") for _ in range(2)]
        first = client.get("/api/v1/conversations?limit=3", headers=KEY).get_json()
        late.commit()
    assert [row["id"] for row in first["data"]] == [newer[1], newer[0], older[2]]
    # A conversation touched between pages (a new message) keeps its place: pages go by id.
    db.execute("UPDATE conversations SET last_message_at = now() WHERE id = %s", (older[0],))

    seen = [row["id"] for row in first["data"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        body = client.get(f"/api/v1/conversations?limit=2&cursor={cursor}", headers=KEY).get_json()
        seen += [row["id"] for row in body["data"]]
        cursor = body["next_cursor"]
    # Everything committed before the first page, once each; the late one, whose id is above the cursor by
    # then, is not in this traversal but in the next read from the top, as the OpenAPI description says.
    assert seen == sorted(older + newer, reverse=True)
    again = client.get("/api/v1/conversations?limit=10", headers=KEY).get_json()
    assert late_id in [row["id"] for row in again["data"]]


def _listing_plan(db: psycopg.Connection, **filters: str) -> str:
    """The plan of the conversation listing with ``filters``, as the planner would make it at scale (tables
    this small are read whole anyway)."""
    params = {"status": None, "provider": None, "phone": None, "before": None, "limit": 51} | filters
    db.execute("SET enable_seqscan = off")
    try:
        plan = db.execute("EXPLAIN " + history._LIST_CONVERSATIONS, params).fetchall()
    finally:
        db.execute("RESET enable_seqscan")
    return "\n".join(row["QUERY PLAN"] for row in plan)


def test_the_phone_filter_reads_the_contacts_conversations_by_index(db: psycopg.Connection) -> None:
    # Before, only a live conversation was indexed by its contact, so a contact's history (closed ones
    # included) meant reading every conversation ever held.
    text = _listing_plan(db, phone="+14155550101")

    assert "conversations_contact" in text
    assert "Seq Scan" not in text


def test_the_provider_filter_reads_that_providers_conversations_by_index(db: psycopg.Connection) -> None:
    # Before, the newest-first walk over every conversation kept those of the provider: a provider with
    # few conversations (the one a deployment moved away from) meant reading them all.
    text = _listing_plan(db, provider="meta")

    assert "conversations_provider" in text
    assert "Seq Scan" not in text


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("cursor=-4", "cursor"),
        ("cursor=abc", "cursor"),
        # Ids are bigint: a larger cursor was a 500 when PostgreSQL cast it, and a few thousand digits a
        # 500 in int() itself.
        ("cursor=9223372036854775808", "cursor"),
        ("cursor=99999999999999999999999", "cursor"),
        ("cursor=" + "9" * 5000, "cursor"),
        ("limit=" + "9" * 5000, "limit"),
        ("status=pending", "status"),
        ("provider=telegram", "provider"),
        ("phone=not-a-phone", "phone"),
    ],
)
def test_invalid_query_parameters_are_422_naming_the_parameter(
    client: FlaskClient, query: str, parameter: str
) -> None:
    response = client.get(f"/api/v1/conversations?{query}", headers=KEY)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith(f"{parameter}:")
    # Named in error.field too, as a body field is: a client branches on one key for both.
    assert error["field"] == parameter


def test_the_largest_bigint_is_a_cursor_and_one_more_is_not(
    client: FlaskClient, db: psycopg.Connection
) -> None:
    conversation = seed.conversation(db, seed.contact(db, "+14155550101"))
    for path in ("/api/v1/conversations", f"/api/v1/conversations/{conversation}/messages"):
        largest = client.get(f"{path}?cursor={2**63 - 1}", headers=KEY)
        assert largest.status_code == 200, path
        beyond = client.get(f"{path}?cursor={2**63}", headers=KEY)
        assert beyond.status_code == 422, path
        assert beyond.get_json()["error"]["message"].startswith("cursor:")
        assert beyond.get_json()["error"]["field"] == "cursor"


def test_history_has_both_directions_oldest_first_with_status(
    client: FlaskClient, db: psycopg.Connection
) -> None:
    contact = seed.contact(db, "+14155550101")
    conversation = seed.conversation(db, contact)
    other = seed.conversation(db, contact, provider="meta", number="106540352242922")
    with db.transaction():
        first = seed.message(db, conversation, contact, "in", "10 minutes", body="hi")
        second = seed.message(db, conversation, contact, "out", "9 minutes", body="menu", status="read")
        third = seed.message(db, conversation, contact, "out", "8 minutes", body="oops", status="failed")
        seed.message(db, other, contact, "in", "7 minutes", body="elsewhere")
    db.execute(
        "UPDATE messages SET error_code = '63016', error_message = 'outside the 24 h window' WHERE id = %s",
        (third,),
    )
    # A failure reported with its reason alone (Kapso can give no code) still shows the reason.
    fourth = seed.message(db, conversation, contact, "out", "7 minutes", body="again", status="failed")
    db.execute("UPDATE messages SET error_message = 'Recipient blocked' WHERE id = %s", (fourth,))

    response = client.get(f"/api/v1/conversations/{conversation}/messages", headers=KEY)
    body = response.get_json()
    assert response.status_code == 200
    assert body["conversation_id"] == conversation
    assert body["next_cursor"] is None
    assert [(m["id"], m["direction"], m["body"], m["status"]) for m in body["data"]] == [
        (first, "in", "hi", "received"),
        (second, "out", "menu", "read"),
        (third, "out", "oops", "failed"),
        (fourth, "out", "again", "failed"),
    ]
    assert body["data"][2]["error"] == {"code": "63016", "message": "outside the 24 h window"}
    assert body["data"][3]["error"] == {"code": None, "message": "Recipient blocked"}
    assert body["data"][0]["error"] is None

    page_one = client.get(f"/api/v1/conversations/{conversation}/messages?limit=2", headers=KEY).get_json()
    assert [m["id"] for m in page_one["data"]] == [first, second]
    cursor = page_one["next_cursor"]
    page_two = client.get(
        f"/api/v1/conversations/{conversation}/messages?limit=2&cursor={cursor}", headers=KEY
    ).get_json()
    assert [m["id"] for m in page_two["data"]] == [third, fourth]
    assert page_two["next_cursor"] is None


def test_history_shows_what_became_of_each_media_file_but_never_where_the_server_keeps_it(
    client: FlaskClient, db: psycopg.Connection
) -> None:
    contact = seed.contact(db, "+14155550101")
    conversation = seed.conversation(db, contact, provider="meta", number="106540352242922")
    sha256 = "ab" * 32
    path = f"/var/lib/wapipe/media/ab/{sha256}.jpg"
    media = [  # as workers/media.py leaves them: stored, refused, not fetched yet
        {
            "media_id": "m-1",
            "mime_type": "image/jpeg",
            "caption": "the crack",
            "stored": {"path": path, "size": 2048, "sha256": sha256, "mime_type": "image/jpeg"},
        },
        {"media_id": "m-2", "fetch_error": {"code": "too_large", "message": "over 16777216 bytes"}},
        {"media_id": "m-3", "mime_type": "audio/ogg"},
    ]
    message = seed.message(db, conversation, contact, "in", "1 minute", provider="meta", media=media)
    text_only = seed.message(db, conversation, contact, "out", "1 minute", provider="meta")

    response = client.get(f"/api/v1/conversations/{conversation}/messages", headers=KEY)

    assert response.status_code == 200
    by_id = {m["id"]: m["media"] for m in response.get_json()["data"]}
    assert by_id[message] == [
        {
            "media_id": "m-1",
            "mime_type": "image/jpeg",
            "caption": "the crack",
            "stored": {"size": 2048, "sha256": sha256, "mime_type": "image/jpeg"},
        },
        {"media_id": "m-2", "fetch_error": {"code": "too_large", "message": "over 16777216 bytes"}},
        {"media_id": "m-3", "mime_type": "audio/ogg"},
    ]
    assert by_id[text_only] is None
    # Before: the stored file's path on the worker's disk was in the answer.
    assert "/var/lib/wapipe" not in response.get_data(as_text=True)


def test_history_of_an_unknown_conversation_is_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/conversations/999/messages", headers=KEY)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/conversations/999/messages?limit=0", headers=KEY).status_code == 422


def test_close_is_idempotent_and_releases_a_handoff(
    client: FlaskClient, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    contact = seed.contact(db, "+14155550101")
    conversation = seed.conversation(db, contact, status="handoff")

    with structlog.testing.capture_logs() as logs:
        # A logger made inside the capture: the module's own is cached on first use, past capture_logs.
        monkeypatch.setattr(conversations_api, "log", structlog.get_logger(conversations_api.__name__))
        first = client.post(f"/api/v1/conversations/{conversation}/close", headers=KEY)
    assert first.status_code == 200
    assert first.get_json()["status"] == "closed"
    assert [entry["event"] for entry in logs] == ["conversation closed through the API"]
    assert "4155550101" not in repr(logs)
    again = client.post(f"/api/v1/conversations/{conversation}/close", headers=KEY)
    assert again.status_code == 200
    assert again.get_json() == first.get_json()

    # Released: the contact's next message opens a new conversation the bot answers.
    with db.transaction():
        live = conversations.get_or_create_live(
            db, contact_id=contact, provider="twilio", business_number="+14155238886"
        )
    assert live.id != conversation
    assert live.status == "open"


def test_closing_an_unknown_conversation_is_404(client: FlaskClient) -> None:
    response = client.post("/api/v1/conversations/424242/close", headers=KEY)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/conversations/99999999999999999999999/messages"),
        ("POST", "/api/v1/conversations/99999999999999999999999/close"),
        ("GET", "/api/v1/messages/99999999999999999999999"),
        ("GET", "/api/v1/messages/9223372036854775808"),
    ],
)
def test_an_id_past_the_largest_a_row_can_have_is_404_not_500(
    client: FlaskClient, method: str, path: str
) -> None:
    # Past bigint, the id is sent to PostgreSQL as a numeric, which no row equals: as for any unknown id.
    response = client.open(path, method=method, headers=KEY)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def _routed_history(client: FlaskClient, db: psycopg.Connection, events: list[InboundMessage]) -> list[dict]:
    """Route the events as inbound.route does in production, then read their conversation's history."""
    settings = load_settings(default_region="CO")
    for event in events:
        route(event.model_dump(mode="json"), settings)
    [conversation] = {row["conversation_id"] for row in db.execute("SELECT conversation_id FROM messages")}
    response = client.get(f"/api/v1/conversations/{conversation}/messages", headers=KEY)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


@pytest.mark.parametrize(
    ("provider", "location"),
    [
        (
            "meta",
            {
                "latitude": 37.483307,
                "longitude": -122.148981,
                "name": "Main Office",
                "address": "1 Hacker Way, Menlo Park, CA 94025",
                "url": "https://www.meta.com",
            },
        ),
        (
            "twilio",
            {"latitude": 4.6097, "longitude": -74.0817, "name": "Oficina", "address": "Cra 7 #32-16, Bogotá"},
        ),
        (
            "kapso",
            {"latitude": 4.6097, "longitude": -74.0817, "name": "Oficina", "address": "Cra 7 #32-16, Bogotá"},
        ),
    ],
)
def test_history_shows_a_shared_location_whichever_provider_delivered_it(
    client: FlaskClient, db: psycopg.Connection, redis_client: Any, provider: str, location: dict[str, Any]
) -> None:
    event = {"meta": _meta_event, "twilio": _twilio_event, "kapso": _kapso_event}[provider]("location")
    [message] = _routed_history(client, db, [event])
    assert (message["type"], message["body"]) == ("location", None)
    assert message["location"] == location
    assert message["flow_reply"] is None


def test_history_shows_a_flow_replys_answers_and_not_its_raw_payload(
    client: FlaskClient, db: psycopg.Connection, redis_client: Any
) -> None:
    good = _meta_event("interactive_flow_reply")
    payload = _meta_payload("interactive_flow_reply")
    raw = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    raw["id"] += "-malformed"
    raw["interactive"]["nfm_reply"]["response_json"] = '{"flow_token": "booking-42", "date":'
    [malformed] = parse_webhook(payload).messages

    first, second = _routed_history(client, db, [good, malformed])

    assert first["type"] == "interactive"
    assert first["flow_reply"] == {
        "name": "flow",
        "body": "Sent",
        "response": {
            "flow_token": "booking-42",
            "date": "2026-12-09",
            "party_size": "4",
            "notes": "Mesa junto a la ventana",
        },
    }
    assert first["location"] is None
    # Answers that were not JSON: the message is stored and listed all the same, with no answers.
    assert second["flow_reply"] == {"name": "flow", "body": "Sent", "response": None}


def test_history_of_a_message_of_the_release_before_has_no_location(
    client: FlaskClient, db: psycopg.Connection, redis_client: Any
) -> None:
    # Queued by the previous release: a location event without the location field.
    event = _meta_event("location").model_dump(mode="json")
    del event["location"]
    route(event, load_settings())
    [conversation] = {row["conversation_id"] for row in db.execute("SELECT conversation_id FROM messages")}
    [message] = client.get(f"/api/v1/conversations/{conversation}/messages", headers=KEY).get_json()["data"]
    assert (message["type"], message["location"], message["flow_reply"]) == ("location", None, None)


DATA = Path(__file__).resolve().parents[1] / "data"


def _meta_payload(name: str) -> dict[str, Any]:
    return json.loads((DATA / "meta" / f"{name}.json").read_bytes())


def _meta_event(name: str) -> InboundMessage:
    [message] = parse_webhook(_meta_payload(name)).messages
    return message


def _twilio_event(name: str) -> InboundMessage:
    params = dict(parse_qsl((DATA / "twilio" / f"inbound_{name}.txt").read_text(), keep_blank_values=True))
    message = twilio.parse(params, region="CO")
    assert isinstance(message, InboundMessage)
    return message


def _kapso_event(name: str) -> InboundMessage:
    body = json.loads((DATA / "kapso" / f"message_received_{name}.json").read_bytes())
    [message] = kapso.parse_delivery(body, kapso.RECEIVED).messages
    return message
