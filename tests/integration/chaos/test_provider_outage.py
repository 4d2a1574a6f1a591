"""Chaos: the provider is down (500s, then 429 with Retry-After) for the issue's 30 seconds, then recovers.

From the first send attempt, the fake Twilio API answers 500 for 15 s, then 429 with ``Retry-After: 2``
for 15 s, then 201. Every message is delivered after recovery, none twice; wapipe's timeline records the
failed calls as retries and no message as failed; no recipient is tried again sooner than Retry-After
asked, and with ``WAPIPE_SEND_RATE=20`` no one-second window at the provider ever holds more than 20
requests, even when the whole backlog comes due at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import redis
from psycopg.rows import dict_row

from tests.fakes.twilio_api import Scripted
from tests.integration.chaos.harness import (
    POOLS,
    WORKER_ENV,
    ChaosTwilioAPI,
    Ingress,
    assert_exactly_one_reply_each,
    held_tasks,
    outage_error,
    phones,
    queues_empty,
    seed_linked_users,
    sent_count,
)

MESSAGES = 150
SEND_RATE = 20
SERVER_ERROR_SECONDS = 15.0
RATE_LIMITED_SECONDS = 15.0
RETRY_AFTER_SECONDS = 2.0
# The Twilio error codes of the outage's answers (tests/fakes/twilio_api.py), as wapipe records them.
SERVER_ERROR_CODE, RATE_LIMITED_CODE = "20500", "20429"


class Outage:
    """500 for a while, then 429 with Retry-After for a while, then normal; timed from the first call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: float | None = None

    def __call__(self) -> Scripted | None:
        now = time.monotonic()
        with self._lock:
            if self.started is None:
                self.started = now
        elapsed = now - self.started
        if elapsed < SERVER_ERROR_SECONDS:
            return outage_error(500)
        if elapsed < SERVER_ERROR_SECONDS + RATE_LIMITED_SECONDS:
            return outage_error(429, retry_after=RETRY_AFTER_SECONDS)
        return None


@pytest.mark.slow
@pytest.mark.timeout(660)  # the waits below: replies 300 s, then quiet 240 s
def test_messages_are_delivered_once_and_paced_after_a_provider_outage(
    db: Any,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    database_url = test_servers["WAPIPE_DATABASE_URL"]
    numbers = phones(MESSAGES, offset=6000)
    seed_linked_users(database_url, numbers)
    with ChaosTwilioAPI() as fake:
        outage = Outage()
        fake.outage = outage
        env = {
            **WORKER_ENV,
            **fake.credentials_env(),
            "WAPIPE_SEND_RATE": str(SEND_RATE),
            # Celery-level retries start at 1 s (default 2 s) so the backlog comes due soon after recovery.
            "WAPIPE_SEND_RETRY_BASE": "1",
        }
        for pool in POOLS:
            start_worker(list(pool), concurrency=2, env=env)
        ingress = Ingress(test_servers["WAPIPE_REDIS_URL"], fake.auth_token)

        assert {ingress.send(number) for number in numbers} == {200}
        # Usually within 50 s of the first call; one CI run took 170 s with nothing failing, so the bound is
        # wide and a failure names what was still held (a retry counting down, a job never published).
        try:
            wait_for(
                lambda: len(fake.replies_per_recipient()) >= MESSAGES,
                timeout=300,
                interval=0.5,
                what=f"a reply to each of the {MESSAGES} messages",
            )
        except pytest.fail.Exception:
            replied = len(fake.replies_per_recipient())
            pytest.fail(f"{replied} replies; still held: {held_tasks(redis_client)}")
        wait_for(lambda: sent_count(database_url) >= MESSAGES, timeout=60, what="replies recorded")
        # Quiet: a send's retries scheduled during the outage (doubling from 1 s, jittered) may still count
        # down after every message went out, and end finding it sent; the last can be a minute or more off.
        try:
            wait_for(lambda: queues_empty(redis_client), timeout=240, what="empty queues")
        except pytest.fail.Exception:
            pytest.fail(f"still held after 240 s: {held_tasks(redis_client)}")

        statuses = {a.status for a in fake.arrivals}
        assert {500, 429, 201} <= statuses  # the outage really happened, in both shapes
        assert_exactly_one_reply_each(fake, database_url, numbers)
        # wapipe took both shapes for what they are: it recorded the failed calls as retries with their codes,
        # sent each message once at the end, and failed or dead-lettered none.
        timelines = reply_timelines(database_url)
        assert len(timelines) == MESSAGES
        wrong = [t for t in timelines if t["events"].count("sent") != 1 or t["events"][-1] != "sent"]
        assert not wrong, f"{len(wrong)} replies not sent exactly once, e.g. {wrong[:3]}"
        assert not [t for t in timelines if "failed" in t["events"]]
        retried_codes = {code for t in timelines for code in t["retry_codes"]}
        assert {SERVER_ERROR_CODE, RATE_LIMITED_CODE} <= retried_codes
        assert dead_letter_count(database_url) == 0
        # Retry-After honoured: no recipient was tried again sooner than the provider asked.
        last_429: dict[str, float] = {}
        for arrival in sorted(fake.arrivals, key=lambda a: a.at):
            if arrival.to in last_429:
                assert arrival.at - last_429.pop(arrival.to) >= RETRY_AFTER_SECONDS
            if arrival.status == 429:
                last_429[arrival.to] = arrival.at
        # Pacing held: never more than SEND_RATE requests (any answer) in any one-second window.
        assert fake.max_per_second() <= SEND_RATE


def reply_timelines(database_url: str) -> list[dict[str, Any]]:
    """Per reply: its timeline's statuses in order, and the error codes of its 'retrying' events."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            """
            SELECT m.id,
                   array_agg(e.status ORDER BY e.id) AS events,
                   array_remove(array_agg(CASE WHEN e.status = 'retrying' THEN e.error_code END), NULL)
                       AS retry_codes
              FROM messages m
              JOIN message_events e ON e.message_id = m.id
             WHERE m.direction = 'out'
             GROUP BY m.id
            """
        ).fetchall()


def dead_letter_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        return int(row[0]) if row else 0
