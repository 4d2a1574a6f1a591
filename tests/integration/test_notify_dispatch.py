"""notify.send's batch path (``workers.notify.dispatch``) in-process, against real PostgreSQL and Redis with
the console provider: the one-statement claim takes the task's own message and other due ones once each,
and tells a task whose message it could not take why (sent, in another batch, not due, left by a dead
worker); the one-statement settle records every outcome with its timeline event."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import threading
import time
from datetime import datetime

import kombu.exceptions
import pytest
import tenacity

from shared.db import messages as messages_db
from shared.db import sending
from shared.db.errors import Unavailable
from shared.db.messages import Release
from shared.db.pool import autocommit_connection
from shared.providers.base import SendResult
from shared.providers.console import ConsoleSender
from shared.ratelimit import RateLimiter
from shared.replies import queue_reply
from shared.settings import load_settings
from tests.integration.test_inbound_routing import event
from tests.integration.test_notify_send import message, statuses
from workers import notify
from workers.inbound import route
from workers.notify import RetryLater, dispatch, dispatch_many


def a_reply_to(phone: str, text: str = "Hi!") -> int:
    inbound = route(event("hello", phone=phone), load_settings())
    assert inbound.message_id is not None
    return queue_reply(inbound.message_id, text)


def replies(count: int) -> list[int]:
    return [a_reply_to(f"+1555300{index:04d}") for index in range(count)]


# What workers.notify adds to every wait it hands Celery, so tasks due together do not all come back at once.
JITTER_SECONDS = 0.5


def db_clock(db) -> datetime:
    """PostgreSQL's clock, which stamps send_after: waits are checked against readings taken around the
    call, not against fixed margins a slow machine could overrun."""
    return db.execute("SELECT clock_timestamp() AS now").fetchone()["now"]


def redis_clock(redis_client) -> float:
    """Redis's clock in seconds, which times the pacing windows."""
    seconds, micros = redis_client.time()
    return seconds + micros / 1_000_000


def sent_count(db) -> int:
    return db.execute("SELECT count(*) AS n FROM message_events WHERE status = 'sent'").fetchone()["n"]


def test_one_task_sends_its_message_and_the_other_due_ones_each_once(db, redis_client) -> None:
    own, *others = replies(4)
    sender = ConsoleSender(redis_client)

    assert dispatch(own, sender=sender) == "sent"

    for message_id in (own, *others):
        row = message(db, message_id)
        assert (row["status"], row["attempts"]) == ("sent", 1)
        assert statuses(db, message_id) == ["queued", "sent"]
    assert {message(db, i)["claimed_by"] for i in others} == {own}
    # The others' own jobs then find them sent and send nothing more.
    assert [dispatch(i, sender=sender) for i in others] == ["skipped"] * 3
    assert dispatch(own, sender=sender) == "skipped"
    assert sent_count(db) == 4


def test_a_message_in_another_tasks_batch_is_left_to_that_task(db, redis_client) -> None:
    claimer, other = replies(2)
    db.execute(
        "UPDATE messages SET status = 'sending', claimed_by = %s, attempts = 1 WHERE id IN (%s, %s)",
        (claimer, claimer, other),
    )

    assert dispatch(other, sender=ConsoleSender(redis_client)) == "claimed"

    row = message(db, other)
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("sending", 1, claimer)
    assert sent_count(db) == 0


def test_a_message_not_due_yet_is_neither_claimed_nor_claims_others(db, redis_client) -> None:
    own, other = replies(2)
    db.execute("UPDATE messages SET send_after = now() + interval '30 seconds' WHERE id = %s", (own,))

    before = db_clock(db)
    with pytest.raises(RetryLater) as later:
        dispatch(own, sender=ConsoleSender(redis_client))
    after = db_clock(db)

    # Its job comes back when the message is due, counted from when the claim looked at it.
    due = message(db, own)["send_after"]
    earliest, latest = (due - after).total_seconds(), (due - before).total_seconds() + JITTER_SECONDS
    assert earliest <= later.value.countdown <= latest
    for message_id in (own, other):
        row = message(db, message_id)
        assert (row["status"], row["attempts"]) == ("queued", 0)


