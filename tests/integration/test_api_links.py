"""/api/v1/links: codes for the host application, verification by code, masked lookups, unlinking."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from ingress import create_app
from shared import verification
from shared.db.pool import transaction
from shared.settings import load_settings

KEY = "test-api-key-1"
AUTH = {"X-API-Key": KEY}
USER = str(uuid.uuid4())
PHONE = "+14155550123"  # a valid (assigned-range) US number: strict validation accepts it
WAITING_ON_A_LOCK = """
SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


@pytest.fixture
def client(db: psycopg.Connection) -> FlaskClient:
    settings = load_settings(api_keys=f"other-key,{KEY}", twilio_whatsapp_number="whatsapp:+14155238886")
    return create_app(settings).test_client()


def create(client: FlaskClient, user_id: str = USER, phone: str = PHONE) -> dict:
    response = client.post("/api/v1/links", json={"user_id": user_id, "phone": phone}, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_create_returns_the_code_and_the_message_to_send(client: FlaskClient, db: psycopg.Connection) -> None:
    response = client.post("/api/v1/links", json={"user_id": USER, "phone": "(415) 555-0123"}, headers=AUTH)
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"code", "expiresAt", "whatsappNumber", "message"}
    assert re.fullmatch(r"\d{6}", body["code"])
    assert body["message"] == f"Send this message to WhatsApp:\n\nVERIFY {body['code']}"
    assert body["whatsappNumber"] == "+14155238886"
    assert body["expiresAt"].endswith("Z")
    # The user is recorded on first sight; the phone is stored in E.164, the code only as a hash.
    row = db.execute("SELECT phone, code_hash FROM verification_codes WHERE user_id = %s", (USER,)).fetchone()
    assert row["phone"] == PHONE
    assert body["code"].encode() not in bytes(row["code_hash"])
    assert db.execute("SELECT count(*) AS n FROM users WHERE id = %s", (USER,)).fetchone()["n"] == 1


@pytest.mark.parametrize(
    "headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}], ids=["missing", "wrong", "empty"]
)
def test_every_route_needs_a_valid_key(client: FlaskClient, headers: dict[str, str]) -> None:
    calls = [
        client.post("/api/v1/links", json={"user_id": USER, "phone": PHONE}, headers=headers),
        client.post("/api/v1/links/verify", json={"phone": PHONE, "code": "123456"}, headers=headers),
        client.get(f"/api/v1/links/{USER}", headers=headers),
        client.delete(f"/api/v1/links/{USER}", headers=headers),
    ]
    for response in calls:
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "not-a-uuid", "phone": PHONE}, "user_id"),
        ({"phone": PHONE}, "user_id"),
        ({"user_id": USER, "phone": "12"}, "phone"),
        ({"user_id": USER, "phone": "+1 555 123 4567"}, "phone"),  # possible but unassigned: strict refuses
        ({"user_id": USER}, "phone"),
        ([], "body"),
    ],
)
def test_create_rejects_bad_bodies_with_422_naming_the_field(
    client: FlaskClient, db: psycopg.Connection, body: object, field: str
) -> None:
    response = client.post("/api/v1/links", json=body, headers=AUTH)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith(f"{field}:")
    assert error["field"] == field
    assert db.execute("SELECT count(*) AS n FROM verification_codes").fetchone()["n"] == 0


@pytest.mark.parametrize(
    ("raw", "content_type", "says"),
    [
        (b'{"user_id": ', "application/json", "body: not valid JSON"),
        (b"[" * 5_000 + b"]" * 5_000, "application/json", "body: nested deeper than"),
        (b'{"phone": ' + b"1" * 5_000 + b"}", "application/json", "body: a number longer than"),
        (b'{"user_id": "x", "phone": "+14155550123"}', None, "body: Content-Type must be application/json"),
    ],
)
def test_create_says_why_a_body_is_no_json_object(
    client: FlaskClient, raw: bytes, content_type: str | None, says: str
) -> None:
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    response = client.post("/api/v1/links", data=raw, headers=headers)
    assert response.status_code == 422
    assert response.get_json()["error"]["message"].startswith(says)
    assert response.get_json()["error"]["field"] == "body"


