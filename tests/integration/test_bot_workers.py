"""The verify and commands stages as plain functions: real PostgreSQL rows in, a stored reply out."""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import psycopg
import pytest
import redis

from shared import replies as replies_module
from shared import verification
from shared.bot.commands import LOCATION_TEXT
from shared.commands.seed_demo import seed
from shared.db.errors import NotFound
from shared.db.pool import connection, transaction
from shared.sessions import Sessions
from shared.settings import load_settings
from shared.wire import twilio
from tests.integration.test_inbound_routing import bsuid_event, queued
from workers import commands as commands_worker
from workers import verify as verify_worker
from workers.inbound import route

PHONE = "+14155550123"
TWILIO_DATA = Path(__file__).resolve().parents[1] / "data" / "twilio"
_sids = itertools.count(1)


def store_inbound(db: psycopg.Connection, text: str, phone: str = PHONE) -> int:
    """An inbound message as inbound.route stores it: contact, live conversation, message row."""
    contact = db.execute(
        "INSERT INTO contacts (phone) VALUES (%s) ON CONFLICT (phone) DO UPDATE SET phone = EXCLUDED.phone"
        " RETURNING id",
        (phone,),
    ).fetchone()["id"]
    conversation = db.execute(
        "SELECT id FROM conversations WHERE contact_id = %s AND status <> 'closed'", (contact,)
    ).fetchone()
    if conversation is None:
        conversation = db.execute(
            "INSERT INTO conversations (contact_id, provider, business_number)"
            " VALUES (%s, 'twilio', '+14155238886') RETURNING id",
            (contact,),
        ).fetchone()
    return db.execute(
        "INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id, body)"
        " VALUES (%s, %s, 'in', 'twilio', %s, %s) RETURNING id",
        (conversation["id"], contact, f"SM{next(_sids):032d}", text),
    ).fetchone()["id"]


def replies(db: psycopg.Connection) -> list[str]:
    rows = db.execute("SELECT body FROM messages WHERE direction = 'out' ORDER BY id").fetchall()
    return [row["body"] for row in rows]


