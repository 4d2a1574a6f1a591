"""Chaos: ``kill -9`` the notify worker in the middle of its batches.

A notify worker (4 threads, as the Procfile runs it) sends 400 stored messages to the fake Twilio API,
paced at 40/s, so its batches hold hundreds of claimed messages that wait for their pacing slots. It is
SIGKILLed once a quarter of them have reached the provider. Then time passes for the sweep (the rows are
aged past the send lease and the overdue grace, instead of waiting minutes) and a new worker finishes.

What must hold: no recipient gets a message twice; every message ends sent (the provider has it exactly
once) or, where the dead worker may have reached the provider, failed as ``outcome_unknown`` with a dead
letter (the provider has it at most once). Those are only the sends booked or in flight at the kill, and
those answered in the chunk of outcomes not yet written (a batch writes them as they come, about every
half second): the claims the worker had not yet put to the provider are proved unsent (``unsent_claim``)
and sent later, and the sends answered before that chunk are recorded sent, rather than dead-lettered for
an operator as whole batches used to be.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.fakes.twilio_api import FakeTwilioAPI
from tests.integration.test_notify_pacing import queue_messages
from workers import notify

MESSAGES = 400
SEND_RATE = 40
KILL_AFTER = MESSAGES // 4


def time_passes(database_url: str) -> dict[str, int]:
    """What the sweep does once the send lease and the overdue grace have run out."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE messages SET updated_at = now() - interval '1 hour', send_after = NULL"
            " WHERE direction = 'out' AND status IN ('queued', 'sending')"
        )
    return notify.sweep()


def outcomes(database_url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT c.phone, m.status, m.error_code, EXISTS (SELECT 1 FROM dead_letters d"
            " WHERE d.message_id = m.id) AS dead_letter"
            " FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.direction = 'out'"
        ).fetchall()
    return {row["phone"]: row for row in rows}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_notify_worker_sends_nothing_twice_and_loses_nothing(
    db: Any,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    database_url, redis_url = test_servers["WAPIPE_DATABASE_URL"], test_servers["WAPIPE_REDIS_URL"]
    with FakeTwilioAPI() as fake:
        env = {**fake.credentials_env(), "WAPIPE_SEND_RATE": str(SEND_RATE)}
        worker = start_worker(["notify"], concurrency=4, env=env, pool="threads")
        queue_messages(redis_url, MESSAGES, prefix="+1212")
        wait_for(lambda: len(fake.created()) >= KILL_AFTER, timeout=120, what=f"{KILL_AFTER} sends")
        worker.kill()
        sent_before_kill = len(fake.created())

        swept = time_passes(database_url)
        start_worker(["notify"], concurrency=4, env=env, pool="threads")
        final = ("sent", "failed")
        wait_for(
            lambda: all(row["status"] in final for row in outcomes(database_url).values()),
            timeout=180,
            interval=0.5,
            what="every message sent or failed",
        )

    received = collections.Counter(r.form["To"].removeprefix("whatsapp:") for r in fake.created())
    assert max(received.values()) == 1, "a recipient got a message twice"
    unknown = []
    for number, row in outcomes(database_url).items():
        if row["status"] == "sent":
            assert received[number] == 1
        else:
            assert (row["error_code"], row["dead_letter"]) == ("outcome_unknown", True)
            unknown.append(number)
    assert len(outcomes(database_url)) == MESSAGES
    # The kill came with most of the claimed batches still waiting for their slots: those went back to
    # the queue. Unknown are only the sends booked or awaiting the provider's answer at that moment.
    assert sent_before_kill < MESSAGES
    assert swept["returned"] > len(unknown), (swept, unknown)
    assert swept["abandoned"] == len(unknown)
    # What the provider answered was written a chunk at a time, so unknown are about half a second of the
    # rate (the chunk not yet written) and the few sends booked or in flight. Two seconds of the rate (a
    # whole batch here) is far more: writing a batch only once it ended left up to every batch unknown.
    assert len(unknown) < 2 * SEND_RATE, (swept, unknown)
