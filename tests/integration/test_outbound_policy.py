"""notify.send's outbound policy with the real Meta sender and a fake Graph API: WhatsApp's 24-hour window
(free-form refused outside it, templates always allowed, not enforced by the console provider) and opt-outs.
A refused message fails at once with its reason and never reaches the provider."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from ingress import create_app
from shared.policy import OUTSIDE_WINDOW, check_window
from shared.providers.console import ConsoleSender
from shared.providers.meta.client import MetaSender
from shared.settings import Settings, load_settings
from tests.fakes.meta_graph import FakeGraph
from workers.notify import dispatch

KEY = "policy-key"
TOKEN = "graph-token"
PHONE = "+14155550123"


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(TOKEN) as fake:
        yield fake


def meta_settings(graph: FakeGraph) -> Settings:
    return load_settings(
        api_keys=KEY,
        provider="meta",
        meta_access_token=TOKEN,
        meta_phone_number_id="1234567890",
        meta_graph_url=graph.url,
    )


def api_message(client: FlaskClient, content: dict) -> int:
    response = client.post("/api/v1/messages", json={"to": PHONE, **content}, headers={"X-API-Key": KEY})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def last_inbound(db: psycopg.Connection, ago: timedelta | None) -> None:
    """The contact last wrote ``ago`` before now, by the database's clock (the one that stamps it)."""
    db.execute("UPDATE contacts SET last_inbound_at = now() - %s::interval WHERE phone = %s", (ago, PHONE))


def skew_worker_clock(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """The worker's own clock runs ``by`` ahead of the database's (behind when negative)."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + by

    monkeypatch.setattr("shared.policy.datetime", Skewed)


def row(db: psycopg.Connection, message_id: int) -> dict:
    return db.execute(
        "SELECT status, error_code, error_message, attempts FROM messages WHERE id = %s", (message_id,)
    ).fetchone()


TEXT = {"type": "text", "text": "Your ticket #42 was updated"}
TEMPLATE = {
    "type": "template",
    "template": {"name": "ticket_updated", "language": "en_US", "variables": ["42"]},
}


@pytest.mark.parametrize("ago", [None, timedelta(hours=25)], ids=["never wrote", "wrote 25 h ago"])
def test_free_form_outside_the_window_fails_at_once_without_a_provider_call(
    db, redis_client, graph: FakeGraph, ago: timedelta | None
) -> None:
    settings = meta_settings(graph)
    message_id = api_message(create_app(settings).test_client(), TEXT)
    last_inbound(db, ago)

    assert dispatch(message_id, settings=settings, sender=MetaSender(settings)) == "failed"

    stored = row(db, message_id)
    # Never put to the provider (graph.received below); the claim that refused it counted its attempt.
    assert (stored["status"], stored["error_code"]) == ("failed", OUTSIDE_WINDOW)
    assert "template" in stored["error_message"]
    assert graph.received == []
    timeline = db.execute(
        "SELECT status, error_code FROM message_events WHERE message_id = %s ORDER BY id", (message_id,)
    ).fetchall()
    assert [(e["status"], e["error_code"]) for e in timeline] == [
        ("queued", None),
        ("failed", OUTSIDE_WINDOW),
    ]
    # Final: a redelivered task does not try again.
    assert dispatch(message_id, settings=settings, sender=MetaSender(settings)) == "skipped"


def test_free_form_inside_the_window_is_sent(db, redis_client, graph: FakeGraph) -> None:
    settings = meta_settings(graph)
    message_id = api_message(create_app(settings).test_client(), TEXT)
    last_inbound(db, timedelta(hours=23))

    assert dispatch(message_id, settings=settings, sender=MetaSender(settings)) == "sent"
    [request] = graph.received
    assert request.json["text"]["body"] == TEXT["text"]


def test_a_worker_clock_running_fast_does_not_close_the_window_early(
    db, redis_client, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = meta_settings(graph)
    message_id = api_message(create_app(settings).test_client(), TEXT)
    last_inbound(db, timedelta(hours=23))
    skew_worker_clock(monkeypatch, timedelta(hours=2))

    # WhatsApp's window is still open for another hour: the message goes out.
    assert dispatch(message_id, settings=settings, sender=MetaSender(settings)) == "sent"
    assert len(graph.received) == 1


def test_a_worker_clock_running_slow_does_not_keep_the_window_open(
    db, redis_client, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = meta_settings(graph)
    message_id = api_message(create_app(settings).test_client(), TEXT)
    last_inbound(db, timedelta(hours=25))
    skew_worker_clock(monkeypatch, -timedelta(hours=2))

    # Closed an hour ago: refused here, with a reason, instead of failing at the provider (131047).
    assert dispatch(message_id, settings=settings, sender=MetaSender(settings)) == "failed"
    assert row(db, message_id)["error_code"] == OUTSIDE_WINDOW
    assert graph.received == []


def test_a_template_is_sent_outside_the_window(db, redis_client, graph: FakeGraph) -> None:
    settings = meta_settings(graph)
    message_id = api_message(create_app(settings).test_client(), TEMPLATE)  # to someone who never wrote

    assert dispatch(message_id, settings=settings, sender=MetaSender(settings)) == "sent"
    [request] = graph.received
    assert request.json["template"]["name"] == "ticket_updated"
    assert row(db, message_id)["status"] == "sent"


def test_the_console_provider_does_not_enforce_the_window(db, redis_client) -> None:
    message_id = api_message(create_app(load_settings(api_keys=KEY)).test_client(), TEXT)

    assert dispatch(message_id, sender=ConsoleSender(redis_client)) == "sent"


def test_an_opted_out_recipient_gets_nothing(db, redis_client, graph: FakeGraph) -> None:
    settings = meta_settings(graph)
    client = create_app(settings).test_client()
    message_id = api_message(client, TEMPLATE)
    db.execute("UPDATE contacts SET opted_out = true, opted_out_at = now() WHERE phone = %s", (PHONE,))

    assert dispatch(message_id, settings=settings, sender=MetaSender(settings)) == "failed"
    assert row(db, message_id)["error_code"] == "opted_out"
    assert graph.received == []
    body = client.get(f"/api/v1/messages/{message_id}", headers={"X-API-Key": KEY}).get_json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "opted_out"


@pytest.mark.parametrize("provider", ["meta", "twilio", "kapso"])
def test_every_whatsapp_provider_enforces_the_window(provider: str) -> None:
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    just_inside = now - timedelta(hours=23, minutes=59)
    just_outside = now - timedelta(hours=24, minutes=1)
    assert check_window(provider=provider, message_type="text", last_inbound_at=just_inside, now=now) is None
    refusal = check_window(provider=provider, message_type="media", last_inbound_at=just_outside, now=now)
    assert refusal is not None
    assert refusal.code == OUTSIDE_WINDOW
    assert check_window(provider=provider, message_type="template", last_inbound_at=None, now=now) is None
    assert check_window(provider="console", message_type="text", last_inbound_at=None, now=now) is None