def test_a_batched_job_sends_each_of_its_messages_once_and_gives_one_not_due_a_job_of_its_own(
    db, redis_client
) -> None:
    first, done, batched, not_due, elsewhere = replies(5)
    db.execute("UPDATE messages SET status = 'sent' WHERE id = %s", (done,))
    db.execute("UPDATE messages SET send_after = now() + interval '30 seconds' WHERE id = %s", (not_due,))
    db.execute("UPDATE messages SET status = 'sending', claimed_by = %s WHERE id = %s", (done, elsewhere))

    outcomes = dispatch_many(
        [first, done, batched, not_due, elsewhere, 10**12], sender=ConsoleSender(redis_client)
    )

    # The first claim took the other due message with its own; the one already sent and the one in
    # another task's batch are left alone.
    assert outcomes == {
        first: "sent",
        batched: "batched",
        done: "skipped",
        not_due: "later",
        elsewhere: "claimed",
        10**12: "missing",
    }
    assert sent_count(db) == 2
    for message_id in (first, batched):
        row = message(db, message_id)
        assert (row["status"], row["attempts"], row["claimed_by"]) == ("sent", 1, first)
    assert (message(db, not_due)["status"], message(db, not_due)["attempts"]) == ("queued", 0)
    # Due in 30 s: its own notify.send, with Celery's countdown (the others are the replies' own jobs).
    jobs = map(json.loads, redis_client.lrange("notify", 0, -1))
    [envelope] = [job for job in jobs if job["headers"]["eta"]]
    task, kwargs = envelope["headers"]["task"], json.loads(base64.b64decode(envelope["body"]))[1]
    assert (task, kwargs) == ("notify.send", {"message_id": not_due})

    # Delivered again (acks_late): nothing is sent twice.
    again = dispatch_many([first, done, batched], sender=ConsoleSender(redis_client))
    assert again == {first: "skipped", done: "skipped", batched: "skipped"}
    assert sent_count(db) == 2


def test_an_unknown_or_inbound_id_is_missing(db, redis_client) -> None:
    inbound = route(event("hello", phone="+15553009999"), load_settings())

    assert dispatch(10**12, sender=ConsoleSender(redis_client)) == "missing"
    assert dispatch(inbound.message_id, sender=ConsoleSender(redis_client)) == "missing"


def test_a_claim_left_by_a_dead_worker_is_dead_lettered_past_the_lease(db, redis_client) -> None:
    own, other = replies(2)
    db.execute(
        "UPDATE messages SET status = 'sending', claimed_by = %s, attempts = 1 WHERE id IN (%s, %s)",
        (own, own, other),
    )
    sender = ConsoleSender(redis_client)

    with pytest.raises(RetryLater):  # within the lease: its batch may still be running
        dispatch(own, sender=sender)
    db.execute(
        "UPDATE messages SET updated_at = now() - make_interval(secs => %s)", (notify.SEND_LEASE_SECONDS + 5,)
    )
    assert dispatch(own, sender=sender) == "dead"

    for message_id in (own, other):
        row = message(db, message_id)
        assert (row["status"], row["error_code"]) == ("failed", "outcome_unknown")
    letters = db.execute("SELECT message_id FROM dead_letters ORDER BY message_id").fetchall()
    assert [letter["message_id"] for letter in letters] == [own, other]
    assert sent_count(db) == 0


def notify_jobs_in_redis(redis_client) -> list[tuple[str, dict]]:
    envelopes = map(json.loads, redis_client.lrange("notify", 0, -1))
    return [
        (envelope["headers"]["task"], json.loads(base64.b64decode(envelope["body"]))[1])
        for envelope in envelopes
    ]