def test_phone_linked_to_another_user_is_409(client: FlaskClient) -> None:
    code = create(client)["code"]
    assert (
        client.post("/api/v1/links/verify", json={"phone": PHONE, "code": code}, headers=AUTH).status_code
        == 200
    )
    response = client.post("/api/v1/links", json={"user_id": str(uuid.uuid4()), "phone": PHONE}, headers=AUTH)
    assert response.status_code == 409
    assert response.get_json()["error"]["message"] == "Phone number already linked to another account"


def test_verify_then_get_shows_the_masked_phone(client: FlaskClient) -> None:
    pending = client.get(f"/api/v1/links/{USER}", headers=AUTH)
    assert pending.status_code == 404
    code = create(client)["code"]
    before = client.get(f"/api/v1/links/{USER}", headers=AUTH).get_json()
    assert before == {"phone": "+*******0123", "verified": False, "linkedAt": None}

    bad = client.post(
        "/api/v1/links/verify",
        json={"phone": PHONE, "code": "000000" if code != "000000" else "111111"},
        headers=AUTH,
    )
    assert bad.status_code == 400
    assert bad.get_json()["error"]["message"] == "The code is not right; 4 attempts left"
    ok = client.post("/api/v1/links/verify", json={"phone": PHONE, "code": code}, headers=AUTH)
    assert ok.status_code == 200
    assert ok.get_json()["status"] == "linked"
    assert ok.get_json()["userId"] == USER

    after = client.get(f"/api/v1/links/{USER}", headers=AUTH).get_json()
    assert after["phone"] == "+*******0123"
    assert after["verified"] is True
    assert after["linkedAt"].endswith("Z")
    assert PHONE not in str(after)


def test_verify_errors(client: FlaskClient, db: psycopg.Connection) -> None:
    none = client.post("/api/v1/links/verify", json={"phone": PHONE, "code": "123456"}, headers=AUTH)
    assert none.status_code == 404
    assert none.get_json()["error"]["code"] == "no_pending_code"
    malformed = client.post("/api/v1/links/verify", json={"phone": PHONE, "code": "12ab56"}, headers=AUTH)
    assert malformed.status_code == 422
    assert malformed.get_json()["error"]["message"].startswith("code:")
    assert malformed.get_json()["error"]["field"] == "code"

    code = create(client)["code"]
    db.execute("UPDATE verification_codes SET expires_at = now() - interval '1 second'")
    expired = client.post("/api/v1/links/verify", json={"phone": PHONE, "code": code}, headers=AUTH)
    assert expired.status_code == 410

    code = create(client)["code"]
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(5):
        client.post("/api/v1/links/verify", json={"phone": PHONE, "code": wrong}, headers=AUTH)
    locked = client.post("/api/v1/links/verify", json={"phone": PHONE, "code": code}, headers=AUTH)
    assert locked.status_code == 429
    assert locked.get_json()["error"]["code"] == "code_locked"


def test_delete_unlinks(client: FlaskClient, db: psycopg.Connection) -> None:
    assert client.delete(f"/api/v1/links/{USER}", headers=AUTH).status_code == 404
    code = create(client)["code"]
    client.post("/api/v1/links/verify", json={"phone": PHONE, "code": code}, headers=AUTH)
    response = client.delete(f"/api/v1/links/{USER}", headers=AUTH)
    assert response.status_code == 204
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0
    assert client.get(f"/api/v1/links/{USER}", headers=AUTH).status_code == 404
    # The number is free again for another user.
    create(client, user_id=str(uuid.uuid4()))


def test_non_uuid_path_is_422(client: FlaskClient) -> None:
    for response in (
        client.get("/api/v1/links/nope", headers=AUTH),
        client.delete("/api/v1/links/nope", headers=AUTH),
    ):
        assert response.status_code == 422
        assert response.get_json()["error"]["message"].startswith("user_id:")
        assert response.get_json()["error"]["field"] == "user_id"


