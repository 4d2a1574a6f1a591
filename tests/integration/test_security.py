"""Security properties a user relies on: forged webhooks refused, replays with one effect, verification codes
that cannot be brute-forced, SQL metacharacters stored as plain text, and an API that needs its key.

Real Flask app (``create_app``), real PostgreSQL and Redis; the stages run as their plain functions.
"""

from __future__ import annotations

import io
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from ingress import create_app
from shared.bot.commands import ChatUser, respond
from shared.commands.seed_demo import DEMO_USER_ID, seed
from shared.db.pool import transaction
from shared.flows.engine import advance
from shared.flows.pack import load_pack
from shared.flows.registry import FlowContext
from shared.flows.seed import seed_shopfloor
from shared.flows.validators import Answer
from shared.sessions import Sessions
from shared.verification import MAX_ATTEMPTS, Outcome, verify_inbound
from tests.integration.flows_support import add_inbound, make_conversation
from tests.integration.webhook_signing import (
    API_KEY,
    PROVIDERS,
    Request,
    forged,
    provider_message_id,
    queue_lengths,
    queued,
    settings,
    unsigned,
    valid,
)
from workers.inbound import route

PHONE = "+14155550123"
SQL_TEXTS = [
    "'; DROP TABLE messages; --",
    "Robert'); DROP TABLE contacts;--",
    "%(x)s %s %% $1 $$ $tag$ ? :name",
    "back\\slash \\' \\\\ \\x00 \\n",
    '" OR ""="',
    "1; SELECT pg_sleep(10); --",
    "ünïcødé 🙂 中文 עברית \u202e \u200b",
]
WEBHOOK_PREFIXES = ("/webhooks/",)
OPEN_PREFIXES = ("/healthz", "/readyz", "/metrics", "/openapi", "/docs")


@pytest.fixture
def app(clean: None) -> Flask:
    return create_app(settings())


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _tables(db: psycopg.Connection) -> set[str]:
    rows = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row["tablename"] for row in rows}


# --- signatures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_and_forged_signatures_are_refused_before_anything(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, provider: str
) -> None:
    good = valid(app, provider, "wamid.forged")
    other = valid(app, provider, "wamid.other")
    attempts = [
        unsigned(good),
        forged(good),
        # A real signature, but for another body: the signature covers the exact bytes.
        Request(good.path, good.body.replace(b"hello", b"HELLO"), good.content_type, good.headers),
        Request(other.path, good.body, good.content_type, other.headers),
        # Shapes of the header an attacker might try.
        Request(
            good.path,
            good.body,
            good.content_type,
            {**good.headers, **{k: "" for k in good.headers if "ignature" in k}},
        ),
        Request(
            good.path,
            good.body,
            good.content_type,
            {**good.headers, **{k: "sha256=" + "0" * 64 for k in good.headers if "ignature" in k}},
        ),
        Request(
            good.path,
            good.body,
            good.content_type,
            {**good.headers, **{k: v[:-2] for k, v in good.headers.items() if "ignature" in k}},
        ),
    ]
    if provider == "twilio":
        # Signed for another URL (a replay against another deployment, or a Host-header trick).
        attempts.append(
            Request(good.path, good.body, good.content_type, {**good.headers, "Host": "evil.example.com"})
        )
    for attempt in attempts:
        response = attempt.send(client)
        if attempt.headers.get("Host") == "evil.example.com":
            # The URL signed is WAPIPE_PUBLIC_URL's, never the Host header: the real signature still holds.
            assert response.status_code == 200
            continue
        assert response.status_code == 403, (attempt.headers, response.get_data())
        assert response.get_json()["error"]["code"].startswith("signature_")
    jobs = queued(redis_client, "inbound")
    assert [job["event"]["provider_message_id"] for job in jobs] == (
        [provider_message_id("twilio", "wamid.forged")] if provider == "twilio" else []
    )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_no_secret_configured_refuses_every_webhook(redis_client: redis.Redis, provider: str) -> None:
    app = create_app(settings(twilio_auth_token=None, meta_app_secret=None, kapso_webhook_secret=None))
    response = valid(app, provider, "wamid.nosecret").send(app.test_client())
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "signature_unverifiable"
    assert queue_lengths(redis_client) == {"inbound": 0, "status": 0}