def past_the_lease(db) -> None:
    db.execute(
        "UPDATE messages SET updated_at = now() - make_interval(secs => %s) WHERE status = 'sending'",
        (notify.SEND_LEASE_SECONDS + 5,),
    )


def test_a_dead_workers_sends_that_never_reached_the_provider_go_back_to_the_queue(db, redis_client) -> None:
    own, booked, *waiting = replies(4)
    # A worker claimed all four, booked one for its provider call, and died with the rest waiting.
    with autocommit_connection() as conn:
        batch = sending.claim(conn, own, 10).batch
        claims = {record.id: record.unsent_claim for record in batch}
        assert sending.calling(conn, [(booked, claims[booked])]) == {booked}
    assert len(batch) == 4
    assert None not in claims.values()
    past_the_lease(db)
    redis_client.delete("notify")

    assert dispatch(own, sender=ConsoleSender(redis_client)) == "returned"

    for message_id in (own, *waiting):
        row = message(db, message_id)
        assert (row["status"], row["attempts"], row["unsent_claim"]) == ("queued", 0, None)
    row = message(db, booked)
    assert (row["status"], row["error_code"]) == ("failed", "outcome_unknown")
    letters = db.execute("SELECT message_id FROM dead_letters").fetchall()
    assert [letter["message_id"] for letter in letters] == [booked]
    # Their job is published again, and they are then sent once each.
    assert notify_jobs_in_redis(redis_client) == [("notify.send_many", {"message_ids": [own, *waiting]})]
    assert dispatch_many([own, *waiting], sender=ConsoleSender(redis_client))[own] == "sent"
    assert [message(db, i)["status"] for i in (own, *waiting)] == ["sent"] * 3
    assert sent_count(db) == 3


