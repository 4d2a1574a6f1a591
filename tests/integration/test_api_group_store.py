"""The notify API's group commit (ingress/api/group_store.py) against real PostgreSQL and Redis: requests
that arrive while a statement is in flight are stored together by the next one and their jobs published
as one, each gets its own answer, and a message PostgreSQL refuses fails its own request only."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from ingress.api import group_store
from ingress.api.group_store import BROKER_DOWN, NO_BROKER, Filed, GroupStore
from shared.db import outbound_api
from shared.db.errors import Unavailable
from shared.db.outbound_api import NewOutbound
from shared.queues import Publisher
from tests.integration.test_inbound_routing import queued


def message(key: str, body: str = "hi") -> NewOutbound:
    return NewOutbound(
        phone="+573103055424",
        idempotency_key=key,
        provider="console",
        type="text",
        body=body,
        payload={},
        request_hash="h",
    )


@pytest.fixture
def publisher(test_servers: dict[str, str]) -> Publisher:
    return Publisher(test_servers["WAPIPE_REDIS_URL"])


def behind_a_statement(
    monkeypatch: pytest.MonkeyPatch, later: list[NewOutbound], publisher: Publisher
) -> tuple[list[list[str]], list[Any]]:
    """Submit ``later`` while a first request's statement is held in flight, then let it finish: the
    keys of each statement run, and each later request's answer (a Filed or the exception it raised)."""
    store = GroupStore(publisher)
    real = outbound_api.accept_many
    running, release = threading.Event(), threading.Event()
    runs: list[list[str]] = []

    def held(conn: psycopg.Connection, messages: list[NewOutbound]) -> Any:
        runs.append([m.idempotency_key for m in messages])
        if len(runs) == 1:
            running.set()
            release.wait(10)
        return real(conn, messages)

    monkeypatch.setattr(group_store.outbound_api, "accept_many", held)
    with ThreadPoolExecutor(len(later) + 1) as pool:
        first = pool.submit(store.accept, message("api:first"))
        assert running.wait(10)
        futures = [pool.submit(store.accept, m) for m in later]
        deadline = time.monotonic() + 10
        while store.waiting < len(later) and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        assert isinstance(first.result(10), Filed)
        return runs, [_outcome(f) for f in futures]


def _outcome(future: Future[Filed]) -> Any:
    try:
        return future.result(10)
    except Exception as exc:
        return exc


def test_requests_arriving_during_a_statement_share_the_next_one_and_its_publish(
    db: psycopg.Connection, redis_client: Any, monkeypatch: pytest.MonkeyPatch, publisher: Publisher
) -> None:
    later = [message("api:1"), message("api:2"), message("api:3")]
    runs, answers = behind_a_statement(monkeypatch, later, publisher)

    assert runs[0] == ["api:first"]
    assert sorted(runs[1]) == ["api:1", "api:2", "api:3"]
    assert len(runs) == 2
    assert all(isinstance(a, Filed) and a.stored.new and a.unqueued is None for a in answers)
    by_key = {row["idempotency_key"]: row["id"] for row in db.execute("SELECT * FROM messages").fetchall()}
    ids = [by_key["api:1"], by_key["api:2"], by_key["api:3"]]
    assert [a.stored.id for a in answers] == ids
    # The notify worker pulls one task for the group (and the lone first request keeps its own job).
    lone, group = queued(redis_client, "notify")
    assert lone == ("notify.send", {"message_id": by_key["api:first"]})
    assert (group[0], sorted(group[1]["message_ids"])) == ("notify.send_many", sorted(ids))


def test_a_replay_still_queued_publishes_again_and_one_for_another_body_does_not(
    db: psycopg.Connection, redis_client: Any, publisher: Publisher
) -> None:
    store = GroupStore(publisher)
    first = store.accept(message("api:1"))
    again = store.accept(message("api:1"))
    other_body = store.accept(replace(message("api:1"), request_hash="other"))

    assert (first.stored.new, again.stored.new, again.stored.id) == (True, False, first.stored.id)
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": first.stored.id})] * 2
    assert other_body.unqueued is None


def test_without_a_broker_the_rows_are_stored_and_each_request_is_told_why_its_job_is_not_out(
    db: psycopg.Connection, redis_client: Any
) -> None:
    unreachable = Publisher("redis://127.0.0.1:1/0")

    assert GroupStore(unreachable).accept(message("api:1")).unqueued == BROKER_DOWN
    assert GroupStore(None).accept(message("api:2")).unqueued == NO_BROKER
    assert sorted(row["idempotency_key"] for row in db.execute("SELECT * FROM messages").fetchall()) == [
        "api:1",
        "api:2",
    ]


def test_a_message_postgresql_refuses_fails_only_its_own_request(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, publisher: Publisher
) -> None:
    later = [message("api:1"), message("api:bad", body="nul \x00 inside"), message("api:2")]
    runs, answers = behind_a_statement(monkeypatch, later, publisher)

    assert sorted(runs[1]) == ["api:1", "api:2", "api:bad"]  # refused together, then one by one
    good_one, bad, good_two = answers
    assert isinstance(bad, psycopg.DataError)
    assert [type(good_one), type(good_two)] == [Filed, Filed]
    assert good_one.stored.new
    assert good_two.stored.new
    keys = db.execute("SELECT idempotency_key FROM messages ORDER BY id").fetchall()
    assert sorted(row["idempotency_key"] for row in keys) == ["api:1", "api:2", "api:first"]


def test_requests_stored_before_a_later_statement_failed_are_answered_with_their_rows(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, publisher: Publisher, redis_client: Any
) -> None:
    # The second of two requests with one key goes in a second statement, and PostgreSQL goes away then.
    # The first statement's rows are committed: answering their callers "nothing was stored" (503) had a
    # caller without a key send its message again while notify.sweep sent the stored one.
    real_params, calls = outbound_api._params, []

    def database_gone_on_the_third(messages: list[NewOutbound]) -> Any:
        calls.append(len(messages))
        if len(calls) == 3:
            raise Unavailable("connection refused")
        return real_params(messages)

    monkeypatch.setattr(outbound_api, "_params", database_gone_on_the_third)
    later = [message("api:keyless"), message("api:k"), message("api:k")]
    _, answers = behind_a_statement(monkeypatch, later, publisher)

    keyless, keyed, same_key = answers
    assert calls == [1, 2, 1]  # the first request, then two of the three, then the one sharing a key
    assert [type(keyless), type(keyed)] == [Filed, Filed]
    assert keyless.stored.new
    assert keyless.unqueued is None  # its job published
    assert isinstance(same_key, Unavailable)
    jobs = [args for _, args in queued(redis_client, "notify")]
    published = {i for args in jobs for i in args.get("message_ids", [args.get("message_id")])}
    assert {keyless.stored.id, keyed.stored.id} <= published
