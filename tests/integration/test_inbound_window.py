"""The 24-hour window opens when the user sent their message, not when the router got to it.

After a backlog (workers down for hours), a message Meta stamped 25 hours ago must not make the window look
open: WhatsApp's closed an hour ago, so a free-form send would fail at the provider (Meta 131047, Twilio
63016) instead of the caller being told to use a template. The router runs for real (``workers.inbound``)
on the real database; the send goes through notify with the real Meta client and a fake Graph API.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ingress import create_app
from shared.db import contacts
from shared.policy import OUTSIDE_WINDOW
from shared.providers.meta.client import MetaSender
from shared.settings import Settings, load_settings
from shared.wire.events import InboundMessage
from tests.fakes.meta_graph import FakeGraph
from workers.inbound import route
from workers.notify import dispatch

KEY = "window-key"
TOKEN = "graph-token"
PHONE = "+14155550123"
PHONE_NUMBER_ID = "1234567890"


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(TOKEN) as fake:
        yield fake


def meta_settings(graph: FakeGraph) -> Settings:
    return load_settings(
        api_keys=KEY,
        provider="meta",
        meta_access_token=TOKEN,
        meta_phone_number_id=PHONE_NUMBER_ID,
        meta_graph_url=graph.url,
    )


def meta_event(sent_at: datetime) -> dict:
    """A Meta message the user sent at ``sent_at`` (Meta's ``timestamp``)."""
    message = InboundMessage(
        provider="meta",
        provider_message_id=f"wamid.{uuid.uuid4().hex}",
        business_number=PHONE_NUMBER_ID,
        sender_phone=PHONE,
        profile_name="Ana",
        text="hello",
        sent_at=sent_at,
    )
    return message.model_dump(mode="json")


def db_now(db: psycopg.Connection) -> datetime:
    return db.execute("SELECT now() AS now").fetchone()["now"]


def last_inbound_at(db: psycopg.Connection) -> datetime:
    return db.execute("SELECT last_inbound_at FROM contacts WHERE phone = %s", (PHONE,)).fetchone()[
        "last_inbound_at"
    ]


def send_text(settings: Settings) -> tuple[str, int]:
    client = create_app(settings).test_client()
    response = client.post(
        "/api/v1/messages",
        json={"to": PHONE, "type": "text", "text": "Your ticket #42 was updated"},
        headers={"X-API-Key": KEY},
    )
    assert response.status_code == 202, response.get_json()
    message_id = response.get_json()["id"]
    return dispatch(message_id, settings=settings, sender=MetaSender(settings)), message_id


def test_a_message_sent_25_hours_ago_and_routed_now_leaves_the_window_closed(
    db, redis_client, graph: FakeGraph
) -> None:
    settings = meta_settings(graph)
    sent_at = db_now(db) - timedelta(hours=25)
    route(meta_event(sent_at), settings)

    assert last_inbound_at(db) == sent_at
    outcome, message_id = send_text(settings)
    assert outcome == "failed"
    error = db.execute("SELECT error_code FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert error["error_code"] == OUTSIDE_WINDOW
    assert graph.received == []  # never put to Meta, where it would fail with 131047


def test_a_late_old_message_does_not_move_the_window_back(db, redis_client, graph: FakeGraph) -> None:
    settings = meta_settings(graph)
    recent = db_now(db) - timedelta(minutes=5)
    route(meta_event(recent), settings)
    route(meta_event(recent - timedelta(hours=25)), settings)  # an older one, routed after it

    assert last_inbound_at(db) == recent
    assert send_text(settings)[0] == "sent"


def test_a_provider_time_ahead_of_the_database_counts_as_now(db, redis_client, graph: FakeGraph) -> None:
    # A provider clock ahead of ours must not keep the window open past WhatsApp's own.
    before = db_now(db)
    route(meta_event(before + timedelta(hours=2)), meta_settings(graph))

    assert before <= last_inbound_at(db) <= db_now(db)


def test_the_general_store_path_takes_the_senders_time_too(db) -> None:
    sent_at = db_now(db) - timedelta(hours=25)
    created = contacts.upsert_from_inbound(db, phone=PHONE, bsuid=None, profile_name="Ana", sent_at=sent_at)
    assert created.last_inbound_at == sent_at

    later = sent_at + timedelta(hours=2)
    assert (
        contacts.upsert_from_inbound(
            db, phone=PHONE, bsuid=None, profile_name=None, sent_at=later
        ).last_inbound_at
        == later
    )
    # Never backwards, and never past the database's now().
    assert (
        contacts.upsert_from_inbound(
            db, phone=PHONE, bsuid=None, profile_name=None, sent_at=sent_at
        ).last_inbound_at
        == later
    )
    ahead = datetime.now(UTC) + timedelta(hours=2)
    refreshed = contacts.upsert_from_inbound(db, phone=PHONE, bsuid=None, profile_name=None, sent_at=ahead)
    assert refreshed.last_inbound_at is not None
    assert refreshed.last_inbound_at <= db_now(db)