def unsent_marks(db, ids: list[int]) -> list[int | None]:
    rows = db.execute("SELECT unsent_claim FROM messages WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()
    return [row["unsent_claim"] for row in rows]


def test_sends_waiting_out_a_retry_after_are_marked_unsent_again(db, redis_client, monkeypatch) -> None:
    monkeypatch.setattr(notify, "_pacers", {})
    settings = load_settings()
    sender = ConsoleSender(redis_client)
    own, *_ = replies(3)
    with autocommit_connection() as conn:
        batch = sending.claim(conn, own, 10).batch
    ids = sorted(record.id for record in batch)
    claims = unsent_marks(db, ids)
    # The provider asked the number to wait: the batch's first booking, its marks cleared just before it,
    # books nothing, and the sends wait seconds for the next.
    for record in batch:
        from_number = record.business_number if record.conversation_provider == sender.name else None
        RateLimiter(redis_client).block_sender(notify._pace_key(settings, sender.name, from_number), 4.0)
    cleared = threading.Event()
    calling = notify._calling

    def clear_then_tell(sends: list, provider: str) -> set[int]:
        held = calling(sends, provider)
        cleared.set()
        return held

    monkeypatch.setattr(notify, "_calling", clear_then_tell)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(notify._send_batch, batch, settings, sender)
        assert cleared.wait(10)

        # A worker dying now must leave them unsent (back to the queue), not outcome unknown.
        deadline = time.monotonic() + 2.5
        marks = unsent_marks(db, ids)
        while marks != claims and time.monotonic() < deadline:
            time.sleep(0.02)
            marks = unsent_marks(db, ids)
        assert marks == claims
        assert not running.done()

        notify._settle(running.result(timeout=30))
    # Once the wait is over they are sent, once each.
    assert [message(db, i)["status"] for i in ids] == ["sent"] * 3
    assert sent_count(db) == 3


def test_the_sweep_returns_unsent_claims_and_fails_the_rest(db, redis_client) -> None:
    first, second = replies(2)
    with autocommit_connection() as conn:
        [record, _] = sending.claim(conn, first, 1).batch
        sending.calling(conn, [(record.id, record.unsent_claim)])
    past_the_lease(db)

    assert notify.sweep() == {"abandoned": 1, "returned": 1, "requeued": 0}

    assert [message(db, i)["status"] for i in (first, second)] == ["failed", "queued"]


def _outbound(db, status: str, due_in: float | None, changed_ago: float = 0.0) -> int:
    """An outbound message due in ``due_in`` seconds (None: no send_after), last changed ``changed_ago``
    seconds ago."""
    return db.execute(
        "INSERT INTO messages (direction, provider, body, status, send_after, updated_at)"
        " VALUES ('out', 'twilio', 'hi', %s, now() + make_interval(secs => %s),"
        " now() - make_interval(secs => %s)) RETURNING id",
        (status, due_in, changed_ago),
    ).fetchone()["id"]


def test_the_sweep_finds_the_queued_messages_long_due_and_no_other(db) -> None:
    grace = notify.OVERDUE_SECONDS
    lost = _outbound(db, "queued", None, changed_ago=grace + 60)
    long_due = _outbound(db, "queued", -(grace + 60), changed_ago=grace + 600)
    _outbound(db, "queued", None)  # just queued: its job is on its way
    _outbound(db, "queued", -(grace - 60), changed_ago=grace + 600)  # due, but only just
    _outbound(db, "queued", 3600, changed_ago=grace + 600)  # backed off, changed long ago
    _outbound(db, "sending", None, changed_ago=grace + 60)  # the lease's business, not this one

    with autocommit_connection() as conn:
        assert messages_db.overdue_queued(conn, grace_seconds=grace) == [lost, long_due]


def _scan_of(plan: dict, index: str) -> dict:
    if plan.get("Index Name") == index:
        return plan
    for child in plan.get("Plans", []):
        found = _scan_of(child, index)
        if found:
            return found
    return {}


def test_the_sweep_passes_over_backed_off_messages_without_reading_them(db) -> None:
    for _ in range(200):
        _outbound(db, "queued", 3600, changed_ago=3600)
    _outbound(db, "queued", None, changed_ago=3600)  # lost: the one row found
    _outbound(db, "queued", None)  # just queued: read to see when it last changed, and left
    # The plan at scale (tables this small are read whole otherwise), run: its counts say which rows were
    # read from the table. A bitmap scan would read them in the table's order, then sort.
    db.execute("SET enable_seqscan = off")
    db.execute("SET enable_bitmapscan = off")
    try:
        [plan] = db.execute(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, FORMAT JSON) " + messages_db._OVERDUE,
            {"grace": notify.OVERDUE_SECONDS, "limit": 1000},
        ).fetchone()["QUERY PLAN"]
    finally:
        db.execute("RESET enable_seqscan")
        db.execute("RESET enable_bitmapscan")
    scan = _scan_of(plan["Plan"], "messages_outbound_queued_due")

    assert scan["Actual Rows"] == 1
    # Before: the 200 backed-off messages were each read from the table to see their send_after, and
    # dropped there; migration 0016's index holds it beside the id, so only the two rows without a
    # send_after are read, and the just-queued one dropped.
    assert scan.get("Rows Removed by Filter", 0) == 1


def test_a_worker_past_its_lease_withdraws_the_sends_taken_back_from_it(db, redis_client) -> None:
    own, other = replies(2)
    with autocommit_connection() as conn:
        batch = sending.claim(conn, own, 1).batch
    past_the_lease(db)
    assert notify.sweep()["returned"] == 2
    redis_client.delete("notify")
    # The worker was only stalled: it now goes on with the batch it claimed, and must send none of it
    # (the rows are queued again, another claim may hold them by now), nor settle any.
    with autocommit_connection() as conn:
        assert sending.calling(conn, [(r.id, r.unsent_claim) for r in batch]) == set()
        sending.claim(conn, other, 0)  # another task's claim has the other one now
    sender = ConsoleSender(redis_client)

    outcomes = notify._send_batch(batch, load_settings(), sender)

    assert (outcomes.sent, outcomes.released, outcomes.failed) == ([], [], [])
    assert sent_count(db) == 0
    assert (message(db, own)["status"], message(db, other)["status"]) == ("queued", "sending")


