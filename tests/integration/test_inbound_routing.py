"""inbound.route against real PostgreSQL and Redis: stored once, opt-out, rate limit, handoff, routing."""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from shared.db import messages
from shared.db.pool import connection
from shared.settings import Settings, load_settings
from shared.wire.events import InboundMessage
from shared.wire.meta import parse_webhook
from workers import inbound, ordering
from workers.inbound import RATE_LIMIT_TEXT, UNREADABLE_TEXT, route

BUSINESS = "+14155238886"


def event(text: str, phone: str = "+15551234567", sid: str | None = None, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"profile_name": "Ana", "raw": {"Body": text}, **extra}
    message = InboundMessage(
        provider="twilio",
        provider_message_id=sid or f"SM{uuid.uuid4().hex}",
        business_number=BUSINESS,
        sender_phone=phone,
        text=text,
        **fields,
    )
    return message.model_dump(mode="json")


def queued(client: redis.Redis, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """(task, kwargs) of every job waiting on a queue, oldest first (the Publisher LPUSHes)."""
    jobs = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        args = json.loads(base64.b64decode(envelope["body"]))
        jobs.append((envelope["headers"]["task"], args[1]))
    return jobs


def count(db: psycopg.Connection, table: str) -> int:
    return db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]  # noqa: S608 - test table names


def test_a_duplicate_event_is_stored_once_and_handled_once(db, redis_client) -> None:
    first = event("hello")
    outcome = route(first, load_settings())
    again = route(first, load_settings())

    assert outcome.action == "handler"
    assert outcome.handler == "commands.handle"  # not linked yet: the commands stage explains linking
    assert again.action == "duplicate"
    assert (count(db, "contacts"), count(db, "conversations"), count(db, "messages")) == (1, 1, 1)
    assert count(db, "webhook_events") == 1
    assert queued(redis_client, "commands") == [("commands.handle", {"message_id": outcome.message_id})]
    row = db.execute("SELECT direction, body, routed_at, status FROM messages").fetchone()
    assert row["direction"] == "in"
    assert row["body"] == "hello"
    assert row["routed_at"] is not None


def store(payload: dict[str, Any], settings: Settings) -> int:
    """What a first delivery that died right after its storing transaction committed left behind (the
    message stored and, when it goes to a handler, dispatched); the stored message's id."""
    with connection() as conn:
        stored = inbound._store_and_dispatch(conn, InboundMessage.model_validate(payload), payload, settings)
    assert stored is not None
    return stored.message_id


