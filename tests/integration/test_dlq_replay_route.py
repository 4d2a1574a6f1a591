"""Replaying an ``inbound.route`` letter (``wapipe dlq replay``): the same checks as a handler's letter,
on the event the router gave up on. An event over 24 hours old, or from a sender who has written to the
same number since, is refused unless forced: replayed, it would be stored as a new message after the later
ones and answered, and it would reopen the contact's 24-hour window as if they had just written.

The later messages are routed by the real router (``workers.inbound.route``) on the real database and Redis;
the letter is the row signals.record_give_up keeps for a route that gave up: the task's kwargs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from psycopg.types.json import Jsonb

from shared.commands.dlq import replay
from shared.db import turns
from shared.db.pool import transaction
from shared.queues import FORGONE, Publisher, handler_key
from shared.settings import load_settings
from tests.integration.test_inbound_routing import event, queued
from workers.inbound import route

PHONE = "+15551234567"


def route_letter(db: psycopg.Connection, routed_event: dict[str, Any]) -> int:
    """The dead letter of an ``inbound.route`` that gave up on ``routed_event`` before storing it."""
    return db.execute(
        "INSERT INTO dead_letters (task_name, payload, error, attempts)"
        " VALUES ('inbound.route', %s, 'Unavailable: connection refused', 6) RETURNING id",
        (Jsonb({"event": routed_event}),),
    ).fetchone()["id"]


def sent_ago(text: str, ago: timedelta, phone: str = PHONE) -> dict[str, Any]:
    return event(text, phone=phone, sent_at=datetime.now(UTC) - ago)


def last_inbound_at(db: psycopg.Connection) -> datetime | None:
    row = db.execute("SELECT last_inbound_at FROM contacts WHERE phone = %s", (PHONE,)).fetchone()
    return row["last_inbound_at"] if row else None


def pending(db: psycopg.Connection, letter_id: int) -> bool:
    row = db.execute("SELECT replayed_at FROM dead_letters WHERE id = %s", (letter_id,)).fetchone()
    return row["replayed_at"] is None


def test_an_event_over_24_hours_old_is_refused_unless_forced(db, redis_client: redis.Redis) -> None:
    letter = route_letter(db, sent_ago("/help", timedelta(days=3)))

    refused = replay(letter)

    # Before: replayed, stored as a new message, answered outside the window, and the window reopened.
    assert refused.result == "refused"
    assert "24-hour window" in refused.detail
    assert "--force" in refused.detail
    assert queued(redis_client, "inbound") == []
    assert pending(db, letter)

    assert replay(letter, force=True).result == "replayed"
    assert len(queued(redis_client, "inbound")) == 1


def test_an_event_whose_sender_wrote_since_is_refused(db, redis_client: redis.Redis) -> None:
    old = sent_ago("/project Alpha", timedelta(hours=1))
    route(sent_ago("/project Alpha", timedelta(minutes=30)), load_settings())  # sent again, as asked
    db.execute("UPDATE conversations SET status = 'closed', closed_at = now()")  # closed since: no matter
    window_opened = last_inbound_at(db)
    redis_client.flushdb()
    letter = route_letter(db, old)

    refused = replay(letter)

    assert refused.result == "refused"
    assert "1 message since" in refused.detail
    assert queued(redis_client, "inbound") == []
    assert pending(db, letter)
    assert last_inbound_at(db) == window_opened


def test_a_message_sent_before_the_event_but_stored_after_it_does_not_refuse_it(
    db, redis_client: redis.Redis
) -> None:
    # "first" was sent 10 s ago, "second" (lost) 5 s ago: "first" was stored after the second was sent, as
    # two messages a second apart often are, yet it came before and says nothing of a resend.
    lost = sent_ago("second", timedelta(seconds=5))
    route(sent_ago("first", timedelta(seconds=10)), load_settings())
    redis_client.flushdb()
    letter = route_letter(db, lost)

    result = replay(letter)

    assert result.result == "replayed", result.detail


def test_a_recent_event_nobody_wrote_after_is_replayed(db, redis_client: redis.Redis) -> None:
    route(sent_ago("hello", timedelta(minutes=10), phone="+15550001111"), load_settings())  # someone else
    redis_client.flushdb()
    recent = sent_ago("/help", timedelta(hours=1))
    letter = route_letter(db, recent)

    result = replay(letter)

    assert result.result == "replayed", result.detail
    assert queued(redis_client, "inbound") == [("inbound.route", {"event": recent})]


@pytest.mark.parametrize("ago", [timedelta(days=3), timedelta(hours=1)])
def test_an_event_already_stored_is_judged_by_its_stored_message(db, redis_client, ago: timedelta) -> None:
    # The route stored the message, then gave up before routing it: its replay finishes the routing.
    stored = sent_ago("/help", ago)
    message_id = route(stored, load_settings()).message_id
    db.execute(
        "UPDATE messages SET routed_at = NULL, created_at = now() - %s WHERE id = %s", (ago, message_id)
    )
    redis_client.flushdb()
    letter = route_letter(db, stored)

    result = replay(letter).result

    assert result == ("refused" if ago > timedelta(days=1) else "replayed")


def test_a_replay_that_cannot_be_enqueued_leaves_the_message_given_up_on(
    db, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route stored the message and gave up on it (recorded as routed to no handler, so it holds no
    turn). Its replay makes it unrouted again to be routed; when the task cannot be enqueued, the letter
    stays pending and the message goes back to given up on, not left holding its conversation's turn."""
    stored = sent_ago("/help", timedelta(minutes=1))
    message_id = route(stored, load_settings()).message_id
    db.execute("UPDATE messages SET routed_at = now(), dispatched_at = NULL WHERE id = %s", (message_id,))
    letter = route_letter(db, stored)

    def refused(self: Publisher, jobs: Any) -> None:
        raise redis.ConnectionError("Connection refused")

    with monkeypatch.context() as outage:
        outage.setattr(Publisher, "publish", refused)
        assert replay(letter).result == "not_enqueued"

    assert pending(db, letter)
    row = db.execute("SELECT routed_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row["routed_at"] is not None


def test_a_replay_whose_publish_timed_out_yet_landed_leaves_the_dispatch_its_turn(
    db, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish of the replayed route timed out, yet the job landed and a router has dispatched the
    message to its handler since. Reopening the letter must not also give the message up again: that would
    take the turn from a handler about to answer it, and a later message could be answered first."""
    stored = sent_ago("/help", timedelta(minutes=1))
    message_id = route(stored, load_settings()).message_id
    db.execute("UPDATE messages SET routed_at = now(), dispatched_at = NULL WHERE id = %s", (message_id,))
    letter = route_letter(db, stored)
    real_publish = Publisher.publish

    def landed_then_timed_out(self: Publisher, jobs: Any) -> None:
        real_publish(self, jobs)
        with transaction() as conn:  # the replayed route, run at once by a router
            turns.mark_dispatched(conn, message_id, "commands.handle")
        raise redis.TimeoutError("Timeout reading from socket")

    with monkeypatch.context() as slow:
        slow.setattr(Publisher, "publish", landed_then_timed_out)
        assert replay(letter).result == "not_enqueued"

    row = db.execute("SELECT routed_at, dispatched_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row["dispatched_at"] is not None  # it holds its conversation's turn until its handler answers


def test_a_replay_frees_the_handler_key_of_a_give_up_that_did_not_commit(
    db, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route stored and dispatched the message, could not publish its handler and gave up for good; its
    give-up took the handler's key but did not commit, and the key could not be freed. The message stays
    dispatched and unrouted, nothing to reopen: the replay must free the key all the same, or its route
    finds the handler's task refused and the message is never answered while the replay says replayed."""
    stored = sent_ago("/help", timedelta(minutes=1))

    def refused(self: Publisher, jobs: Any) -> None:
        raise redis.ConnectionError("Connection refused")

    with monkeypatch.context() as outage:
        outage.setattr(Publisher, "publish", refused)
        with pytest.raises(redis.ConnectionError):
            route(stored, load_settings())
    [row] = db.execute("SELECT id FROM messages WHERE dispatched_at IS NOT NULL AND routed_at IS NULL")
    redis_client.set(handler_key(row["id"]), FORGONE)
    letter = route_letter(db, stored)

    assert replay(letter).result == "replayed"
    assert route(stored, load_settings()).action == "handler"  # the replayed route
    assert queued(redis_client, "commands") == [("commands.handle", {"message_id": row["id"]})]


def test_a_replay_leaves_the_key_of_a_published_handler(db, redis_client: redis.Redis) -> None:
    # Freeing the key of a task published would let the replayed route publish it twice.
    stored = sent_ago("/help", timedelta(minutes=1))
    message_id = route(stored, load_settings()).message_id
    assert message_id is not None
    db.execute("UPDATE messages SET routed_at = NULL WHERE id = %s", (message_id,))
    redis_client.delete("commands")
    letter = route_letter(db, stored)

    assert replay(letter).result == "replayed"
    route(stored, load_settings())
    assert redis_client.get(handler_key(message_id)) == b"1"
    assert queued(redis_client, "commands") == []