def test_settle_records_every_kind_of_outcome_in_one_statement(db, redis_client) -> None:
    sent, failed, retried, paced, elsewhere = replies(5)
    with autocommit_connection() as conn:
        [claim] = {record.sending_claim for record in sending.claim(conn, sent, 10).batch}
    db.execute("UPDATE messages SET status = 'failed' WHERE id = %s", (elsewhere,))

    with autocommit_connection() as conn:
        failed_now = sending.settle(
            conn,
            claim=claim,
            sent=[(sent, "console", "console-1")],
            failed=[(failed, "21211", "invalid number"), (elsewhere, "x", "already settled")],
            released=[Release(retried, 30.0, True, "503", "unavailable"), Release(paced, 2.0, False)],
        )

    assert failed_now == [failed]
    assert (message(db, sent)["status"], message(db, sent)["provider_message_id"]) == ("sent", "console-1")
    assert statuses(db, sent) == ["queued", "sent"]
    assert (message(db, failed)["status"], message(db, failed)["error_code"]) == ("failed", "21211")
    assert statuses(db, failed) == ["queued", "failed"]
    row = message(db, retried)
    assert (row["status"], row["attempts"], row["error_code"]) == ("queued", 1, "503")
    assert statuses(db, retried) == ["queued", "retrying"]
    row = message(db, paced)
    assert (row["status"], row["attempts"]) == ("queued", 0)  # a pacing wait costs no attempt
    assert statuses(db, paced) == ["queued"]
    assert message(db, elsewhere)["error_code"] is None
    due = db.execute(
        "SELECT id FROM messages WHERE send_after > now() + interval '20 seconds' ORDER BY id"
    ).fetchall()
    assert [row["id"] for row in due] == [retried]


def test_the_autocommit_connection_goes_back_to_the_pool_transactional(db, redis_client) -> None:
    from shared.db.pool import connection

    with autocommit_connection() as conn:
        assert conn.autocommit
    with connection() as conn:
        assert not conn.autocommit


# --- pacing: the recipient window is counted in the same call that books the sender's slots -------------


def test_a_recipient_over_its_limit_waits_and_is_counted_once(db, redis_client, monkeypatch) -> None:
    monkeypatch.setattr(notify, "_pacers", {})  # a pacer keeps the settings it was made with
    settings = load_settings(recipient_rate_per_minute=2)
    own, second, third = (a_reply_to("+15553100000", text) for text in ("one", "two", "three"))
    other_recipient = a_reply_to("+15553100001")
    sender = ConsoleSender(redis_client)

    # A batch takes one message per recipient (tests/integration/test_notify_order.py): three jobs.
    assert dispatch(own, settings=settings, sender=sender) == "sent"
    assert dispatch(second, settings=settings, sender=sender) == "sent"
    db_before, redis_before = db_clock(db), redis_clock(redis_client)
    with pytest.raises(RetryLater) as later:
        dispatch(third, settings=settings, sender=sender)
    db_after, redis_after = db_clock(db), redis_clock(redis_client)

    # It waits until the older of the two sends counted leaves the recipient's minute, as Redis measured
    # it during the call (to the millisecond), and is due in the database then too.
    [(_, oldest_ms)] = redis_client.zrange("pace:to:+15553100000", 0, 0, withscores=True)
    room_at = (oldest_ms + 60_000) / 1000
    shortest, longest = room_at - redis_after - 0.001, room_at - redis_before + 0.001
    assert shortest <= later.value.countdown <= longest + JITTER_SECONDS
    assert [message(db, i)["status"] for i in (own, second, third, other_recipient)] == [
        "sent",
        "sent",
        "queued",
        "sent",
    ]
    row = message(db, third)
    assert row["attempts"] == 0  # a pacing wait costs no attempt
    due = row["send_after"]
    assert (due - db_before).total_seconds() >= shortest
    assert (due - db_after).total_seconds() <= longest
    assert redis_client.zcard("pace:to:+15553100000") == 2
    # Its own job comes back before the window has room: not due, nothing counted or sent.
    with pytest.raises(RetryLater):
        dispatch(third, settings=settings, sender=sender)
    assert redis_client.zcard("pace:to:+15553100000") == 2
    assert sent_count(db) == 3


