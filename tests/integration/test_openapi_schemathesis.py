"""schemathesis against ``/openapi.json``: every REST operation, fed generated valid and invalid requests
through the real Flask app, PostgreSQL and Redis, answers no 5xx, only statuses the document lists, with
the documented content type and headers, and bodies that match the documented schemas.

The database holds a conversation with history, a stored assistant config and a live chat session, so the
documented examples (conversation 1, +14155550123, +14155238886) reach the 200 answers too, not only the
errors. Webhooks are left out: they need provider signatures over each generated body, and their own tests
cover forged, malformed and oversized deliveries. Bounded (25 generated examples per operation on top of
schemathesis's coverage cases, no deadline) so the file runs in well under a minute.
"""

from __future__ import annotations

import psycopg
import pytest
import redis
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ingress import create_app
from shared.sessions import Sessions
from shared.settings import load_settings
from tests.conftest import _truncate_all
from tests.integration import history_seed as seed

KEY = "schemathesis-api-key"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# The document is the same for every app and creating an app connects nowhere, so it is loaded at import
# from an app of its own, through the real /openapi.json route; the requests go to the `app` fixture, which
# runs against the session's database and Redis.
schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(load_settings(api_keys=KEY))).include(
    path_regex=r"^/api/"
)


@pytest.fixture(scope="module")
def app(test_servers: dict[str, str]) -> Flask:
    """One app for every operation, over data made once (ids restart at 1, as the examples expect)."""
    _truncate_all(test_servers["WAPIPE_DATABASE_URL"])
    client = redis.Redis.from_url(test_servers["WAPIPE_REDIS_URL"])
    client.flushdb()
    with psycopg.connect(
        test_servers["WAPIPE_DATABASE_URL"], autocommit=True, row_factory=psycopg.rows.dict_row
    ) as db:
        contact = seed.contact(db, "+14155550123", name="Ana")
        conversation = seed.conversation(db, contact, provider="twilio", number="+14155238886")
        # With media as the download leaves it, stored and refused, so their documented shape is checked.
        photo = {"media_id": "m-1", "mime_type": "image/jpeg", "caption": "the crack"}
        stored = {
            "path": "/srv/media/ab/ab.jpg",
            "size": 2048,
            "sha256": "ab" * 32,
            "mime_type": "image/jpeg",
        }
        refused = {"code": "too_large", "message": "over WAPIPE_MEDIA_MAX_BYTES"}
        media = [{**photo, "stored": stored}, {"url": "https://api.twilio.com/m", "fetch_error": refused}]
        seed.message(db, conversation, contact, "in", "2 hours", body="hi", media=media)
        seed.message(db, conversation, contact, "out", "1 hour", body="Hello Ana")
        db.execute(
            "INSERT INTO assistant_configs (business_number, system_prompt) VALUES (%s, %s)",
            ("+14155238886", "Be brief"),
        )
    Sessions(client).save("+14155550123", {"workspace_id": "ws-1", "flow": {"pack": "shopfloor", "step": 2}})
    client.close()
    # Console provider (no credentials): every message type is sendable and nothing leaves the machine.
    return create_app(load_settings(api_keys=KEY, default_region="US"))


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_rest_api_conforms_to_its_document(app: Flask, case: schemathesis.Case) -> None:
    case.call_and_validate(app=app, headers={"X-API-Key": KEY}, checks=CHECKS)


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/conversations?limit=%C2%B2",  # "²": str.isdigit() says yes, int() says no
        "/api/v1/conversations/1/messages?cursor=%C2%B2",
        "/api/v1/sessions?cursor=%C2%B2",
        "/api/v1/sessions?cursor=18446744073709551616",  # one past Redis's 64-bit SCAN cursor
    ],
)
def test_parameters_found_by_fuzzing_are_refused_with_a_422(app: Flask, url: str) -> None:
    response = app.test_client().get(url, headers={"X-API-Key": KEY})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "validation_error"
