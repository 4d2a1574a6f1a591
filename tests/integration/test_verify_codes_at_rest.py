"""Verification codes are stored hashed (ARCHITECTURE.md): the ``VERIFY 123456`` a user sends leaves its
code in no table once the verify stage has checked it, and the raw event log and the router's dead letters
never keep it. The message goes through the real router and verify stage, on the real database."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from shared.bot.commands import NO_PHONE_TEXT
from shared.settings import load_settings
from shared.wire.events import InboundMessage
from tests.integration.test_bot_workers import issue, replies, wrong
from tests.integration.test_inbound_routing import event
from workers import verify as verify_worker
from workers.inbound import route, route_task
from workers.signals import record_give_up

PHONE = "+15551234567"  # event()'s sender


def tables_holding(db: psycopg.Connection, digits: str) -> list[str]:
    """The tables of the schema with a row whose text holds ``digits``."""
    tables = db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
    ).fetchall()
    found = []
    for table in tables:
        query = sql.SQL("SELECT EXISTS (SELECT FROM {} t WHERE t::text LIKE %s) AS held").format(
            sql.Identifier(table["tablename"])
        )
        if db.execute(query, (f"%{digits}%",)).fetchone()["held"]:
            found.append(table["tablename"])
    return found


@pytest.mark.parametrize("right", [True, False])
def test_a_checked_verify_leaves_its_code_in_no_table(
    clean: None, db: psycopg.Connection, right: bool
) -> None:
    code = issue(uuid.uuid4(), PHONE)
    sent = code if right else wrong(code)
    outcome = route(event(f"VERIFY {sent}"), load_settings())
    assert outcome.handler == "verify.check_code"
    assert outcome.message_id is not None
    assert tables_holding(db, sent) == ["messages"]  # the raw event log never had it

    verify_worker.check_code(outcome.message_id)
    verify_worker.check_code(outcome.message_id)  # redelivered: the outcome recorded is answered again

    expected = (
        "✅ WhatsApp linked to your account" if right else "❌ That code is not right. 4 attempts left."
    )
    assert replies(db) == [expected]
    assert tables_holding(db, sent) == []
    body = db.execute("SELECT body FROM messages WHERE id = %s", (outcome.message_id,)).fetchone()["body"]
    assert body == "VERIFY [redacted]"


@pytest.mark.parametrize(
    "written",
    [
        "VERIFY {code}.",
        "*VERIFY {code}*",
        "_verify {code}_",
        "~VERIFY {code}~",
        "```VERIFY {code}```",
        "*VERIFY* {code}",
        "Verificar {code}",
    ],
)
def test_a_verify_written_naturally_links_and_leaves_its_code_in_no_table(
    clean: None, db: psycopg.Connection, written: str
) -> None:
    # Before, the router took these for ordinary text: the not-linked greeting asked the sender for the
    # very "VERIFY 123456" they had sent, and the code stayed in the message and the raw event log.
    code = issue(uuid.uuid4(), PHONE)
    outcome = route(event(written.format(code=code)), load_settings())
    assert outcome.handler == "verify.check_code"
    assert outcome.message_id is not None
    assert tables_holding(db, code) == ["messages"]

    verify_worker.check_code(outcome.message_id)

    assert replies(db) == ["✅ WhatsApp linked to your account"]
    assert tables_holding(db, code) == []


def test_a_verify_from_a_sender_without_a_phone_keeps_no_code(clean: None, db: psycopg.Connection) -> None:
    message = InboundMessage(
        provider="meta",
        provider_message_id=f"wamid.{uuid.uuid4().hex}",
        business_number="+14155238886",
        sender_bsuid="US.1234567890",
        text="VERIFY 482913",
        raw={"text": {"body": "VERIFY 482913"}},
    )
    outcome = route(message.model_dump(mode="json"), load_settings())
    assert outcome.message_id is not None

    verify_worker.check_code(outcome.message_id)

    assert replies(db) == [NO_PHONE_TEXT]
    assert tables_holding(db, "482913") == []


def test_a_route_that_gives_up_on_a_verify_keeps_no_code_in_its_dead_letter(
    clean: None, db: psycopg.Connection
) -> None:
    given: dict[str, Any] = {"event": event("verify: 731-904")}
    record_give_up(route_task, "task-id", RuntimeError("boom"), (), given, apologise=False)
    given = {"event": event("*VERIFY* 731904.")}
    record_give_up(route_task, "task-id", RuntimeError("boom"), (), given, apologise=False)

    letters = db.execute("SELECT payload FROM dead_letters WHERE task_name = 'inbound.route' ORDER BY id")
    assert [letter["payload"]["event"]["text"] for letter in letters] == [
        "verify: [redacted]",
        "*VERIFY* [redacted].",
    ]
    assert tables_holding(db, "731-904") == []
    assert tables_holding(db, "731904") == []


@pytest.mark.parametrize("held_by", ["rate_limited", "handoff", "from_opted_out"])
def test_a_verify_no_handler_answers_keeps_no_code(clean: None, db: psycopg.Connection, held_by: str) -> None:
    # The router answers it with no handler (the sender types too fast, a person has the conversation, the
    # sender opted out): the verify stage never checks the code, so nothing else would ever redact it.
    settings = load_settings(rate_limit_per_minute=1)
    route(event("hello"), settings)
    if held_by == "handoff":
        db.execute("UPDATE conversations SET status = 'handoff'")
    elif held_by == "from_opted_out":
        db.execute("UPDATE contacts SET opted_out = true, opted_out_at = now()")
    code = issue(uuid.uuid4(), PHONE)

    outcome = route(event(f"VERIFY {code}"), settings)

    assert outcome.action == held_by
    assert tables_holding(db, code) == []
    body = db.execute("SELECT body FROM messages WHERE id = %s", (outcome.message_id,)).fetchone()["body"]
    assert body == "VERIFY [redacted]"
