"""status.apply: delivery receipts move a message's status forward only; the timeline keeps every one."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from celery.exceptions import Retry
from psycopg.rows import dict_row

from ingress import create_app
from shared.db import messages, sending
from shared.providers.console import ConsoleSender
from shared.queues import OUTAGE_MAX_RETRIES
from shared.settings import load_settings
from shared.wire.events import DeliveryStatus, StatusUpdate
from tests.integration.test_notify_send import a_reply, message, statuses
from workers import status
from workers.notify import dispatch
from workers.status import apply, apply_task

WAITING_ON_A_LOCK = """
SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


def receipt(sid: str, status: str, seconds: int, **extra: object) -> dict:
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return StatusUpdate(
        provider="console", provider_message_id=sid, status=status, at=at, **extra
    ).model_dump(mode="json")


def a_sent_message(db, redis_client) -> tuple[int, str]:
    message_id = a_reply()
    assert dispatch(message_id, sender=ConsoleSender(redis_client)) == "sent"
    return message_id, message(db, message_id)["provider_message_id"]


def test_read_before_delivered_leaves_read_and_both_in_the_timeline(db, redis_client) -> None:
    message_id, sid = a_sent_message(db, redis_client)

    read = apply(receipt(sid, "read", 20))
    delivered = apply(receipt(sid, "delivered", 10))

    assert (read.changed, delivered.changed) == (True, False)
    assert message(db, message_id)["status"] == "read"
    # Ordered by when each happened, not when it arrived.
    assert statuses(db, message_id) == ["queued", "sent", "read", "delivered"]
    timeline = db.execute(
        "SELECT status FROM message_events WHERE message_id = %s ORDER BY at, id", (message_id,)
    ).fetchall()
    assert [row["status"] for row in timeline][-2:] == ["delivered", "read"]


def test_failed_is_final_and_keeps_the_error_code(db, redis_client) -> None:
    message_id, sid = a_sent_message(db, redis_client)

    apply(receipt(sid, "undelivered", 5, error_code="63016", error_message="outside the 24h window"))
    late = apply(receipt(sid, "delivered", 6))

    assert late.changed is False
    row = message(db, message_id)
    assert (row["status"], row["error_code"], row["error_message"]) == (
        "undelivered",
        "63016",
        "outside the 24h window",
    )


def test_a_failure_wins_over_a_delivery_in_either_order(db, redis_client) -> None:
    # Two status workers may apply a message's receipts in either order: the outcome must not depend on it.
    outcomes = []
    for first, second in (("delivered", "failed"), ("failed", "delivered")):
        message_id, sid = a_sent_message(db, redis_client)
        for index, name in enumerate((first, second)):
            apply(receipt(sid, name, 5 + index, **({"error_code": "131000"} if name == "failed" else {})))
        row = message(db, message_id)
        outcomes.append((row["status"], row["error_code"]))

    assert outcomes == [("failed", "131000"), ("failed", "131000")]


def test_the_same_receipt_twice_changes_nothing_more(db, redis_client) -> None:
    message_id, sid = a_sent_message(db, redis_client)
    assert apply(receipt(sid, "delivered", 1)).changed is True
    assert apply(receipt(sid, "delivered", 1)).changed is False
    assert message(db, message_id)["status"] == "delivered"


def test_a_receipt_for_an_unknown_message_is_reported(db, redis_client) -> None:
    assert apply(receipt("console-unknown", "delivered", 1)) is None


def test_an_unknown_status_only_lands_in_the_timeline(db, redis_client) -> None:
    message_id, sid = a_sent_message(db, redis_client)
    applied = apply(receipt(sid, "warming-up", 1))
    assert applied.changed is False
    assert message(db, message_id)["status"] == "sent"
    assert statuses(db, message_id)[-1] == "unknown"


def test_a_receipt_waiting_on_a_racing_one_never_moves_back(db, redis_client, test_servers) -> None:
    """The one-statement apply re-checks the rank on the row it waited for, so the lower receipt that
    lost the race is only recorded in the timeline."""
    message_id, sid = a_sent_message(db, redis_client)
    update = StatusUpdate.model_validate(receipt(sid, "delivered", 1))
    results: list[object] = []

    with psycopg.connect(test_servers["WAPIPE_DATABASE_URL"], row_factory=dict_row) as racing:
        read = sending.apply_status(
            racing, provider="console", provider_message_id=sid, status=DeliveryStatus("read")
        )
        assert read is not None
        assert read.changed  # not committed yet: it holds the row
        waiting = threading.Thread(target=lambda: results.append(apply(update.model_dump(mode="json"))))
        waiting.start()
        for _ in range(500):
            if db.execute(WAITING_ON_A_LOCK).fetchone()["n"]:
                break  # the second receipt waits for the first one's row lock
            time.sleep(0.01)
        else:
            raise AssertionError("the second receipt never waited for the first")
        racing.commit()
    waiting.join(timeout=30)

    [delivered] = results
    assert delivered.changed is False
    assert message(db, message_id)["status"] == "read"
    assert sorted(statuses(db, message_id)) == ["delivered", "queued", "read", "sent"]


# --- a receipt ahead of its provider id, after an outage -------------------------------------------------