def test_reserve_counts_a_send_once_and_books_nothing_while_the_sender_is_blocked(redis_client) -> None:
    from shared.ratelimit import RateLimiter

    limiter = RateLimiter(redis_client)
    sends = [("+1", 1), ("+1", 2), ("+2", 3)]

    first = limiter.reserve("bench", 10.0, sends, 1.0, recipient_per_minute=1)
    again = limiter.reserve("bench", 10.0, [("+1", 1)], 1.0, recipient_per_minute=1)
    limiter.block_sender("bench", 5.0)
    blocked = limiter.reserve("bench", 10.0, [("+3", 4)], 1.0, recipient_per_minute=1)

    assert first.waits[0] == first.waits[2] == 0.0
    assert first.waits[1] > 50  # seconds until +1's first send leaves its one-minute window
    assert first.count == 2  # slots only for the sends within their limit
    assert again.waits == (0.0,)  # already counted: counted once, and it may take a slot
    assert (blocked.count, blocked.waits) == (0, ())
    assert 4.0 < blocked.wait <= 5.0
    assert redis_client.zcard("pace:to:+3") == 0


def test_reserve_examines_no_more_sends_than_the_horizon_has_slots(redis_client) -> None:
    from shared.ratelimit import RateLimiter

    limiter = RateLimiter(redis_client)
    sends = [(f"+{i}", i) for i in range(10)]

    booking = limiter.reserve("bench", 10.0, sends, 0.15, recipient_per_minute=5)

    # 10/s with the pacing margin: a slot every 110 ms, so 0.15 s holds two.
    assert (booking.count, booking.waits) == (2, (0.0, 0.0))
    assert [redis_client.zcard(f"pace:to:+{i}") for i in range(3)] == [1, 1, 0]


def test_slots_from_a_booking_whose_answer_came_back_late_are_not_used(db, redis_client, monkeypatch) -> None:
    # The slots are offsets from when Redis ran the booking; an answer read 100 ms later cannot say
    # where within those 100 ms that was, so sending at the latest reading could crowd the slots other
    # processes booked after it. Unless the booking kept a pad that long after its slots (none here, as
    # for a Redis slower than the longest pad), such slots are booked again, and here never used.
    real_reserve = RateLimiter.reserve

    def late_answer(self: RateLimiter, *args: object, **kwargs: object) -> object:
        booking = real_reserve(self, *args, **kwargs)
        time.sleep(5 * notify.LATE_SLOT_SECONDS)
        return booking

    monkeypatch.setattr(RateLimiter, "reserve", late_answer)
    monkeypatch.setattr(notify, "MAX_PACING_WAIT_SECONDS", 1.0)
    monkeypatch.setattr(notify, "MAX_PACING_PAD_SECONDS", 0.0)
    own, other = replies(2)

    with pytest.raises(RetryLater):
        dispatch(own, sender=ConsoleSender(redis_client))

    assert sent_count(db) == 0
    for message_id in (own, other):
        row = message(db, message_id)
        assert (row["status"], row["attempts"]) == ("queued", 0)  # a pacing wait costs no attempt

    monkeypatch.setattr(RateLimiter, "reserve", real_reserve)
    db.execute("UPDATE messages SET send_after = NULL WHERE id IN (%s, %s)", (own, other))
    assert dispatch(own, sender=ConsoleSender(redis_client)) == "sent"
    assert sent_count(db) == 2