def _sent_as_a_stream(client: FlaskClient, request: Request) -> tuple[int, int]:
    """The status of ``request`` sent with its body as the WSGI input stream, and how many bytes of that
    body the app read (where the stream stands once the answer is out)."""
    stream = io.BytesIO(request.body)
    response = client.post(
        request.path,
        input_stream=stream,
        content_length=len(request.body),
        content_type=request.content_type,
        headers=request.headers,
    )
    return response.status_code, stream.tell()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", ["no_header", "no_secret"])
def test_an_unsigned_or_uncheckable_webhook_is_refused_before_its_body_is_read(
    redis_client: redis.Redis, provider: str, case: str
) -> None:
    """A request that cannot be signed by the provider costs nothing but its headers: the body (up to
    WAPIPE_MAX_BODY_BYTES of it) is not even read."""
    secrets = {"twilio_auth_token": None, "meta_app_secret": None, "kapso_webhook_secret": None}
    app = create_app(settings(**secrets) if case == "no_secret" else settings())
    client = app.test_client()
    good = valid(create_app(settings()), provider, "wamid.unread")
    refused = unsigned(good) if case == "no_header" else good

    assert _sent_as_a_stream(client, refused) == (403, 0)
    assert queue_lengths(redis_client) == {"inbound": 0, "status": 0}
    if case == "no_header":
        # The same delivery signed is read, whole, and accepted: the stream does show a read.
        assert _sent_as_a_stream(client, good) == (200, len(good.body))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_replayed_delivery_is_accepted_but_has_one_effect(
    app: Flask, client: FlaskClient, db: psycopg.Connection, redis_client: redis.Redis, provider: str
) -> None:
    """Providers retry, so a replay of a valid delivery passes the signature check; it must change nothing."""
    delivery = valid(app, provider, f"replayed-{provider}", "pay the invoice")
    if provider == "kapso":
        delivery.headers["X-Idempotency-Key"] = "delivery-1"
    for _ in range(3):
        assert delivery.send(client).status_code == 200
    if provider == "kapso":  # Kapso's retry under a new delivery id is still the same message
        delivery.headers["X-Idempotency-Key"] = "delivery-2"
        assert delivery.send(client).status_code == 200
    assert len(queued(redis_client, "inbound")) == 1

    # Even if the dedupe keys were gone (expired, Redis restored from an old snapshot), the stored
    # message is unique on its provider id: a replayed job stores and routes nothing more.
    for key in redis_client.scan_iter("seen*"):
        redis_client.delete(key)
    assert delivery.send(client).status_code == 200
    jobs = queued(redis_client, "inbound")
    assert len(jobs) == 2
    outcomes = [route(job["event"], settings(mode="menu")).action for job in jobs]
    assert outcomes[1] == "duplicate"
    rows = db.execute("SELECT body FROM messages WHERE direction = 'in'").fetchall()
    assert [row["body"] for row in rows] == ["pay the invoice"]


# --- verification codes -------------------------------------------------------------------------------


def _wrong(code: str, n: int) -> str:
    return f"{(int(code) + n) % 10**6:06d}"


def test_brute_force_through_the_api_stops_at_the_attempt_limit(
    client: FlaskClient, db: psycopg.Connection
) -> None:
    auth = {"X-API-Key": API_KEY}
    user_id = str(uuid.uuid4())
    created = client.post("/api/v1/links", json={"user_id": user_id, "phone": PHONE}, headers=auth)
    assert created.status_code == 201
    code = created.get_json()["code"]
    for attempt in range(1, MAX_ATTEMPTS + 1):
        response = client.post(
            "/api/v1/links/verify", json={"phone": PHONE, "code": _wrong(code, attempt)}, headers=auth
        )
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "invalid_code"
        assert f"{MAX_ATTEMPTS - attempt} attempts left" in response.get_json()["error"]["message"]
    # The right code, sixth: refused, and the number stays unlinked.
    response = client.post("/api/v1/links/verify", json={"phone": PHONE, "code": code}, headers=auth)
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "code_locked"
    assert client.get(f"/api/v1/links/{user_id}", headers=auth).get_json()["verified"] is False
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0


