"""flows.step on real worker processes: 20 rapid answers across 4 workers end in the right state."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from shared.flows.seed import seed_shopfloor
from shared.flows.service import Target, session_key
from shared.queues import Job, get_publisher, handler_key
from shared.sessions import Sessions
from tests.integration.flows_support import add_inbound, make_conversation

PHONE = "+15550100007"
# Two defect reports, a maintenance ticket, an order status, an SLA status and a new form begun: any
# answer handled out of order would be refused or land in the wrong field.
ANSWERS = [
    "hi", "1", "ORD-12345", "Return", "High", "paint bubbles",
    "3", "MACH-001", "Bearing", "High",
    "2", "ORD-12346",
    "5", "MAINT-555",
    "1", "ORD-12347", "Other", "Low", "cracked housing",
    "3",
]  # fmt: skip


def test_twenty_rapid_answers_across_four_workers(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    seed_shopfloor(db)
    contact_id, conversation_id = make_conversation(db, PHONE)
    ids = [add_inbound(db, contact_id, conversation_id, text) for text in ANSWERS]
    for message_id in ids:
        redis_client.set(handler_key(message_id), 1)  # as inbound.route does
    for _ in range(4):
        start_worker(["flows"], env={"WAPIPE_MODE": "menu", "WAPIPE_FLOWS": "shopfloor"})
    # Delivery order across four prefetching workers is arbitrary anyway; shuffle to make that certain.
    jobs = [Job("flows.step", {"message_id": message_id}) for message_id in ids]
    random.Random(7).shuffle(jobs)
    get_publisher().publish(jobs)

    wait_for(
        lambda: (
            db.execute("SELECT count(*) AS n FROM messages WHERE handled_at IS NOT NULL").fetchone()["n"]
            == 20
        ),
        timeout=60,
        what="all 20 answers handled",
    )
    replies = db.execute(
        "SELECT m.body FROM messages m JOIN messages i ON m.idempotency_key = 'reply:' || i.id"
        " WHERE i.conversation_id = %s ORDER BY i.id",
        (conversation_id,),
    ).fetchall()
    assert len(replies) == 20
    assert not any(row["body"].startswith("⚠️") for row in replies)  # no answer refused
    assert "SLA: at risk" in replies[11]["body"]
    assert "MAINT-555: OK" in replies[13]["body"]
    defects = db.execute(
        "SELECT data FROM flow_records WHERE kind = 'defect' ORDER BY source_message_id"
    ).fetchall()
    assert [row["data"]["order_number"] for row in defects] == ["ORD-12345", "ORD-12347"]
    assert [row["data"]["description"] for row in defects] == ["paint bubbles", "cracked housing"]
    ticket = db.execute(
        "SELECT data FROM flow_records WHERE kind = 'maintenance' AND contact_id = %s", (contact_id,)
    )
    assert ticket.fetchone()["data"] == {"machine_id": "MACH-001", "issue_type": "Bearing", "urgency": "High"}
    conversation = Target(ids[-1], conversation_id, contact_id, PHONE)
    flow = Sessions(redis_client).load(session_key(conversation))["flow"]
    assert flow["flow"] == "report_maintenance"
    assert flow["step"] == 0
    assert flow["last_message_id"] == ids[-1]


def test_a_backlog_older_than_the_session_across_four_workers_is_answered_once_in_order(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    """The flows workers were down for 40 minutes, idle at the menu, while the user wrote: once back,
    every message is answered, once and in order, whichever worker takes which task first."""
    seed_shopfloor(db)
    contact_id, conversation_id = make_conversation(db, PHONE)
    texts = ["hi", "2", "ORD-12345", "hello", "5", "MAINT-555"]
    ids = [add_inbound(db, contact_id, conversation_id, text) for text in texts]
    for minutes_ago, message_id in zip(range(40, 40 - len(ids), -1), ids, strict=True):
        db.execute(
            "UPDATE messages SET created_at = now() - make_interval(mins => %(m)s),"
            " payload = payload || jsonb_build_object('sent_at', now() - make_interval(mins => %(m)s)),"
            " dispatched_at = now(), dispatched_to = 'flows.step' WHERE id = %(id)s",
            {"m": minutes_ago, "id": message_id},
        )
        redis_client.set(handler_key(message_id), 1)  # as inbound.route does
    for _ in range(4):
        start_worker(["flows"], env={"WAPIPE_MODE": "menu", "WAPIPE_FLOWS": "shopfloor"})
    jobs = [Job("flows.step", {"message_id": message_id}) for message_id in ids[1:]]
    random.Random(7).shuffle(jobs)
    # The last message's task first, so a step that found no cursor drains the whole backlog at once.
    get_publisher().publish([Job("flows.step", {"message_id": ids[-1]}), *jobs])

    wait_for(
        lambda: (
            db.execute("SELECT count(*) AS n FROM messages WHERE handled_at IS NOT NULL").fetchone()["n"]
            == len(ids)
        ),
        timeout=60,
        what="every message of the backlog handled",
    )
    replies = db.execute(
        "SELECT m.body FROM messages m JOIN messages i ON m.idempotency_key = 'reply:' || i.id"
        " WHERE i.conversation_id = %s ORDER BY i.id",
        (conversation_id,),
    ).fetchall()
    assert len(replies) == len(ids)
    assert "1. Report a defect" in replies[0]["body"]
    assert "Which order?" in replies[1]["body"]
    assert "Order ORD-12345" in replies[2]["body"]
    assert "1. Report a defect" in replies[3]["body"]
    assert "MAINT-555: OK" in replies[5]["body"]
    outbound = db.execute("SELECT count(*) AS n FROM messages WHERE direction = 'out'").fetchone()
    assert outbound["n"] == len(ids)
