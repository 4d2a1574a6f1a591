"""Outbound pacing with real notify worker processes sending batches through the Twilio path to a fake
Twilio API that records when each request arrived: the configured rate holds in every one-second window
across processes, each message goes out once, Retry-After stops the whole sender number, and a permanent
error is never retried."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from shared.db import outbound_api
from shared.db.outbound_api import NewOutbound
from shared.db.pool import connection
from shared.queues import Job, Publisher
from tests.fakes.twilio_api import FakeTwilioAPI, busiest_second

RATE = 50
WORKERS = 2


@pytest.fixture
def fake() -> Iterator[FakeTwilioAPI]:
    with FakeTwilioAPI() as api:
        yield api


def arrivals(fake: FakeTwilioAPI) -> list[tuple[float, str, int]]:
    """(when it arrived, To, status answered) per request."""
    return [(r.arrived, r.form.get("To", ""), r.status) for r in fake.requests()]


def queue_messages(redis_url: str, count: int, prefix: str = "+1415") -> list[int]:
    """``count`` texts, each to its own recipient who wrote a minute ago (inside the 24-hour window), and
    their notify.send jobs, as the notify API stores and enqueues them."""
    ids = store_messages(count, prefix)
    Publisher(redis_url).publish([Job("notify.send", {"message_id": message_id}) for message_id in ids])
    return ids


def store_messages(count: int, prefix: str = "+1415") -> list[int]:
    """The texts of :func:`queue_messages`, stored without their jobs (for a test that runs the task)."""
    phones = [f"{prefix}{5550000 + index:07d}" for index in range(count)]
    requests = [
        NewOutbound(
            phone=phone,
            idempotency_key=f"pacing-test:{prefix}:{index}",
            provider="twilio",
            type="text",
            body=f"Your ticket #{index} was updated.",
            payload={},
            request_hash=f"pacing-test:{index}",
        )
        for index, phone in enumerate(phones)
    ]
    with connection() as conn:
        ids = [stored.id for stored in outbound_api.accept_many(conn, requests)]
        conn.execute("UPDATE contacts SET last_inbound_at = now() WHERE phone = ANY(%s)", (phones,))
    return ids


def settled(db: psycopg.Connection, ids: list[int]) -> list[dict] | None:
    rows = db.execute(
        "SELECT id, status, error_code, attempts FROM messages WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    return rows if all(row["status"] in ("sent", "failed") for row in rows) else None


def start_senders(start_worker, fake: FakeTwilioAPI, pool: str = "prefork") -> None:
    env = {
        **fake.credentials_env(),
        "WAPIPE_SEND_RATE": str(RATE),
        "WAPIPE_PUBLIC_URL": "https://bot.example",
    }
    for _ in range(WORKERS):
        start_worker(["notify"], concurrency=2 if pool == "prefork" else 4, env=env, pool=pool)


# threads: how the Procfile and `wapipe up` run notify (its batches wait on the provider, not the CPU).
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_two_workers_never_exceed_the_rate_in_any_second_and_send_each_message_once(
    db, redis_client, start_worker, wait_for, fake, test_servers, pool
) -> None:
    start_senders(start_worker, fake, pool)
    ids = queue_messages(test_servers["WAPIPE_REDIS_URL"], 500)

    rows = wait_for(lambda: settled(db, ids), timeout=90, what="all 500 messages to be sent")

    assert Counter(row["status"] for row in rows) == {"sent": 500}
    created = fake.created()
    assert len(created) == 500
    assert len({request.form["To"] for request in created}) == 500  # each recipient once
    assert len(fake.requests()) == 500  # nothing refused, nothing retried
    assert busiest_second(fake.arrival_times()) <= RATE
    events = db.execute(
        "SELECT count(*) AS n FROM message_events WHERE status = 'sent' AND message_id = ANY(%s)", (ids,)
    ).fetchone()
    assert events["n"] == 500


def test_retry_after_stops_every_send_from_the_number_until_it_passes(
    db, redis_client, start_worker, wait_for, fake, test_servers
) -> None:
    retry_after = 2.0
    fake.respond(429, code=20429, message="Too Many Requests", retry_after=retry_after)
    start_senders(start_worker, fake)
    ids = queue_messages(test_servers["WAPIPE_REDIS_URL"], 80)

    rows = wait_for(lambda: settled(db, ids), timeout=60, what="all messages to be sent")

    assert Counter(row["status"] for row in rows) == {"sent": 80}
    assert len({request.form["To"] for request in fake.created()}) == 80
    [(throttled_at, throttled_to, _)] = [a for a in arrivals(fake) if a[2] == 429]
    # Sends already on their way when the 429 was answered (slots are booked at most 50 ms ahead) may
    # still arrive just after it; after that, nothing until Retry-After has passed.
    in_flight = 0.25
    too_soon = [
        at for at in fake.arrival_times() if throttled_at + in_flight < at < throttled_at + retry_after
    ]
    assert too_soon == []
    # The throttled message itself was sent again, once, no sooner.
    retried = [at for at, to, status in arrivals(fake) if to == throttled_to and status == 201]
    assert len(retried) == 1
    assert retried[0] >= throttled_at + retry_after
    assert busiest_second(fake.arrival_times()) <= RATE


def test_a_permanent_error_fails_the_message_once_and_is_never_retried(
    db, redis_client, start_worker, wait_for, fake, test_servers
) -> None:
    fake.respond(400, code=21211, message="Invalid 'To' Phone Number")
    start_senders(start_worker, fake)
    ids = queue_messages(test_servers["WAPIPE_REDIS_URL"], 10)

    rows = wait_for(lambda: settled(db, ids), timeout=60, what="all messages to be settled")

    [failed] = [row for row in rows if row["status"] == "failed"]
    assert (failed["error_code"], failed["attempts"]) == ("21211", 1)
    assert sum(row["status"] == "sent" for row in rows) == 9
    refused_to = [a[1] for a in arrivals(fake) if a[2] == 400]
    # Every notify.send job has run (the queue is empty) and the refused recipient was asked once only.
    wait_for(lambda: redis_client.llen("notify") == 0, what="the notify queue to drain")
    assert [a[1] for a in arrivals(fake)].count(refused_to[0]) == 1
    assert len(fake.requests()) == 10