def test_a_receipt_retried_through_an_outage_still_waits_for_its_provider_id(
    clean, db, redis_client, start_worker, wait_for
) -> None:
    """A receipt's task that Celery already retried through a database outage (its ``retries`` count
    spent on the outage, not on looking for the id) arrives before notify records the provider id: it
    keeps looking for the id as long as any receipt does, and moves the message once the id lands."""
    message_id = a_reply()
    sid = "console-arrived-first"
    # As Celery's autoretry republishes it after as many failures on the database as it may look for an id.
    apply_task.apply_async(
        kwargs={"event": receipt(sid, "delivered", 1)}, retries=status.UNKNOWN_MESSAGE_RETRIES
    )
    worker = start_worker(["status"])
    wait_for(lambda: looked_for_an_unknown_id(worker.lines()), what="the receipt's first look for its id")

    # notify records the provider's answer, with the statements its batch uses.
    [record] = sending.claim(db, message_id, 0).batch
    sending.settle(db, claim=record.sending_claim, sent=[(message_id, "console", sid)])

    wait_for(lambda: message(db, message_id)["status"] == "delivered", what="the receipt applied")
    assert statuses(db, message_id) == ["queued", "sent", "delivered"]


def looked_for_an_unknown_id(lines: list[str]) -> bool:
    return any("status.apply" in line and "unknown" in line for line in lines)


def looked_again(redis_client, event: dict, retries: int, looked: int) -> dict | None:
    """Run the receipt's task on a request as a worker builds it from a message that Celery retried
    ``retries`` times, ``looked`` of them for an unknown id; the headers of the retry it published to the
    real broker, None when it published none."""
    apply_task.push_request(
        id=str(uuid.uuid4()),
        args=[],
        kwargs={"event": event},
        retries=retries,
        called_directly=False,
        delivery_info={"exchange": "", "routing_key": "status"},
        **{status.UNKNOWN_ID_RETRIES_HEADER: looked},
    )
    try:
        apply_task.run(event)
    except Retry:
        [published] = [json.loads(raw) for raw in redis_client.lrange("status", 0, -1)]
        return published["headers"]
    finally:
        apply_task.pop_request()
    return None


def test_a_receipt_counts_its_looks_for_the_id_apart_from_its_outage_retries(clean, db, redis_client) -> None:
    event = receipt("console-not-ours", "delivered", 1)

    headers = looked_again(redis_client, event, retries=12, looked=2)  # twelve outage retries

    # A look is not an outage retry: Celery's count, which bounds those, stays.
    assert headers is not None
    assert (headers["retries"], headers[status.UNKNOWN_ID_RETRIES_HEADER]) == (12, 3)
    redis_client.delete("status")
    # Through an outage as long as its retries allow, it still gets every look.
    headers = looked_again(redis_client, event, retries=OUTAGE_MAX_RETRIES, looked=2)
    assert headers is not None
    assert (headers["retries"], headers[status.UNKNOWN_ID_RETRIES_HEADER]) == (OUTAGE_MAX_RETRIES, 3)
    redis_client.delete("status")
    # Its looks spent, it is dropped: receipts for messages we never sent are normal.
    assert looked_again(redis_client, event, retries=1, looked=status.UNKNOWN_MESSAGE_RETRIES) is None
    assert redis_client.llen("status") == 0


def receipt_at(sid: str, status: str, at: datetime) -> dict:
    return StatusUpdate(provider="console", provider_message_id=sid, status=status, at=at).model_dump(
        mode="json"
    )


def api_timeline(message_id: int) -> list[str]:
    client = create_app(load_settings(api_keys="timeline-key")).test_client()
    body = client.get(f"/api/v1/messages/{message_id}", headers={"X-API-Key": "timeline-key"}).get_json()
    return [event["status"] for event in body["timeline"]]


def test_receipts_stamped_before_our_sent_event_still_follow_it_in_the_timeline(db, redis_client) -> None:
    # Our 'sent' is the database's time once the provider call returned and the batch settled; a receipt
    # carries the provider's time (Meta's in whole seconds): a quick delivery can be stamped earlier.
    message_id, sid = a_sent_message(db, redis_client)
    sent = db.execute(
        "SELECT at FROM message_events WHERE message_id = %s AND status = 'sent'", (message_id,)
    ).fetchone()["at"]

    apply(receipt_at(sid, "read", sent - timedelta(seconds=1)))
    apply(receipt_at(sid, "delivered", sent - timedelta(seconds=2)))
    apply(receipt_at(sid, "sent", sent - timedelta(seconds=3)))  # the provider's own "sent" receipt

    assert api_timeline(message_id) == ["queued", "sent", "sent", "delivered", "read"]


def test_a_replayed_message_shows_its_failure_before_the_replay(db, redis_client) -> None:
    message_id, sid = a_sent_message(db, redis_client)
    db.execute("DELETE FROM message_events WHERE message_id = %s AND status = 'sent'", (message_id,))
    start = db.execute("SELECT at FROM message_events WHERE message_id = %s", (message_id,)).fetchone()["at"]
    for state, seconds, detail in [
        ("retrying", 1, "timeout"),
        ("failed", 2, "timeout"),
        ("queued", 3, "replayed"),
        ("sent", 4, None),
    ]:
        messages.add_event(db, message_id, state, detail=detail, at=start + timedelta(seconds=seconds))
    apply(receipt_at(sid, "delivered", start + timedelta(seconds=3.5)))

    assert api_timeline(message_id) == ["queued", "retrying", "failed", "queued", "sent", "delivered"]


def test_a_receipt_naming_an_inbound_message_leaves_it_alone(db, redis_client) -> None:
    """Receipts are for messages we sent: one whose id is an inbound message's (a provider's mix-up, or
    a forged id) must not move that message's status, nor add to its timeline."""
    a_reply()
    row = db.execute(
        "SELECT id, provider, provider_message_id, status FROM messages WHERE direction = 'in'"
    ).fetchone()

    applied = sending.apply_status(
        db,
        provider=row["provider"],
        provider_message_id=row["provider_message_id"],
        status=DeliveryStatus.read,
    )

    assert applied is None
    assert message(db, row["id"])["status"] == row["status"]
    assert statuses(db, row["id"]) == []