def test_brute_force_over_whatsapp_stops_at_the_attempt_limit(
    client: FlaskClient, db: psycopg.Connection
) -> None:
    auth = {"X-API-Key": API_KEY}
    user_id = str(uuid.uuid4())
    code = client.post("/api/v1/links", json={"user_id": user_id, "phone": PHONE}, headers=auth).get_json()[
        "code"
    ]
    contact_id, conversation_id = make_conversation(db, PHONE)
    outcomes = []
    for attempt in [*(_wrong(code, n) for n in range(1, MAX_ATTEMPTS + 1)), code]:
        text = f"VERIFY {attempt}"
        message_id = add_inbound(db, contact_id, conversation_id, text)
        result = verify_inbound(message_id, PHONE, text)
        assert result is not None
        outcomes.append(result.outcome)
        # A redelivery of the same message spends no second attempt.
        assert verify_inbound(message_id, PHONE, text) == result
    assert outcomes == [Outcome.wrong_code] * MAX_ATTEMPTS + [Outcome.locked]
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0


# --- SQL metacharacters -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sql_metacharacters_in_webhook_text_and_names_are_stored_verbatim(
    app: Flask, client: FlaskClient, db: psycopg.Connection, redis_client: redis.Redis, provider: str
) -> None:
    tables = _tables(db)
    for index, text in enumerate(SQL_TEXTS):
        request = valid(
            app, provider, f"sql-{provider}-{index}", text, profile=text, phone=f"+1555123{4500 + index}"
        )
        assert request.send(client).status_code == 200
    for job in queued(redis_client, "inbound"):
        route(job["event"], settings(mode="menu"))
    rows = db.execute(
        "SELECT m.body, c.profile_name FROM messages m JOIN contacts c ON c.id = m.contact_id"
        " WHERE m.direction = 'in' ORDER BY m.provider_message_id"
    ).fetchall()
    assert [row["body"] for row in rows] == SQL_TEXTS
    assert [row["profile_name"] for row in rows] == SQL_TEXTS
    assert _tables(db) == tables


def test_sql_metacharacters_in_the_link_and_notify_apis(client: FlaskClient, db: psycopg.Connection) -> None:
    auth = {"X-API-Key": API_KEY}
    tables = _tables(db)
    for text in SQL_TEXTS:
        # Not a phone number or a UUID: a 422 naming the field, nothing stored.
        for body in ({"user_id": text, "phone": PHONE}, {"user_id": str(uuid.uuid4()), "phone": text}):
            response = client.post("/api/v1/links", json=body, headers=auth)
            assert response.status_code == 422
        response = client.post("/api/v1/links/verify", json={"phone": text, "code": "123456"}, headers=auth)
        assert response.status_code == 422
        assert client.get(f"/api/v1/links/{text}", headers=auth).status_code in (404, 422)
        assert client.delete(f"/api/v1/links/{text}", headers=auth).status_code in (404, 405, 422)
    assert db.execute("SELECT count(*) AS n FROM verification_codes").fetchone()["n"] == 0

    for index, text in enumerate(SQL_TEXTS):
        response = client.post(
            "/api/v1/messages",
            json={"to": PHONE, "type": "text", "text": text},
            headers={**auth, "Idempotency-Key": text + str(index)},
        )
        assert response.status_code == 202, response.get_json()
    rows = db.execute(
        "SELECT body, idempotency_key FROM messages WHERE direction = 'out' ORDER BY id"
    ).fetchall()
    assert [row["body"] for row in rows] == SQL_TEXTS
    assert all(text in row["idempotency_key"] for text, row in zip(SQL_TEXTS, rows, strict=True))
    assert _tables(db) == tables