def test_a_link_removed_the_moment_it_is_made_still_answers_linked(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host app's DELETE lands between the verifying transaction and the answer: the verification did
    # link the number, so the answer says so (it read the link back afterwards and failed with a 500,
    # and the caller's retry then got a 404 for a code that had worked).
    from ingress.api import links as links_api

    code = create(client)["code"]
    real_verify = links_api.verification.verify_phone

    def verify_then_unlinked_elsewhere(
        phone: str, typed: str, user_id: uuid.UUID | None = None
    ) -> verification.VerifyResult:
        result = real_verify(phone, typed, user_id)
        # From another thread, as the host app's own request would come: a request made inside this one
        # shares its context, and left the caller's key bound in this thread for the tests after it.
        answers: list[int] = []
        elsewhere = threading.Thread(
            target=lambda: answers.append(client.delete(f"/api/v1/links/{USER}", headers=AUTH).status_code)
        )
        elsewhere.start()
        elsewhere.join()
        assert answers == [204]
        return result

    monkeypatch.setattr(links_api.verification, "verify_phone", verify_then_unlinked_elsewhere)

    ok = client.post("/api/v1/links/verify", json={"phone": PHONE, "code": code}, headers=AUTH)

    assert ok.status_code == 200, ok.get_json()
    assert (ok.get_json()["status"], ok.get_json()["userId"]) == ("linked", USER)
    assert ok.get_json()["linkedAt"].endswith("Z")


def test_delete_during_a_verify_waits_for_it_and_unlinks(
    client: FlaskClient, db: psycopg.Connection, wait_for: Callable[..., Any]
) -> None:
    # A VERIFY holds the user's code row (its claim) until it has linked and committed. A DELETE that
    # looked for the link first found none (404) and the VERIFY then linked: the user asked to disconnect
    # and stayed linked. Taking the code first, as the VERIFY does, it waits and then removes the link.
    code = create(client)["code"]
    holding, release = threading.Event(), threading.Event()
    outcomes: list[verification.Outcome] = []

    def verify_and_hold() -> None:
        with transaction() as conn:
            outcomes.append(verification.check_code(conn, PHONE, code).outcome)
            holding.set()
            release.wait(30)

    verifier = threading.Thread(target=verify_and_hold)
    verifier.start()
    try:
        assert holding.wait(30)
        answers: list[int] = []
        deleter = threading.Thread(
            target=lambda: answers.append(client.delete(f"/api/v1/links/{USER}", headers=AUTH).status_code)
        )
        deleter.start()
        wait_for(
            lambda: not deleter.is_alive() or db.execute(WAITING_ON_A_LOCK).fetchone()["n"] > 0,
            what="the DELETE to wait for the verify (or to finish)",
        )
    finally:
        release.set()
        verifier.join()
    deleter.join()
    assert outcomes == [verification.Outcome.linked]
    assert answers == [204]
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0
    assert client.get(f"/api/v1/links/{USER}", headers=AUTH).status_code == 404


def test_verify_with_a_user_id_tries_only_that_users_code(
    client: FlaskClient, db: psycopg.Connection
) -> None:
    # The code was handed to the API caller by POST /links, so it proves nothing about the phone: with
    # user_id the caller says whose code it submits, and another user's code for the number is not tried
    # (nor has an attempt spent on it).
    other = str(uuid.uuid4())
    code = create(client)["code"]
    other_code = create(client, user_id=other)["code"]

    crossed = client.post(
        "/api/v1/links/verify", json={"phone": PHONE, "code": code, "user_id": other}, headers=AUTH
    )
    assert crossed.status_code == 400, crossed.get_json()
    assert crossed.get_json()["error"]["code"] == "invalid_code"
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0
    attempts = db.execute(
        "SELECT user_id::text, attempts FROM verification_codes ORDER BY attempts"
    ).fetchall()
    assert [(row["user_id"], row["attempts"]) for row in attempts] == [(USER, 0), (other, 1)]

    stranger = client.post(
        "/api/v1/links/verify",
        json={"phone": PHONE, "code": code, "user_id": str(uuid.uuid4())},
        headers=AUTH,
    )
    assert stranger.status_code == 404
    assert stranger.get_json()["error"]["code"] == "no_pending_code"

    ok = client.post(
        "/api/v1/links/verify", json={"phone": PHONE, "code": other_code, "user_id": other}, headers=AUTH
    )
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["userId"] == other


def test_verify_user_id_must_be_a_uuid(client: FlaskClient, db: psycopg.Connection) -> None:
    code = create(client)["code"]
    response = client.post(
        "/api/v1/links/verify", json={"phone": PHONE, "code": code, "user_id": "nope"}, headers=AUTH
    )
    assert response.status_code == 422
    assert response.get_json()["error"]["message"].startswith("user_id:")
    assert response.get_json()["error"]["field"] == "user_id"
    assert db.execute("SELECT attempts FROM verification_codes").fetchone()["attempts"] == 0
