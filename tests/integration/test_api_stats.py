"""``GET /api/v1/stats`` on a dataset built here with chosen timestamps, so every figure is known."""

from __future__ import annotations

import psycopg
import pytest
from flask.testing import FlaskClient

from ingress import create_app
from ingress.api import stats as stats_api
from shared.settings import load_settings
from tests.integration import history_seed as seed

KEY = {"X-API-Key": "stats-test-key"}
TWILIO_MAIN, TWILIO_SECOND, META_ID = "+14155238886", "+14155550000", "106540352242922"


@pytest.fixture
def client(clean: None) -> FlaskClient:
    return create_app(load_settings(api_keys="stats-test-key")).test_client()


def _seed(db: psycopg.Connection) -> None:
    # One transaction: every now() below is the same instant, so the waits are exact.
    with db.transaction():
        ana, ben, cleo, dan = (seed.contact(db, f"+1415555010{n}") for n in range(1, 5))
        # Ana on the main Twilio number: answered after 60 s; a second exchange does not change that.
        one = seed.conversation(db, ana, number=TWILIO_MAIN)
        seed.message(db, one, ana, "in", "3 hours")
        seed.message(db, one, ana, "out", "2 hours 59 minutes")
        seed.message(db, one, ana, "in", "1 hour")
        seed.message(db, one, ana, "out", "50 minutes")
        # Ben, closed, 9 days ago: we wrote first (a template); his first message was answered in 1 h.
        two = seed.conversation(db, ben, number=TWILIO_MAIN, status="closed", started="10 days")
        seed.message(db, two, ben, "out", "10 days")
        seed.message(db, two, ben, "in", "9 days")
        seed.message(db, two, ben, "out", "8 days 23 hours")
        # Cleo on Meta, handed to a person two days ago and never answered.
        three = seed.conversation(db, cleo, provider="meta", number=META_ID, status="handoff")
        seed.message(db, three, cleo, "in", "2 days", provider="meta")
        seed.message(db, three, cleo, "in", "1 day 23 hours", provider="meta")
        # Dan on Meta: answered after 120 s.
        four = seed.conversation(db, dan, provider="meta", number=META_ID)
        seed.message(db, four, dan, "in", "5 hours", provider="meta")
        seed.message(db, four, dan, "out", "4 hours 58 minutes", provider="meta")
        # Ana again, on the second Twilio number: answered after 30 s.
        five = seed.conversation(db, ana, number=TWILIO_SECOND)
        seed.message(db, five, ana, "in", "30 minutes")
        seed.message(db, five, ana, "out", "29 minutes 30 seconds")
        # A notification sent through the API outside any conversation.
        seed.message(db, None, cleo, "out", "1 hour")


def _figures(
    conversations: int,
    active: int,
    answered: int,
    avg: float | None,
    messages_in: int,
    messages_out: int,
    users_24h: int,
    users_7d: int,
) -> dict[str, object]:
    return {
        "conversations": conversations,
        "active_conversations": active,
        "answered_conversations": answered,
        "avg_first_response_seconds": pytest.approx(avg) if avg is not None else None,
        "messages_in": messages_in,
        "messages_out": messages_out,
        "active_users_24h": users_24h,
        "active_users_7d": users_7d,
    }


def test_stats_overall_by_provider_and_by_number(client: FlaskClient, db: psycopg.Connection) -> None:
    _seed(db)

    response = client.get("/api/v1/stats", headers=KEY)

    assert response.status_code == 200
    body = response.get_json()
    assert body["overall"] == _figures(5, 4, 4, (60 + 3600 + 120 + 30) / 4, 7, 7, 2, 3)
    assert body["by_provider"] == [
        {"provider": "meta", **_figures(2, 2, 1, 120, 3, 1, 1, 2)},
        {"provider": "twilio", **_figures(3, 2, 3, (60 + 3600 + 30) / 3, 4, 6, 1, 1)},
    ]
    assert body["by_number"] == [
        {"provider": "meta", "business_number": META_ID, **_figures(2, 2, 1, 120, 3, 1, 1, 2)},
        {"provider": "twilio", "business_number": None, **_figures(0, 0, 0, None, 0, 1, 0, 0)},
        {"provider": "twilio", "business_number": TWILIO_MAIN, **_figures(2, 1, 2, 1830, 3, 4, 1, 1)},
        {"provider": "twilio", "business_number": TWILIO_SECOND, **_figures(1, 1, 1, 30, 1, 1, 1, 1)},
    ]


def test_stats_of_an_empty_database_are_zero(client: FlaskClient) -> None:
    body = client.get("/api/v1/stats", headers=KEY).get_json()
    assert body["overall"] == _figures(0, 0, 0, None, 0, 0, 0, 0)
    assert body["by_provider"] == []
    assert body["by_number"] == []


def test_one_answer_serves_every_caller_for_a_while(client: FlaskClient, db: psycopg.Connection) -> None:
    # Each answer is two scans of the biggest tables: a dashboard polling every few seconds must not keep
    # PostgreSQL scanning. Within MAX_AGE_SECONDS a process answers what it computed, dated when it did.
    first = client.get("/api/v1/stats", headers=KEY).get_json()
    _seed(db)
    again = client.get("/api/v1/stats", headers=KEY).get_json()
    assert again == first
    assert again["overall"]["messages_in"] == 0


def test_an_answer_older_than_its_max_age_is_computed_again(
    client: FlaskClient, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = client.get("/api/v1/stats", headers=KEY).get_json()
    _seed(db)
    monkeypatch.setattr(stats_api, "MAX_AGE_SECONDS", 0.0)
    later = client.get("/api/v1/stats", headers=KEY).get_json()
    assert later["generated_at"] > first["generated_at"]
    assert later["overall"]["messages_in"] == 7
