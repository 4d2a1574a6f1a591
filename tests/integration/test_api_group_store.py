"""The notify API's group commit (ingress/api/group_store.py) against real PostgreSQL: requests that
arrive while a statement is in flight are stored together by the next one, each gets its own answer, and
a message PostgreSQL refuses fails its own request only."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from ingress.api import group_store
from ingress.api.group_store import GroupStore
from shared.db import outbound_api
from shared.db.outbound_api import NewOutbound, Stored


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


def behind_a_statement(
    monkeypatch: pytest.MonkeyPatch, later: list[NewOutbound]
) -> tuple[list[list[str]], list[Any]]:
    """Submit ``later`` while a first request's statement is held in flight, then let it finish: the
    keys of each statement run, and each later request's answer (a Stored or the exception it raised)."""
    store = GroupStore()
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
        assert isinstance(first.result(10), Stored)
        return runs, [_outcome(f) for f in futures]


def _outcome(future: Future[Stored]) -> Any:
    try:
        return future.result(10)
    except Exception as exc:
        return exc


def test_requests_arriving_during_a_statement_share_the_next_one(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, answers = behind_a_statement(monkeypatch, [message("api:1"), message("api:2"), message("api:3")])

    assert runs[0] == ["api:first"]
    assert sorted(runs[1]) == ["api:1", "api:2", "api:3"]
    assert len(runs) == 2
    assert all(isinstance(a, Stored) and a.new for a in answers)
    by_key = {row["idempotency_key"]: row["id"] for row in db.execute("SELECT * FROM messages").fetchall()}
    assert [a.id for a in answers] == [by_key["api:1"], by_key["api:2"], by_key["api:3"]]


def test_a_message_postgresql_refuses_fails_only_its_own_request(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, answers = behind_a_statement(
        monkeypatch, [message("api:1"), message("api:bad", body="nul \x00 inside"), message("api:2")]
    )

    assert sorted(runs[1]) == ["api:1", "api:2", "api:bad"]  # refused together, then one by one
    good_one, bad, good_two = answers
    assert isinstance(bad, psycopg.DataError)
    assert [type(good_one), type(good_two)] == [Stored, Stored]
    assert good_one.new
    assert good_two.new
    keys = db.execute("SELECT idempotency_key FROM messages ORDER BY id").fetchall()
    assert sorted(row["idempotency_key"] for row in keys) == ["api:1", "api:2", "api:first"]
