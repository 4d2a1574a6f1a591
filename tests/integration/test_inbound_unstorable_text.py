"""A NUL (U+0000) or a lone surrogate in an inbound message, which a JSON webhook (\\u0000, \\ud800) or a
Twilio form (%00) can carry but PostgreSQL text and jsonb cannot hold: the message is stored with U+FFFD in
its place and answered, from every provider's webhook through inbound.route (real Redis and PostgreSQL)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis

from ingress import create_app
from shared.settings import load_settings
from shared.wire.events import InboundMessage
from tests.integration.test_inbound_routing import queued as queued_jobs
from tests.integration.webhook_signing import PROVIDERS, queued, settings, valid
from workers.inbound import route

# A form cannot carry a lone surrogate: UTF-8 has no bytes for it.
UNSTORABLE = [(provider, "\x00") for provider in PROVIDERS] + [("meta", "\ud800"), ("kapso", "\udfff")]


@pytest.mark.parametrize(("provider", "char"), UNSTORABLE, ids=[f"{p}-{ord(c):04x}" for p, c in UNSTORABLE])
def test_an_unstorable_character_in_a_webhook_message_is_stored_as_u_fffd_and_answered(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, provider: str, char: str
) -> None:
    app = create_app(settings())
    sent = valid(app, provider, f"wamid.{uuid.uuid4().hex}", text=f"hello{char}world", profile=f"A{char}na")
    assert sent.send(app.test_client()).status_code == 200
    [job] = queued(redis_client, "inbound")

    # Before, the store raised psycopg.DataError (NUL) or UnicodeEncodeError (a surrogate), which
    # inbound.route does not retry: nothing stored, nobody answered a message the provider had its 200 for.
    outcome = route(job["event"], load_settings())

    assert outcome.action == "handler"
    assert queued_jobs(redis_client, "commands") == [("commands.handle", {"message_id": outcome.message_id})]
    row = db.execute(
        "SELECT m.body, c.profile_name FROM messages m JOIN contacts c ON c.id = m.contact_id"
    ).fetchone()
    assert (row["body"], row["profile_name"]) == ("hello\ufffdworld", "A\ufffdna")
    logged = db.execute("SELECT body::text AS body FROM webhook_events").fetchone()["body"]
    assert "hello\ufffdworld" in logged


def test_every_string_of_an_event_is_made_storable_the_raw_payload_included() -> None:
    message = InboundMessage.model_validate(
        {
            "provider": "meta",
            "provider_message_id": "wamid.1",
            "business_number": "123456",
            "sender_phone": "+15551234567",
            "text": "\x00\ud83d",  # half an emoji's surrogate pair
            "media": [{"media_id": "1", "caption": "a\x00"}],
            "reply": {"id": "menu:1", "title": "b\x00"},
            "raw": {"k\x00": ["c\x00", 1, {"d": "\x00"}]},
        }
    )
    assert "\x00" not in message.model_dump_json()
    assert message.text == "\ufffd\ufffd"
    assert message.media[0].caption == "a\ufffd"
    assert message.raw == {"k\ufffd": ["c\ufffd", 1, {"d": "\ufffd"}]}
    emoji = "\U0001f600"  # a whole pair is a real character and stays
    assert InboundMessage.model_validate({**message.model_dump(), "text": emoji}).text == emoji