def test_sql_metacharacters_in_a_project_name_and_a_flow_answer(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    tables = _tables(db)
    seed(PHONE)
    sessions = Sessions(redis_client, ttl_seconds=1800)
    workspace_id = db.execute("SELECT workspace_id FROM projects LIMIT 1").fetchone()["workspace_id"]
    name = SQL_TEXTS[0]
    db.execute("INSERT INTO projects (workspace_id, name) VALUES (%s, %s)", (workspace_id, name))
    reply = respond(f"/project {name}", ChatUser(PHONE, DEMO_USER_ID), sessions)
    assert reply.startswith(f"✅ Project: {name}"), reply
    for text in SQL_TEXTS[1:]:
        respond(f"/project {text}", ChatUser(PHONE, DEMO_USER_ID), sessions)  # no such project: just a reply
    assert db.execute("SELECT count(*) AS n FROM projects WHERE name = %s", (name,)).fetchone()["n"] == 1

    # A menu flow's free-text answer ends up in the record it creates, byte for byte.
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    seed_shopfloor(db, now=now)
    pack = load_pack("shopfloor")
    contact_id, conversation_id = make_conversation(db, "+15550100001")
    state: dict[str, Any] = {}
    description = " ".join(SQL_TEXTS)
    for answer in ("hi", "1", "ORD-12345", "return", "high", description):
        message_id = add_inbound(db, contact_id, conversation_id, answer)
        with transaction() as conn:
            outcome = advance(
                pack,
                state,
                Answer(answer, None),
                FlowContext(conn, contact_id, conversation_id, message_id, now),
            )
        state = outcome.state
    record = db.execute("SELECT data FROM flow_records WHERE contact_id = %s", (contact_id,)).fetchone()
    assert record["data"]["description"] == description
    assert _tables(db) == tables


# --- API keys -----------------------------------------------------------------------------------------


def _api_routes(app: Flask) -> list[tuple[str, str]]:
    """Every (method, path) of the app that is not a webhook nor an open health/metrics/doc route."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(WEBHOOK_PREFIXES + OPEN_PREFIXES) or rule.endpoint == "static":
            continue
        path = rule.rule
        for argument in rule.arguments:
            converter = rule._converters[argument]
            sample = (
                "1"
                if type(converter).__name__ in ("IntegerConverter", "NumberConverter")
                else str(uuid.uuid4())
            )
            path = path.replace(f"<{argument}>", sample)
            path = re.sub(rf"<[^>]*:{argument}>", sample, path)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    return routes


def test_every_api_route_needs_a_valid_key(client: FlaskClient, app: Flask, db: psycopg.Connection) -> None:
    routes = _api_routes(app)
    # The route table really is the API (so a new blueprint is covered without editing this test).
    assert {("POST", "/api/v1/links"), ("POST", "/api/v1/links/verify"), ("POST", "/api/v1/messages")} <= set(
        routes
    )
    assert all(path.startswith("/api/") for _, path in routes), routes
    for method, path in routes:
        for headers in (
            {},
            {"X-API-Key": ""},
            {"X-API-Key": "wrong-key"},
            {"X-API-Key": API_KEY + "x"},
            {"X-API-Key": API_KEY[:-1]},
            {"Authorization": f"Bearer {API_KEY}"},
        ):
            response = client.open(
                path, method=method, json={"to": PHONE, "type": "text", "text": "x"}, headers=headers
            )
            assert response.status_code == 401, (method, path, headers, response.status_code)
            assert response.get_json()["error"]["code"] == "unauthorized"
    # Nothing any of them could have done happened.
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM verification_codes").fetchone()["n"] == 0


def test_no_configured_key_refuses_every_api_call(redis_client: redis.Redis) -> None:
    app = create_app(settings(api_keys=""))
    client = app.test_client()
    for method, path in _api_routes(app):
        response = client.open(path, method=method, json={}, headers={"X-API-Key": ""})
        assert response.status_code == 401, (method, path)