def issue(user_id: uuid.UUID, phone: str = PHONE) -> str:
    with transaction() as conn:
        return verification.issue_code(conn, user_id, phone).code


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def test_right_code_links_and_replies(clean: None, db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    code = issue(user_id)
    message_id = store_inbound(db, f"  verify   {code} ")
    verify_worker.check_code(message_id)
    assert replies(db) == ["✅ WhatsApp linked to your account"]
    assert db.execute("SELECT user_id FROM user_links WHERE phone = %s", (PHONE,)).fetchone()["user_id"] == (
        user_id
    )
    handled = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert handled["handled_at"] is not None


def test_replayed_verify_burns_no_attempt_and_sends_one_reply(clean: None, db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    code = issue(user_id)
    message_id = store_inbound(db, f"VERIFY {wrong(code)}")
    first = verify_worker.check_code(message_id)
    second = verify_worker.check_code(message_id)
    assert first == second
    assert replies(db) == ["❌ That code is not right. 4 attempts left."]
    assert db.execute("SELECT attempts FROM verification_codes").fetchone()["attempts"] == 1
    # A replayed successful VERIFY does not link twice or answer "no pending code".
    ok = store_inbound(db, f"VERIFY {code}")
    verify_worker.check_code(ok)
    verify_worker.check_code(ok)
    assert replies(db)[1:] == ["✅ WhatsApp linked to your account"]


def test_wrong_expired_locked_and_missing_codes_get_clear_replies(
    clean: None, db: psycopg.Connection
) -> None:
    verify_worker.check_code(store_inbound(db, "VERIFY 123456"))
    assert replies(db)[-1].startswith("There is no pending code for this number.")

    user_id = uuid.uuid4()
    code = issue(user_id)
    db.execute("UPDATE verification_codes SET expires_at = now() - interval '1 second'")
    verify_worker.check_code(store_inbound(db, f"VERIFY {code}"))
    assert replies(db)[-1].startswith("⌛ This code has expired")

    code = issue(user_id)
    for _ in range(verification.MAX_ATTEMPTS):
        verify_worker.check_code(store_inbound(db, f"VERIFY {wrong(code)}"))
    assert replies(db)[-2] == "❌ That code is not right. 1 attempt left."
    assert replies(db)[-1].startswith("🔒 Too many wrong attempts")
    verify_worker.check_code(store_inbound(db, f"VERIFY {code}"))
    assert replies(db)[-1].startswith("🔒 Too many wrong attempts")
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0

    verify_worker.check_code(store_inbound(db, "VERIFY 12"))
    assert replies(db)[-1] == verification.BAD_FORMAT_TEXT


def test_a_verify_sent_in_time_links_though_its_check_runs_after_the_code_expired(
    clean: None, db: psycopg.Connection
) -> None:
    # The verify task retried through an outage (or waited in a backlog) past the code's 10 minutes: the
    # code was right and live when the message came in, so the user is linked, not told it expired.
    user_id = uuid.uuid4()
    code = issue(user_id)
    message_id = store_inbound(db, f"VERIFY {code}")
    db.execute(
        "UPDATE verification_codes SET created_at = now() - interval '12 minutes',"
        " expires_at = now() - interval '2 minutes'"
    )
    db.execute("UPDATE messages SET created_at = now() - interval '3 minutes' WHERE id = %s", (message_id,))
    verify_worker.check_code(message_id)
    assert replies(db) == ["✅ WhatsApp linked to your account"]
    assert db.execute("SELECT user_id FROM user_links WHERE phone = %s", (PHONE,)).fetchone()["user_id"] == (
        user_id
    )


def test_a_verify_sent_after_the_code_expired_is_told_so(clean: None, db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    code = issue(user_id)
    message_id = store_inbound(db, f"VERIFY {code}")
    db.execute(
        "UPDATE verification_codes SET created_at = now() - interval '12 minutes',"
        " expires_at = now() - interval '2 minutes'"
    )
    db.execute("UPDATE messages SET created_at = now() - interval '1 minute' WHERE id = %s", (message_id,))
    verify_worker.check_code(message_id)
    assert replies(db)[-1].startswith("⌛ This code has expired")
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0


def test_verifies_that_came_in_before_a_new_code_spend_none_of_its_attempts(
    clean: None, db: psycopg.Connection
) -> None:
    # Answered late (a backlog, an outage), the user sent their code again and again, then asked for a new
    # one: those earlier messages cannot hold the new code, and must not lock it before it is sent.
    user_id = uuid.uuid4()
    old = issue(user_id)
    early = [store_inbound(db, f"VERIFY {old}") for _ in range(verification.MAX_ATTEMPTS)]
    db.execute("UPDATE messages SET created_at = now() - interval '1 minute'")
    new = issue(user_id)
    for message_id in early:
        verify_worker.check_code(message_id)
    assert db.execute("SELECT attempts FROM verification_codes").fetchone()["attempts"] == 0
    # Not "no pending code" (there was one, and the user holds a newer one): told to send the newest.
    newer = (
        "🔁 A newer code was issued after this message. Send VERIFY followed by the newest code from the app."
    )
    assert replies(db) == [newer] * verification.MAX_ATTEMPTS

    verify_worker.check_code(store_inbound(db, f"VERIFY {new}"))
    assert replies(db)[-1] == "✅ WhatsApp linked to your account"


def test_a_verify_checked_after_its_sender_changed_number_links_neither_number(
    clean: None, db: psycopg.Connection
) -> None:
    # The VERIFY came from the old number; before its check ran, the same WhatsApp account wrote from a new
    # one. Its code is for the old number, which the account no longer has (a link would answer for its
    # next owner), and checked against the new number it would spend that number's attempts: neither.
    user_id = uuid.uuid4()
    code = issue(user_id, "+15551234567")
    before = int(time.time()) - 60
    sent = route(bsuid_event(f"VERIFY {code}", "+15551234567", before), load_settings())
    assert sent.handler == "verify.check_code"
    issue(uuid.uuid4(), "+447700900123")  # someone's code for the new number
    route(bsuid_event("hello", "+447700900123"), load_settings())

    verify_worker.check_code(sent.message_id)
    verify_worker.check_code(sent.message_id)  # redelivered: the same answer, once

    assert replies(db) == [
        "⚠️ This code came from a number this WhatsApp account no longer uses. Ask for a new code in the"
        " app for this number, then send VERIFY followed by the code."
    ]
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0
    attempts = db.execute("SELECT phone, attempts FROM verification_codes ORDER BY phone").fetchall()
    assert [row["attempts"] for row in attempts] == [0, 0]


def test_verify_from_a_number_linked_to_someone_else(clean: None, db: psycopg.Connection) -> None:
    owner, other = uuid.uuid4(), uuid.uuid4()
    # Both asked for a code for the same number before either verified.
    issue(owner)
    other_code = issue(other)
    with transaction() as conn:
        conn.execute("INSERT INTO user_links (user_id, phone) VALUES (%s, %s)", (owner, PHONE))
    verify_worker.check_code(store_inbound(db, f"VERIFY {other_code}"))
    assert replies(db) == ["⚠️ This number is already linked to another account."]


def test_a_verify_from_the_linked_user_is_told_the_number_is_linked_already(
    clean: None, db: psycopg.Connection
) -> None:
    # Before, a linked user who sent their code again (or any code) was told there was no pending code
    # and to get one in the app: a code they do not need.
    user_id = uuid.uuid4()
    code = issue(user_id)
    verify_worker.check_code(store_inbound(db, f"VERIFY {code}"))
    verify_worker.check_code(store_inbound(db, f"VERIFY {code}"))
    verify_worker.check_code(store_inbound(db, f"VERIFY {wrong(code)}"))
    assert replies(db) == [
        "✅ WhatsApp linked to your account",
        "✅ This number is already linked to your account.",
        "✅ This number is already linked to your account.",
    ]
    # Only the sender's own link is spoken of: another number, linked to no one, has no pending code.
    verify_worker.check_code(store_inbound(db, f"VERIFY {code}", phone="+14155550999"))
    assert replies(db)[-1].startswith("There is no pending code for this number.")


@pytest.fixture
def sessions(redis_client: redis.Redis) -> Sessions:
    return Sessions(redis_client, ttl_seconds=1800)


def test_commands_for_unlinked_and_linked_numbers(
    clean: None, db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    seed(PHONE)
    commands_worker.handle(store_inbound(db, "/project mobile", phone="+14155550999"), sessions)
    assert replies(db)[-1].startswith("👋 This WhatsApp number is not linked")

    message_id = store_inbound(db, "/project mobile")
    commands_worker.handle(message_id, sessions)
    assert replies(db)[-1].startswith("✅ Project: Mobile App")
    assert 0 < redis_client.ttl("session:" + PHONE) <= 1800
    assert sessions.load(PHONE)["project_id"]

    # A redelivery of the old /project after a later /clear must not select the project again.
    commands_worker.handle(store_inbound(db, "/clear"), sessions)
    count = len(replies(db))
    commands_worker.handle(message_id, sessions)
    assert len(replies(db)) == count
    assert sessions.load(PHONE) == {}


def test_free_text_routed_before_its_verify_was_handled_still_becomes_a_proposal(
    clean: None, db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    # "VERIFY 123456" then "fix the login page" at once: routing picks the second's handler before the
    # first is handled, so it saw no link and sent the text here. Handled in turn, after the VERIFY, the
    # link is there: the text is the user's first proposal, not the help.
    seed(PHONE)
    commands_worker.handle(store_inbound(db, "/project mobile"), sessions)
    answered = len(replies(db))

    message_id = store_inbound(db, "fix the login page by Friday")
    commands_worker.handle(message_id, sessions)

    assert len(replies(db)) == answered
    assert [task for task, _ in queued(redis_client, "persist")] == ["persist.save_proposal"]
    assert queued(redis_client, "persist")[0][1]["message_id"] == message_id


def test_a_shared_location_is_told_the_bot_reads_text_not_given_the_command_list(
    clean: None, db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    seed(PHONE)
    commands_worker.handle(store_inbound(db, "/project mobile"), sessions)
    params = dict(parse_qsl((TWILIO_DATA / "inbound_location.txt").read_text(), keep_blank_values=True))
    params["From"] = f"whatsapp:{PHONE}"
    event = twilio.parse(params)
    outcome = route(event.model_dump(mode="json"), load_settings())
    assert outcome.handler == "commands.handle"

    commands_worker.handle(outcome.message_id, sessions)

    assert replies(db)[-1] == LOCATION_TEXT
    assert not queued(redis_client, "persist")  # no proposal made of it
    # Text from the same user is read as before.
    commands_worker.handle(store_inbound(db, "/status"), sessions)
    assert "Mobile App" in replies(db)[-1]


def notify_jobs(redis_client: redis.Redis) -> list[tuple[str, dict[str, Any]]]:
    return queued(redis_client, "notify")


class KilledBeforePublishing:
    """A publisher whose process dies on the first publish: after the reply's commit, before notify.send."""

    def publish(self, jobs: list[Any]) -> None:
        raise SystemExit("worker killed")


def test_a_command_killed_between_its_reply_and_the_send_is_sent_once_on_redelivery(
    clean: None,
    db: psycopg.Connection,
    sessions: Sessions,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(PHONE)
    message_id = store_inbound(db, "/project mobile")
    with monkeypatch.context() as patched:
        patched.setattr(replies_module, "get_publisher", KilledBeforePublishing)
        with pytest.raises(SystemExit):
            commands_worker.handle(message_id, sessions)
    # The reply and the end of the message's turn were committed together; nothing was enqueued.
    assert [body.splitlines()[0] for body in replies(db)] == ["✅ Project: Mobile App"]
    assert db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()["handled_at"]
    assert notify_jobs(redis_client) == []

    commands_worker.handle(store_inbound(db, "/clear"), sessions)
    redis_client.delete("notify")
    reply_id = commands_worker.handle(message_id, sessions)  # the redelivery
    assert len(replies(db)) == 2
    assert sessions.load(PHONE) == {}  # the command did not run again
    assert notify_jobs(redis_client) == [("notify.send", {"message_id": reply_id})]


def test_answer_ends_the_turn_with_the_reply_and_queue_reply_does_not(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    message_id = store_inbound(db, "hi")

    def handled_at() -> Any:
        row = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
        return row["handled_at"]

    first = replies_module.queue_reply(message_id, "first")  # flows and the router reply without ending it
    assert handled_at() is None
    assert replies_module.answer(message_id, "second") == first  # the key is taken: the first reply stays
    assert handled_at() is not None
    assert replies(db) == ["first"]
    events = db.execute("SELECT status FROM message_events WHERE message_id = %s", (first,)).fetchall()
    assert events == [{"status": "queued"}]
    assert notify_jobs(redis_client) == [("notify.send", {"message_id": first})] * 2

    with pytest.raises(NotFound):
        replies_module.answer(first, "an outbound message is not answered")
    assert len(notify_jobs(redis_client)) == 2


def test_an_answer_is_one_statement_in_autocommit(
    clean: None, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply, its timeline entry and the end of the turn: one round trip, committed as it returns."""
    message_id = store_inbound(db, "hi")
    statements: list[tuple[str, bool]] = []
    execute = psycopg.Cursor.execute

    def recording(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if str(query):  # not the pool's checkout check
            statements.append((str(query).split()[0], self.connection.autocommit))
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recording)
    replies_module.answer(message_id, "hello")
    assert statements == [("WITH", True)]
    with connection() as conn:
        assert conn.autocommit is False  # the pool gets its connection back as it lent it


def test_a_chat_without_a_phone_number_is_told_once_and_alike_that_it_cannot_be_linked(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    # A WhatsApp username hides the number: Meta gives only a business-scoped id, and accounts are linked
    # by phone, so "send VERIFY" (the commands' linking instructions) could never work.
    contact = db.execute("INSERT INTO contacts (bsuid) VALUES ('US.13491208655302741918') RETURNING id")
    contact_id = contact.fetchone()["id"]
    conversation_id = db.execute(
        "INSERT INTO conversations (contact_id, provider, business_number)"
        " VALUES (%s, 'meta', '106540352242922') RETURNING id",
        (contact_id,),
    ).fetchone()["id"]

    def inbound(text: str) -> int:
        return db.execute(
            "INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id,"
            " body) VALUES (%s, %s, 'in', 'meta', %s, %s) RETURNING id",
            (conversation_id, contact_id, f"wamid.{next(_sids)}", text),
        ).fetchone()["id"]

    commands_worker.handle(inbound("/help"), sessions=Sessions(redis_client))
    verify_worker.check_code(inbound("VERIFY 123456"))

    first, second = replies(db)
    assert first == second
    assert "can't be linked" in first
    assert "VERIFY" not in first