def test_a_twilio_number_written_with_its_prefix_paces_replies_and_api_messages_in_one_bucket() -> None:
    settings = load_settings(
        provider="twilio",
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="token",
        twilio_whatsapp_number="whatsapp:+14155238886",
    )

    api_message = notify._pace_key(settings, "twilio", None)
    reply = notify._pace_key(settings, "twilio", "+14155238886")

    assert api_message == reply == "+14155238886"


def test_a_broker_error_while_scheduling_a_later_send_retries_the_task(db, redis_client, monkeypatch) -> None:
    not_due, due = replies(2)
    db.execute("UPDATE messages SET send_after = now() + interval '30 seconds' WHERE id = %s", (not_due,))

    def broker_down(*args: object, **kwargs: object) -> None:
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(notify.celery, "send_task", broker_down)
    with pytest.raises(kombu.exceptions.OperationalError) as raised:
        dispatch_many([not_due, due], sender=ConsoleSender(redis_client))

    # The task is retried (every id looked at again), not acknowledged with the rest never looked at.
    assert isinstance(raised.value, notify.send_many_task.autoretry_for)
    assert isinstance(raised.value, notify.send_task.autoretry_for)


def test_a_settle_outlasts_a_database_restart(db, redis_client, monkeypatch) -> None:
    # The provider has the message: its record must not give up after a few seconds of PostgreSQL away, or
    # the row ends as an outcome-unknown dead letter and a replay sends it twice.
    for settle_with_retries in (notify._settle, notify._settle_patiently):
        monkeypatch.setattr(settle_with_retries.retry, "wait", tenacity.wait_none())
    own = a_reply_to("+15553200000")
    with autocommit_connection() as conn:
        [record] = sending.claim(conn, own, 0).batch
        sending.calling(conn, [(record.id, record.unsent_claim)])
    outcomes = notify._Outcomes(own, load_settings(), record.sending_claim)
    outcomes.add(record, SendResult(provider="console", provider_message_id="console-1"))
    settle, failures = sending.settle, []

    def restarting(*args: object, **kwargs: object) -> list[int]:
        if len(failures) < 12:  # more failures than the old five tries
            failures.append(1)
            raise Unavailable("the database system is starting up")
        return settle(*args, **kwargs)

    monkeypatch.setattr(sending, "settle", restarting)

    assert outcomes.settle() == "sent"  # the batch's last settle

    assert message(db, own)["status"] == "sent"


# --- a settle moves only the rows its own claim still holds ----------------------------------------------


def test_a_settle_run_again_after_its_answer_was_lost_leaves_the_next_claim_alone(
    db, redis_client, monkeypatch
) -> None:
    for settle_with_retries in (notify._settle, notify._settle_patiently):
        monkeypatch.setattr(settle_with_retries.retry, "wait", tenacity.wait_none())
    settings = load_settings()
    own = a_reply_to("+15553200000")
    with autocommit_connection() as conn:
        [first] = sending.claim(conn, own, 0).batch
        assert sending.calling(conn, [(own, first.unsent_claim)], "console") == {own}
    # Batch 1's provider call failed for now: the message goes back to the queue, due at once.
    batch_1 = notify._Outcomes(own, settings, first.sending_claim)
    batch_1.add(first, Release(own, 0.0, True, "20500", "server error"))
    real_settle, later_claims = sending.settle, []

    def answer_lost_once(conn, **outcomes):
        failed_now = real_settle(conn, **outcomes)
        if later_claims:
            return failed_now
        # Committed, but the answer never came back. Meanwhile batch 2 claims the message, due again, and
        # puts it to the provider; then batch 1's settle runs its statement again.
        with autocommit_connection() as other:
            [again] = sending.claim(other, own, 0).batch
            assert sending.calling(other, [(own, again.unsent_claim)], "console") == {own}
        later_claims.append(again)
        raise Unavailable("server closed the connection unexpectedly")

    monkeypatch.setattr(sending, "settle", answer_lost_once)
    assert isinstance(batch_1.settle(), Release)
    [second] = later_claims
    # Batch 2's provider took the message.
    batch_2 = notify._Outcomes(own, settings, second.sending_claim)
    batch_2.add(second, SendResult(provider="console", provider_message_id="console-2"))
    assert batch_2.settle() == "sent"

    row = message(db, own)
    assert (row["status"], row["provider_message_id"]) == ("sent", "console-2")
    assert statuses(db, own) == ["queued", "retrying", "sent"]
    # No third batch finds it to send again.
    with autocommit_connection() as conn:
        assert sending.claim(conn, own, 0).batch == []