def test_a_route_redelivered_after_the_store_enqueues_the_handler_exactly_once(db, redis_client) -> None:
    payload = event("hello")
    # The first delivery stored and dispatched the message, and died before enqueueing the handler.
    message_id = store(payload, load_settings())
    row = db.execute("SELECT dispatched_to, routed_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert (row["dispatched_to"], row["routed_at"]) == ("commands.handle", None)
    assert queued(redis_client, "commands") == []

    redelivered = route(payload, load_settings())
    third = route(payload, load_settings())

    assert redelivered.message_id == message_id
    assert redelivered.action == "handler"
    assert third.action == "duplicate"
    assert queued(redis_client, "commands") == [("commands.handle", {"message_id": message_id})]
    assert count(db, "messages") == 1
    assert count(db, "webhook_events") == 1


def test_a_route_redelivered_after_the_publish_enqueues_nothing_more(db, redis_client) -> None:
    payload = event("hello")
    first = route(payload, load_settings())
    # As if the first delivery died after publishing the handler job, before marking the message routed.
    db.execute("UPDATE messages SET routed_at = NULL")

    again = route(payload, load_settings())

    assert (again.message_id, again.action) == (first.message_id, "handler")
    assert queued(redis_client, "commands") == [("commands.handle", {"message_id": first.message_id})]
    assert db.execute("SELECT routed_at FROM messages").fetchone()["routed_at"] is not None


def test_a_route_redelivered_after_a_change_of_mode_keeps_the_handler_it_dispatched_to(
    db, redis_client
) -> None:
    payload = event("hello")
    first = route(payload, load_settings(mode="assistant"))
    # The first delivery died after publishing ai.reply, before marking the message routed; the worker
    # came back with WAPIPE_MODE=menu.
    db.execute("UPDATE messages SET routed_at = NULL")
    menu = load_settings(mode="menu")

    again = route(payload, menu)
    later = route(event("hi"), menu)

    assert (again.message_id, again.handler) == (first.message_id, "ai.reply")
    assert queued(redis_client, "ai") == [("ai.reply", {"message_id": first.message_id})]
    assert queued(redis_client, "flows") == [("flows.step", {"message_id": later.message_id})]
    row = db.execute("SELECT dispatched_to FROM messages WHERE id = %s", (first.message_id,)).fetchone()
    assert row["dispatched_to"] == "ai.reply"
    # So the menu's answer to the later message waits for the assistant's to the first.
    assert ordering.read_turn(later.message_id, "flows.step").waiting_for == first.message_id


def test_a_route_redelivered_after_its_dispatch_sends_no_rate_limit_notice(db, redis_client) -> None:
    settings = load_settings()
    payload = event("hello")
    first = route(payload, settings)
    db.execute("UPDATE messages SET routed_at = NULL")
    # Redelivered after the sender's minute was over and filled again by messages sent since.
    redis_client.delete(*redis_client.keys("ratelimit:in:*"))
    for _ in range(settings.rate_limit_per_minute):
        route(event("more"), settings)

    again = route(payload, settings)

    assert (again.message_id, again.action, again.handler) == (first.message_id, "handler", "commands.handle")
    notices = db.execute("SELECT count(*) AS n FROM messages WHERE body = %s", (RATE_LIMIT_TEXT,)).fetchone()
    assert notices["n"] == 0


def test_the_handler_job_is_deduplicated_even_if_routing_runs_twice_before_marking(db, redis_client) -> None:
    payload = event("hello")
    message_id = store(payload, load_settings())
    # Two deliveries both decide before either marks the row routed: the dedupe key keeps one job.
    inbound._decide(message_id, load_settings())
    inbound._decide(message_id, load_settings())
    assert queued(redis_client, "commands") == [("commands.handle", {"message_id": message_id})]


def test_a_duplicate_refreshes_nothing(db, redis_client) -> None:
    payload = event("hello")
    route(payload, load_settings())
    db.execute("UPDATE contacts SET last_inbound_at = '2020-01-01', profile_name = 'Old'")
    db.execute("UPDATE conversations SET last_message_at = '2020-01-01'")

    assert route(payload, load_settings()).action == "duplicate"

    contact = db.execute("SELECT profile_name, last_inbound_at FROM contacts").fetchone()
    assert contact["profile_name"] == "Old"
    assert contact["last_inbound_at"].year == 2020
    assert db.execute("SELECT last_message_at FROM conversations").fetchone()["last_message_at"].year == 2020


def test_a_concurrent_route_of_the_same_event_stores_and_routes_it_once(db, redis_client) -> None:
    payload = event("hello")
    route(event("earlier"), load_settings())  # a known sender: the one-statement store
    with ThreadPoolExecutor(1) as pool:
        with connection() as holder, holder.transaction():
            # The first route has stored the message and not committed yet when the second one starts.
            first = inbound._store_and_dispatch(
                holder, InboundMessage.model_validate(payload), payload, load_settings()
            )
            second = pool.submit(route, payload, load_settings())
            time.sleep(0.3)  # let the second route reach the store and wait on the first's commit
            assert not second.done()
        outcome = second.result(timeout=10)
    assert first is not None
    assert outcome.action == "duplicate"
    assert count(db, "messages") == 2
    assert count(db, "webhook_events") == 2


def test_two_first_messages_of_a_new_sender_racing_share_one_contact_and_conversation(
    db, redis_client
) -> None:
    first_payload, second_payload = event("hello"), event("/help")
    with ThreadPoolExecutor(1) as pool:
        with connection() as holder, holder.transaction():
            # The first message created the contact and its conversation and has not committed yet.
            first = inbound._store_and_dispatch(
                holder, InboundMessage.model_validate(first_payload), first_payload, load_settings()
            )
            second = pool.submit(route, second_payload, load_settings())
            time.sleep(0.3)  # let the second route reach the contact insert and wait on the first's commit
            assert not second.done()
        outcome = second.result(timeout=10)
    assert first is not None
    assert (outcome.action, outcome.handler) == ("handler", "commands.handle")
    assert outcome.message_id is not None
    assert outcome.message_id > first.message_id
    assert (count(db, "contacts"), count(db, "conversations"), count(db, "messages")) == (1, 1, 2)


BSUID = "US.13491208655302741918"
# Another WhatsApp account's business-scoped id: whoever has a number after it was recycled or moved.
OTHER_BSUID = "US.77700000000000000042"


def bsuid_event(
    text: str, phone: str | None, sent_at: int | None = None, bsuid: str = BSUID
) -> dict[str, Any]:
    fields: dict[str, Any] = {} if sent_at is None else {"sent_at": sent_at}
    message = InboundMessage(
        provider="meta",
        provider_message_id=f"wamid.{uuid.uuid4().hex}",
        business_number="106540352242922",
        sender_phone=phone,
        sender_bsuid=bsuid,
        text=text,
        **fields,
    )
    return message.model_dump(mode="json")


def test_a_sender_who_changed_number_is_answered_on_the_new_one(db, redis_client) -> None:
    # WhatsApp's "change number" keeps the business-scoped id: the old number may be someone else's now,
    # so the replies go to the number the messages come from, and the old number's link no longer holds.
    user_id = uuid.uuid4()
    db.execute("INSERT INTO users (id) VALUES (%s)", (user_id,))
    db.execute("INSERT INTO user_links (user_id, phone) VALUES (%s, %s)", (user_id, "+15551234567"))
    before = int(time.time()) - 60
    assert route(bsuid_event("/status", "+15551234567", before), load_settings()).action == "handler"

    outcome = route(bsuid_event("hello", "+447700900123"), load_settings())
    # Sent before the change, routed after it: it does not move the number back.
    late = route(bsuid_event("older", "+15551234567", before), load_settings())

    contacts = db.execute("SELECT phone, bsuid FROM contacts").fetchall()
    assert contacts == [{"phone": "+447700900123", "bsuid": "US.13491208655302741918"}]
    assert outcome.handler == "commands.handle"  # unlinked: told how to link the new number
    assert late.message_id is not None
    assert count(db, "contacts") == 1


def link(db: psycopg.Connection, phone: str) -> uuid.UUID:
    user_id = uuid.uuid4()
    db.execute("INSERT INTO users (id) VALUES (%s)", (user_id,))
    db.execute("INSERT INTO user_links (user_id, phone) VALUES (%s, %s)", (user_id, phone))
    return user_id


def contacts_by_bsuid(db: psycopg.Connection) -> dict[str, str | None]:
    return {row["bsuid"]: row["phone"] for row in db.execute("SELECT bsuid, phone FROM contacts").fetchall()}


def test_a_recycled_number_does_not_act_as_its_old_owners_link(db, redis_client) -> None:
    # The number now belongs to another WhatsApp account (another business-scoped id): that newcomer is
    # not the linked user, and is told how to link instead of writing into the old user's workspace.
    link(db, "+15551234567")
    before = int(time.time()) - 60
    assert route(bsuid_event("Need a login page", "+15551234567", before), load_settings()).handler == (
        "ai.parse_proposal"
    )

    newcomer = route(bsuid_event("Need a login page", "+15551234567", bsuid=OTHER_BSUID), load_settings())

    assert newcomer.handler == "commands.handle"
    record = messages.get_inbound(newcomer.message_id)
    assert (record.bsuid, record.phone, record.user_id) == (OTHER_BSUID, "+15551234567", None)
    # The old account keeps its contact, without the number it no longer has; the number's link is gone
    # (the number is the newcomer's to VERIFY), and the old owner's later messages are theirs, unlinked.
    assert contacts_by_bsuid(db) == {BSUID: None, OTHER_BSUID: "+15551234567"}
    assert count(db, "user_links") == 0
    assert route(bsuid_event("Need a login page", None), load_settings()).handler == "commands.handle"


def test_a_number_taken_over_from_another_account_unlinks_both_numbers(db, redis_client) -> None:
    # A known user moves (WhatsApp's change number, same business-scoped id) onto a number another account
    # had: the contact takes the number, and neither number's link answers for anyone until verified.
    link(db, "+15551234567")
    link(db, "+447700900123")
    before = int(time.time()) - 60
    route(bsuid_event("hello", "+15551234567", before), load_settings())
    route(bsuid_event("hello", "+447700900123", before, bsuid=OTHER_BSUID), load_settings())

    moved = route(bsuid_event("Need a login page", "+447700900123"), load_settings())

    assert moved.handler == "commands.handle"
    assert contacts_by_bsuid(db) == {BSUID: "+447700900123", OTHER_BSUID: None}
    assert count(db, "user_links") == 0
    assert messages.get_inbound(moved.message_id).bsuid == BSUID


def test_a_late_message_of_a_numbers_old_owner_does_not_take_it_back(db, redis_client) -> None:
    # Sent before the newcomer's first message, routed after it: the number stays the newcomer's, and the
    # old owner's message is stored under the old owner's contact, unlinked.
    link(db, "+15551234567")
    before = int(time.time()) - 60
    route(bsuid_event("hello", "+15551234567", before - 60), load_settings())
    route(bsuid_event("hello", "+15551234567", bsuid=OTHER_BSUID), load_settings())
    link(db, "+15551234567")  # the newcomer verified the number for their own user

    late = route(bsuid_event("Need a login page", "+15551234567", before), load_settings())

    assert late.handler == "commands.handle"
    assert contacts_by_bsuid(db) == {BSUID: None, OTHER_BSUID: "+15551234567"}
    assert messages.get_inbound(late.message_id).bsuid == BSUID
    assert count(db, "user_links") == 1


def test_a_late_message_from_a_new_account_leaves_the_number_with_its_holder(db, redis_client) -> None:
    link(db, "+15551234567")
    route(bsuid_event("hello", "+15551234567"), load_settings())

    late = route(
        bsuid_event("older", "+15551234567", int(time.time()) - 60, bsuid=OTHER_BSUID), load_settings()
    )

    assert late.handler == "commands.handle"
    assert contacts_by_bsuid(db) == {BSUID: "+15551234567", OTHER_BSUID: None}
    assert count(db, "user_links") == 1


def test_two_first_messages_of_a_numbers_new_owner_racing_share_one_contact(db, redis_client) -> None:
    link(db, "+15551234567")
    route(bsuid_event("hello", "+15551234567", int(time.time()) - 60), load_settings())
    first_payload = bsuid_event("hello", "+15551234567", bsuid=OTHER_BSUID)
    second_payload = bsuid_event("/help", "+15551234567", bsuid=OTHER_BSUID)
    with ThreadPoolExecutor(1) as pool:
        with connection() as holder, holder.transaction():
            first = inbound._store_and_dispatch(
                holder, InboundMessage.model_validate(first_payload), first_payload, load_settings()
            )
            second = pool.submit(route, second_payload, load_settings())
            time.sleep(0.3)  # let the second route reach the number and wait on the first's commit
            assert not second.done()
        outcome = second.result(timeout=10)
    assert first is not None
    assert (outcome.action, outcome.handler) == ("handler", "commands.handle")
    assert contacts_by_bsuid(db) == {BSUID: None, OTHER_BSUID: "+15551234567"}
    assert count(db, "messages") == 3
    assert count(db, "user_links") == 0


def test_a_phone_only_contact_gets_the_business_scoped_id_it_writes_with(db, redis_client) -> None:
    # Known by phone alone (before Meta sent the ids, or from Twilio): nothing says it is another account.
    user_id = link(db, "+15551234567")
    route(event("hello", phone="+15551234567"), load_settings())

    outcome = route(bsuid_event("Need a login page", "+15551234567"), load_settings())

    assert outcome.handler == "ai.parse_proposal"
    assert contacts_by_bsuid(db) == {BSUID: "+15551234567"}
    assert messages.get_inbound(outcome.message_id).user_id == user_id


def test_a_late_message_from_the_old_number_sent_in_the_same_second_does_not_move_it_back(
    db, redis_client
) -> None:
    # Providers give seconds: the message from the new number and a late-routed one from the old number
    # may carry the same second. Nothing says the old one came later, so the number stays where it moved.
    moved_at = int(time.time()) - 5
    route(bsuid_event("hello", "+15551234567", moved_at - 60), load_settings())
    route(bsuid_event("from my new number", "+447700900123", moved_at), load_settings())

    late = route(bsuid_event("sent that second", "+15551234567", moved_at), load_settings())

    assert late.message_id is not None
    contacts = db.execute("SELECT phone, bsuid FROM contacts").fetchall()
    assert contacts == [{"phone": "+447700900123", "bsuid": "US.13491208655302741918"}]


def test_a_sender_known_by_business_scoped_id_gets_its_phone_filled_in(db, redis_client) -> None:
    assert route(bsuid_event("hello", None), load_settings()).action == "handler"
    assert route(bsuid_event("again", "+15551234567"), load_settings()).action == "handler"

    contacts = db.execute("SELECT phone, bsuid FROM contacts").fetchall()
    assert contacts == [{"phone": "+15551234567", "bsuid": "US.13491208655302741918"}]
    assert count(db, "conversations") == 1


def test_a_closed_conversation_is_followed_by_a_new_one(db, redis_client) -> None:
    first = route(event("hello"), load_settings())
    db.execute("UPDATE conversations SET status = 'closed', closed_at = now()")

    second = route(event("/help"), load_settings())

    assert second.handler == "commands.handle"
    rows = db.execute("SELECT id, status FROM conversations ORDER BY id").fetchall()
    assert [r["status"] for r in rows] == ["closed", "open"]
    conversation_of = "SELECT conversation_id FROM messages WHERE id = %s"
    assert db.execute(conversation_of, (first.message_id,)).fetchone()["conversation_id"] == rows[0]["id"]
    assert db.execute(conversation_of, (second.message_id,)).fetchone()["conversation_id"] == rows[1]["id"]
    assert count(db, "contacts") == 1


def test_a_number_with_its_own_assistant_routes_to_the_assistant(db, redis_client) -> None:
    route(event("hello"), load_settings(mode="project"))  # a known sender from now on
    db.execute(
        "INSERT INTO assistant_configs (business_number, system_prompt) VALUES (%s, 'Be kind')", (BUSINESS,)
    )
    assert route(event("hello again"), load_settings(mode="project")).handler == "ai.reply"


def test_contact_and_conversation_are_reused_and_refreshed(db, redis_client) -> None:
    route(event("one"), load_settings())
    route(event("two", profile_name="Ana María"), load_settings())
    assert count(db, "contacts") == 1
    assert count(db, "conversations") == 1
    contact = db.execute("SELECT phone, profile_name, last_inbound_at FROM contacts").fetchone()
    assert contact["phone"] == "+15551234567"
    assert contact["profile_name"] == "Ana María"
    assert contact["last_inbound_at"] is not None


def test_routing_by_mode_and_link(db, redis_client) -> None:
    user_id = uuid.uuid4()
    db.execute("INSERT INTO users (id) VALUES (%s)", (user_id,))
    db.execute("INSERT INTO user_links (user_id, phone) VALUES (%s, %s)", (user_id, "+15551234567"))
    project = load_settings(mode="project")

    assert route(event("Need a login page by Friday"), project).handler == "ai.parse_proposal"
    assert route(event("/status"), project).handler == "commands.handle"
    assert route(event("verify 123456"), project).handler == "verify.check_code"
    assert route(event("hi"), load_settings(mode="menu")).handler == "flows.step"
    assert route(event("hi there"), load_settings(mode="assistant")).handler == "ai.reply"
    assert [task for task, _ in queued(redis_client, "ai")] == ["ai.parse_proposal", "ai.reply"]


def test_a_tapped_button_is_routed_by_its_title(db, redis_client) -> None:
    payload = event("", reply={"id": "opt_2", "title": "Order status"})
    outcome = route(payload, load_settings(mode="menu"))
    assert outcome.handler == "flows.step"
    row = db.execute("SELECT body, payload FROM messages WHERE id = %s", (outcome.message_id,)).fetchone()
    assert row["body"] == "Order status"
    assert row["payload"]["reply"]["id"] == "opt_2"


def test_stop_opts_out_with_one_confirmation_and_start_opts_back_in(db, redis_client) -> None:
    settings = load_settings()
    stop = route(event("  Stop "), settings)
    assert stop.action == "opted_out"
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is True
    notice = db.execute(
        "SELECT body, bypass_opt_out, idempotency_key FROM messages WHERE direction = 'out'"
    ).fetchone()
    assert "unsubscribed" in notice["body"]
    assert notice["bypass_opt_out"] is True
    assert notice["idempotency_key"] == f"reply:{stop.message_id}:opt-out"
    assert [task for task, _ in queued(redis_client, "notify")] == ["notify.send"]

    # Further messages are kept but not answered.
    later = route(event("hello?"), settings)
    assert later.action == "from_opted_out"
    assert queued(redis_client, "commands") == []
    assert db.execute("SELECT routed_at FROM messages WHERE id = %s", (later.message_id,)).fetchone()[
        "routed_at"
    ]

    start = route(event("START"), settings)
    assert start.action == "opted_in"
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is False
    assert route(event("hello again"), settings).action == "handler"


def test_a_stop_from_a_contact_already_opted_out_gets_no_second_confirmation(db, redis_client) -> None:
    settings = load_settings()
    route(event("STOP"), settings)
    again = route(event("stop!!"), settings)

    assert again.action == "opted_out"
    assert count(db, "messages WHERE direction = 'out'") == 1
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is True


def route_at_once(payloads: list[dict[str, Any]], settings: Settings) -> list[inbound.RouteOutcome]:
    """Route these messages, already stored, in threads of their own at once: what two inbound worker
    processes do with two messages of one sender stored before either decided."""
    message_ids = [store(payload, settings) for payload in payloads]
    with ThreadPoolExecutor(len(payloads)) as pool:
        outcomes = list(pool.map(lambda payload: route(payload, settings), payloads))
    assert [outcome.message_id for outcome in outcomes] == message_ids
    return outcomes


def test_two_stops_routed_at_once_get_one_confirmation(db, redis_client) -> None:
    outcomes = route_at_once([event("STOP"), event("stop!!")], load_settings())

    assert [outcome.action for outcome in outcomes] == ["opted_out", "opted_out"]
    notices = db.execute("SELECT body FROM messages WHERE direction = 'out'").fetchall()
    assert len(notices) == 1
    assert "unsubscribed" in notices[0]["body"]
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is True


def test_two_starts_routed_at_once_get_one_confirmation(db, redis_client) -> None:
    settings = load_settings()
    route(event("STOP"), settings)
    outcomes = route_at_once([event("START"), event("start!")], settings)

    # The first opted the contact back in as it was stored, so the second came from a subscribed contact:
    # an ordinary message for the handler to answer, as a START sent later is.
    assert [(outcome.action, outcome.handler) for outcome in outcomes] == [
        ("opted_in", None),
        ("handler", "commands.handle"),
    ]
    replies = db.execute("SELECT body FROM messages WHERE direction = 'out' ORDER BY id").fetchall()
    assert [reply["body"] for reply in replies] == [replies[0]["body"], inbound.OPT_IN_TEXT]
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is False


def test_a_start_from_a_contact_subscribed_already_gets_no_second_confirmation(db, redis_client) -> None:
    settings = load_settings()
    route(event("STOP"), settings)
    route(event("START"), settings)
    again = route(event("start"), settings)

    # Subscribed again by the first START: the second is an ordinary message for the handler to answer.
    assert (again.action, again.handler) == ("handler", "commands.handle")
    replies = db.execute("SELECT body FROM messages WHERE direction = 'out' ORDER BY id").fetchall()
    assert [reply["body"] for reply in replies][1:] == [inbound.OPT_IN_TEXT]


@pytest.mark.parametrize(
    ("mode", "handler"), [("project", "commands.handle"), ("menu", "flows.step"), ("assistant", "ai.reply")]
)
def test_a_start_from_a_contact_never_opted_out_is_an_ordinary_message(
    db, redis_client, mode: str, handler: str
) -> None:
    # Before, it was taken for an opt-in that changed nothing, and got no answer at all: in menu mode the
    # shop-floor pack's menu word "start" showed no menu, in project mode no help came.
    outcome = route(event("start"), load_settings(mode=mode))

    assert (outcome.action, outcome.handler) == ("handler", handler)
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is False


def test_a_start_from_a_subscribed_linked_user_in_project_mode_gets_the_help(db, redis_client) -> None:
    # Linked, free text is a proposal: START was parsed into a proposal "1. START" instead of the help.
    link(db, "+15551234567")
    project = load_settings(mode="project")

    assert route(event("START"), project).handler == "commands.handle"
    assert route(event("Start!"), project).handler == "commands.handle"
    assert route(event("Start the login page"), project).handler == "ai.parse_proposal"


def test_a_start_redelivered_after_its_store_opted_in_still_sends_its_confirmation(db, redis_client) -> None:
    settings = load_settings()
    route(event("STOP"), settings)
    payload = event("START")
    # The first delivery's store opted the contact back in and stored the confirmation; it died before
    # publishing the confirmation's send and marking the message routed.
    message_id = store(payload, settings)
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is False
    redis_client.delete("notify")

    assert route(payload, settings).action == "opted_in"
    replies = db.execute("SELECT id, body, idempotency_key FROM messages WHERE direction = 'out' ORDER BY id")
    opt_in = replies.fetchall()[1:]
    assert [(row["body"], row["idempotency_key"]) for row in opt_in] == [
        (inbound.OPT_IN_TEXT, f"reply:{message_id}:opt-in")
    ]
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": opt_in[0]["id"]})]


def test_a_start_stored_before_the_stop_ahead_of_it_was_routed_opts_back_in(db, redis_client) -> None:
    # STOP then START in quick succession: START is stored once STOP is (arrival order), but may be before
    # STOP's route has decided. Before, STOP opted out only when decided, so START was stored from a
    # subscribed contact, dispatched as an ordinary message, and STOP then left the user opted out.
    settings = load_settings()
    stop, start = event("STOP"), event("START")
    store(stop, settings)
    store(start, settings)

    assert route(stop, settings).action == "opted_out"
    assert route(start, settings).action == "opted_in"
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is False
    replies = db.execute("SELECT body FROM messages WHERE direction = 'out' ORDER BY id").fetchall()
    assert [reply["body"] for reply in replies] == [inbound.OPT_OUT_TEXT, inbound.OPT_IN_TEXT]
    assert [task for task, _ in queued(redis_client, "notify")] == ["notify.send", "notify.send"]
    assert queued(redis_client, "commands") == []


def test_a_stop_redelivered_after_opting_out_still_sends_its_confirmation(db, redis_client) -> None:
    settings = load_settings()
    payload = event("STOP")
    message_id = route(payload, settings).message_id
    # The first delivery opted the contact out and stored its confirmation (one statement), and died
    # before publishing the confirmation's send and marking the message routed.
    redis_client.delete("notify")
    db.execute("UPDATE messages SET routed_at = NULL WHERE id = %s", (message_id,))

    assert route(payload, settings).action == "opted_out"
    notice = db.execute("SELECT id, idempotency_key FROM messages WHERE direction = 'out'").fetchall()
    assert [row["idempotency_key"] for row in notice] == [f"reply:{message_id}:opt-out"]
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": notice[0]["id"]})]


def test_spanish_and_configured_opt_out_words(db, redis_client) -> None:
    assert route(event("baja"), load_settings()).action == "opted_out"
    body = db.execute("SELECT body FROM messages WHERE direction = 'out'").fetchone()["body"]
    assert "baja" in body
    custom = load_settings(opt_out_words="PARAR")
    assert route(event("parar", phone="+15557654321"), custom).action == "opted_out"
    assert route(event("stop", phone="+15550001111"), custom).action == "handler"


@pytest.mark.parametrize(
    "text", ["Stop.", "STOP!", "¡Baja!", "STOP 🙏", "  Unsubscribe 😡😡 ", "¿BÁJA?", "stop\u200d", "ＳＴＯＰ"]
)
def test_an_opt_out_word_with_any_case_accents_punctuation_or_emoji_around_opts_out(
    db, redis_client, text: str
) -> None:
    assert route(event(text), load_settings()).action == "opted_out"
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is True


@pytest.mark.parametrize("text", ["please don't stop the service", "stop stop", "STOP?! why", "stopped"])
def test_an_opt_out_word_inside_a_longer_message_does_not_opt_out(db, redis_client, text: str) -> None:
    assert route(event(text), load_settings()).action == "handler"
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is False


@pytest.mark.timeout(20)
def test_a_long_message_of_punctuation_between_words_is_routed_at_once(db, redis_client) -> None:
    # The strip of punctuation around an opt-out word was tried from every character of such a run to its
    # end: 16,000 took 1.5 s, a message's 65,536 about 25 s of the router, for any sender.
    assert route(event("a" + "!" * 65_534 + "a"), load_settings()).action == "handler"


def test_a_tapped_button_opts_out_by_its_title_or_its_id(db, redis_client) -> None:
    # Meta's marketing opt-out quick-reply of a template, and a button whose id says what its title doesn't.
    promotions = event("", reply={"id": "Stop promotions", "title": "Stop promotions"})
    assert route(promotions, load_settings()).action == "opted_out"
    by_id = event("", phone="+15557654321", reply={"id": "unsubscribe", "title": "No more offers"})
    assert route(by_id, load_settings()).action == "opted_out"


def test_spanish_opt_out_names_a_spanish_opt_in_word_that_works(db, redis_client) -> None:
    settings = load_settings()
    assert route(event("¡Baja!"), settings).action == "opted_out"
    notice = db.execute("SELECT body FROM messages WHERE direction = 'out'").fetchone()["body"]
    assert "Envía ALTA" in notice

    assert route(event("Alta."), settings).action == "opted_in"
    assert db.execute("SELECT opted_out FROM contacts").fetchone()["opted_out"] is False
    replies = db.execute("SELECT body FROM messages WHERE direction = 'out' ORDER BY id").fetchall()
    assert "BAJA" in replies[-1]["body"]  # answered in Spanish, naming the Spanish word


def test_configured_words_are_matched_as_loosely(db, redis_client) -> None:
    custom = load_settings(opt_out_words="Parar,no más", opt_in_words="Volver")
    assert route(event("¡PARAR!"), custom).action == "opted_out"
    assert route(event("volver 🙂"), custom).action == "opted_in"
    assert route(event("No  mas."), custom).action == "opted_out"


def test_eleven_messages_in_a_minute_ten_handled_one_polite_reply_all_stored(db, redis_client) -> None:
    settings = load_settings(rate_limit_per_minute=10)
    outcomes = [route(event(f"message {i}"), settings) for i in range(12)]

    assert [o.action for o in outcomes] == ["handler"] * 10 + ["rate_limited"] * 2
    assert len(queued(redis_client, "commands")) == 10
    replies = db.execute("SELECT body, idempotency_key FROM messages WHERE direction = 'out'").fetchall()
    assert [r["body"] for r in replies] == [RATE_LIMIT_TEXT]
    assert replies[0]["idempotency_key"] == f"reply:{outcomes[10].message_id}:rate-limit"
    assert count(db, "messages") == 12 + 1  # every inbound message is stored, plus the one reply

    # Another user is not affected.
    assert route(event("hi", phone="+15557654321"), settings).action == "handler"


def test_a_rerun_of_a_rate_limited_route_counts_once_and_replies_once(db, redis_client) -> None:
    settings = load_settings(rate_limit_per_minute=1)
    route(event("first"), settings)
    over = event("second")
    message_id = store(over, settings)
    inbound._decide(message_id, settings)
    inbound._decide(message_id, settings)
    replies = db.execute("SELECT count(*) AS n FROM messages WHERE direction = 'out'").fetchone()["n"]
    assert replies == 1


def test_a_conversation_in_handoff_is_stored_only(db, redis_client) -> None:
    first = route(event("hello"), load_settings())
    db.execute("UPDATE conversations SET status = 'handoff'")
    second = route(event("are you there?"), load_settings())
    assert second.action == "handoff"
    assert len(queued(redis_client, "commands")) == 1
    assert first.message_id != second.message_id


def test_fast_typing_in_a_handed_over_conversation_gets_no_rate_limit_reply(db, redis_client) -> None:
    settings = load_settings(rate_limit_per_minute=2)
    route(event("I want a person"), settings)
    db.execute("UPDATE conversations SET status = 'handoff'")

    outcomes = [route(event(f"hurry {i}"), settings) for i in range(4)]

    assert [o.action for o in outcomes] == ["handoff"] * 4
    assert count(db, "messages WHERE direction = 'out'") == 0
    # Not counted either: back with the bot, the sender has the rest of their window.
    db.execute("UPDATE conversations SET status = 'open'")
    assert route(event("thanks"), settings).action == "handler"


def meta_event(name: str) -> dict[str, Any]:
    """The one message of a captured Meta webhook (tests/data/meta), as the ingress queues it."""
    body = json.loads((Path(__file__).parents[1] / "data" / "meta" / f"{name}.json").read_text())
    return parse_webhook(body).messages[0].model_dump(mode="json")


@pytest.mark.parametrize("mode", ["project", "menu", "assistant"])
@pytest.mark.parametrize("name", ["reaction", "system"])
def test_a_reaction_or_system_message_is_stored_but_not_answered(
    db, redis_client, name: str, mode: str
) -> None:
    outcome = route(meta_event(name), load_settings(mode=mode))

    assert outcome.action == "not_a_message"
    assert outcome.handler is None
    for queue in ("commands", "flows", "ai", "verify", "notify"):
        assert queued(redis_client, queue) == []
    row = db.execute("SELECT type, routed_at, dispatched_to FROM messages").fetchone()
    assert row["type"] == name
    assert row["routed_at"] is not None
    assert row["dispatched_to"] is None
    assert count(db, "messages") == 1


def test_a_removed_reaction_is_not_answered(db, redis_client) -> None:
    removed = event("", type="reaction")  # Meta sends the reaction with no emoji
    assert route(removed, load_settings()).action == "not_a_message"
    assert queued(redis_client, "commands") == []


def test_reactions_do_not_count_toward_the_rate_limit(db, redis_client) -> None:
    settings = load_settings(rate_limit_per_minute=2)
    for emoji in ("👍", "❤️", "😂", "👍"):
        assert route(event(emoji, type="reaction"), settings).action == "not_a_message"
    assert [route(event(f"hi {i}"), settings).action for i in range(2)] == ["handler", "handler"]


def test_an_unsupported_message_gets_a_short_reply_and_no_handler(db, redis_client) -> None:
    outcome = route(meta_event("unsupported"), load_settings(mode="menu"))

    assert outcome.action == "unreadable"
    assert queued(redis_client, "flows") == []
    reply = db.execute("SELECT body, idempotency_key FROM messages WHERE direction = 'out'").fetchone()
    assert reply["body"] == UNREADABLE_TEXT
    assert reply["idempotency_key"] == f"reply:{outcome.message_id}:unreadable"
    # Redelivered before it was marked routed: the same one reply.
    db.execute("UPDATE messages SET routed_at = NULL")
    assert route(meta_event("unsupported"), load_settings(mode="menu")).action == "unreadable"
    assert count(db, "messages WHERE direction = 'out'") == 1


def test_an_unsupported_message_in_a_handed_over_conversation_gets_no_reply(db, redis_client) -> None:
    route(meta_event("text"), load_settings())
    db.execute("UPDATE conversations SET status = 'handoff'")
    assert route(meta_event("unsupported"), load_settings()).action == "handoff"
    assert count(db, "messages WHERE direction = 'out'") == 0