def test_a_worker_past_its_lease_settles_none_of_what_a_later_claim_holds(db, redis_client) -> None:
    settings = load_settings()
    own = a_reply_to("+15553200000")
    with autocommit_connection() as conn:
        [stalled] = sending.claim(conn, own, 0).batch
    past_the_lease(db)
    assert notify.sweep()["returned"] == 1
    # Its job comes back and the same task claims the message anew (claimed_by is the same), and puts it
    # to the provider.
    with autocommit_connection() as conn:
        [again] = sending.claim(conn, own, 0).batch
        assert sending.calling(conn, [(own, again.unsent_claim)], "console") == {own}
    assert again.claimed_by == stalled.claimed_by

    # The stalled worker wakes: its send waited too long for a pacing slot, and goes back to the queue.
    late = notify._Outcomes(own, settings, stalled.sending_claim)
    late.add(stalled, Release(own, 0.0, False, "pacing"))
    late.settle()

    row = message(db, own)
    assert (row["status"], row["attempts"]) == ("sending", 1)
    current = notify._Outcomes(own, settings, again.sending_claim)
    current.add(again, SendResult(provider="console", provider_message_id="console-2"))
    assert current.settle() == "sent"
    assert message(db, own)["provider_message_id"] == "console-2"


def test_a_send_its_claim_no_longer_holds_is_not_sent_after_a_wait(db, redis_client) -> None:
    settings = load_settings()
    sender = ConsoleSender(redis_client)
    own = a_reply_to("+15553200000")
    with autocommit_connection() as conn:
        [record] = sending.claim(conn, own, 0).batch
    send = notify._Send(
        record, notify._outbound_message(record, None), notify._pace_key(settings, sender.name, None)
    )
    pacer = notify._Pacer(None, RateLimiter(redis_client), settings)  # type: ignore[arg-type]

    async def booked_then_waiting() -> list:
        # Cleared for a booking that did not reach it; the worker then stalls past the lease, and the
        # sweep fails the message (its outcome is unknown). When the wait ends it must not go out.
        assert await pacer._still_held([send], sender.name) == [send]
        past_the_lease(db)
        notify.sweep()
        await pacer._not_calling([send])
        return await pacer._still_held([send], sender.name)

    assert asyncio.run(booked_then_waiting()) == []
    assert message(db, own)["error_code"] == "outcome_unknown"


def test_a_settle_run_again_leaves_alone_a_claim_made_by_a_worker_of_the_release_before(
    db, redis_client
) -> None:
    own = a_reply_to("+15553200000")
    with autocommit_connection() as conn:
        [first] = sending.claim(conn, own, 0).batch
        sending.settle(conn, claim=first.sending_claim, released=[Release(own, 0.0, False, "pacing")])
    # During a deploy, a worker of the release before claims it: its claim sets no sending_claim.
    db.execute(
        "UPDATE messages SET status = 'sending', attempts = attempts + 1, claimed_by = id,"
        " unsent_claim = txid_current(), updated_at = now() WHERE id = %s",
        (own,),
    )

    with autocommit_connection() as conn:
        sending.settle(conn, claim=first.sending_claim, released=[Release(own, 0.0, False, "pacing")])

    assert (message(db, own)["status"], message(db, own)["attempts"]) == ("sending", 1)
