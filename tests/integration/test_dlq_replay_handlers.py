"""Replaying a handler stage's dead letter (``wapipe dlq replay``): the stage's work runs again and the
sender gets its real reply, once; the apology they got when it gave up does not swallow it. A letter the
user has moved on from (they wrote again, as the apology asked) or whose 24-hour reply window has closed is
refused unless forced, and stays pending until an operator discards it; a discarded one is never replayed.

The stage gives up as in test_stage_give_up.py: PostgreSQL refuses its first read until its retries are
spent; the task runs in-process (``.apply()``), on the real database and Redis, and so does the replayed
job read back from its queue.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
import redis

from shared import replies as replies_module
from shared.cli import main as wapipe
from shared.commands.dlq import replay
from shared.commands.seed_demo import DEMO_USER_ID, seed
from shared.db.errors import Unavailable
from shared.queues import handler_key
from shared.sessions import Sessions
from tests.integration.flows_support import add_inbound, make_conversation
from tests.integration.test_bot_workers import PHONE, replies, store_inbound
from tests.integration.test_inbound_routing import queued
from tests.integration.test_stage_give_up import database_down, dispatched, letters
from workers import ai as ai_worker
from workers import commands as commands_worker
from workers import flows as flows_worker
from workers import persist  # noqa: F401 - registers persist.save_proposal, which a replayed parse enqueues
from workers import signals as give_up  # connects the task_failure handler in this process, as a worker does

TEXT = "Need to add login page and user dashboard by Friday. Should take about 8 hours."


def run_queued(redis_client: redis.Redis, queue: str) -> list[str]:
    """Run the jobs waiting on ``queue`` in-process, as a worker would; return their tasks' states."""
    from workers import celery

    jobs = queued(redis_client, queue)
    redis_client.delete(queue)
    return [celery.tasks[task].apply(kwargs=kwargs).state for task, kwargs in jobs]


def keys(db: psycopg.Connection) -> list[str]:
    rows = db.execute("SELECT idempotency_key FROM messages WHERE direction = 'out' ORDER BY id").fetchall()
    return [row["idempotency_key"] for row in rows]


def proposal_count(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) AS n FROM proposals").fetchone()["n"]


def given_up_command(db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, text: str = "/help") -> int:
    """A ``commands.handle`` that gave up on its message; returns the message id."""
    message_id = dispatched(db, text)
    with monkeypatch.context() as outage:
        database_down(outage)
        assert commands_worker.handle_task.apply(kwargs={"message_id": message_id}).state == "FAILURE"
    assert replies(db) == [give_up.APOLOGY]
    return message_id


def given_up_parse(db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> int:
    """An ``ai.parse_proposal`` that gave up on a message; returns the message id."""
    message_id = dispatched(db, TEXT)
    db.execute("UPDATE messages SET dispatched_to = 'ai.parse_proposal' WHERE id = %s", (message_id,))

    def refused(*_: Any) -> None:
        raise Unavailable("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    with monkeypatch.context() as outage:
        outage.setattr(ai_worker.proposals, "id_for_message", refused)
        assert ai_worker.parse_proposal_task.apply(kwargs={"message_id": message_id}).state == "FAILURE"
    assert replies(db) == [give_up.APOLOGY]
    return message_id


@pytest.fixture
def project_chosen(db: psycopg.Connection, redis_client: redis.Redis) -> uuid.UUID:
    seed(PHONE)
    project_id = db.execute("SELECT id FROM projects ORDER BY name LIMIT 1").fetchone()["id"]
    Sessions(redis_client, ttl_seconds=1800).select(
        PHONE, DEMO_USER_ID, workspace_id=None, project_id=str(project_id)
    )
    return project_id


def test_a_replayed_command_sends_its_real_reply_once(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = given_up_command(db, monkeypatch)
    [letter] = letters(db)
    redis_client.delete("notify")

    assert replay(letter["id"]).result == "replayed"
    assert run_queued(redis_client, "commands") == ["SUCCESS"]

    # Before: the command's answer was swallowed by the apology holding reply:<id>; the user had only that.
    [apology, answer] = replies(db)
    assert apology == give_up.APOLOGY
    assert answer not in (give_up.APOLOGY, replies_module.ALREADY_ANSWERED)
    assert keys(db)[1] == f"reply:{message_id}"
    assert len(queued(redis_client, "notify")) == 1  # the answer's send; the apology is not sent again

    # Replayed again, or the replayed task redelivered: nothing more is stored.
    assert replay(letter["id"]).result == "already_replayed"
    commands_worker.handle_task.apply(kwargs={"message_id": message_id})
    assert len(replies(db)) == 2


def test_a_replayed_proposal_is_saved_and_confirmed(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    project_chosen: uuid.UUID,
) -> None:
    given_up_parse(db, monkeypatch)
    [letter] = letters(db)
    assert letter["task_name"] == "ai.parse_proposal"

    assert replay(letter["id"]).result == "replayed"
    assert run_queued(redis_client, "ai") == ["SUCCESS"]
    assert run_queued(redis_client, "persist") == ["SUCCESS"]

    # Before: the proposal was saved and its confirmation swallowed; the user was only told to resend it.
    assert proposal_count(db) == 1
    [apology, confirmation] = replies(db)
    assert apology == give_up.APOLOGY
    assert confirmation.startswith("✅ Proposal saved to Marketing Site: 2 items")


def given_up_step(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    where: tuple[Any, str] = (flows_worker, "step"),
) -> int:
    """A menu flow's ``flows.step`` that gave up on a "hi", ``where`` (an object and the name on it) refusing
    with PostgreSQL unreachable; returns the message id."""
    contact_id, conversation_id = make_conversation(db, PHONE)
    message_id = add_inbound(db, contact_id, conversation_id, "hi")
    db.execute(
        "UPDATE messages SET dispatched_at = now(), dispatched_to = 'flows.step' WHERE id = %s", (message_id,)
    )
    redis_client.set(handler_key(message_id), 1)

    def refused(*_: Any) -> None:
        raise Unavailable("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    with monkeypatch.context() as outage:
        outage.setattr(*where, refused)
        assert flows_worker.step_task.apply(kwargs={"message_id": message_id}).state == "FAILURE"
    assert replies(db) == [give_up.APOLOGY]
    return message_id


def test_a_replayed_menu_step_sends_its_real_reply_once(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = given_up_step(db, redis_client, monkeypatch)
    [letter] = letters(db)
    assert letter["task_name"] == "flows.step"

    assert replay(letter["id"]).result == "replayed"
    assert run_queued(redis_client, "flows") == ["SUCCESS"]

    # Before: the step found its message handled (by the apology) and did nothing; "replayed", all the same.
    [apology, menu] = replies(db)
    assert apology == give_up.APOLOGY
    assert "1. Report a defect" in menu
    assert keys(db)[1] == f"reply:{message_id}"

    # The replayed task redelivered: nothing more is stored, the flow does not advance twice.
    flows_worker.step_task.apply(kwargs={"message_id": message_id})
    assert len(replies(db)) == 2


def test_a_replayed_menu_step_that_had_saved_its_answer_sends_the_saved_reply(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The step saved its new state, then could not store its reply: the state says the message is done.
    message_id = given_up_step(db, redis_client, monkeypatch, where=(replies_module, "queue_reply"))
    [letter] = letters(db)

    assert replay(letter["id"]).result == "replayed"
    assert run_queued(redis_client, "flows") == ["SUCCESS"]

    [apology, menu] = replies(db)
    assert apology == give_up.APOLOGY
    assert "1. Report a defect" in menu
    assert keys(db)[1] == f"reply:{message_id}"


def test_a_letter_the_user_has_written_after_is_refused_unless_forced(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    project_chosen: uuid.UUID,
) -> None:
    message_id = given_up_parse(db, monkeypatch)
    [letter] = letters(db)
    # As the apology asked, the user sends it again, and that one is saved and confirmed.
    again = store_inbound(db, TEXT)
    assert ai_worker.parse_message(again) == "parsed"
    assert run_queued(redis_client, "persist") == ["SUCCESS"]
    assert proposal_count(db) == 1

    refused = replay(letter["id"])

    # Before: replayed, and the first message's proposal was saved as well, a duplicate.
    assert refused.result == "refused"
    assert "1 message since" in refused.detail
    assert "--force" in refused.detail
    assert queued(redis_client, "ai") == []
    assert letters(db)[0]["replayed_at"] is None  # still pending: the operator may force it

    assert replay(letter["id"], force=True).result == "replayed"
    assert queued(redis_client, "ai") == [("ai.parse_proposal", {"message_id": message_id})]


def letter_past_the_window(db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict]:
    """A command's letter whose message is 25 hours old: (the message id, the letter)."""
    message_id = given_up_command(db, monkeypatch)
    [letter] = letters(db)
    db.execute("UPDATE messages SET created_at = now() - interval '25 hours' WHERE id = %s", (message_id,))
    return message_id, letter


def test_a_letter_past_the_24_hour_reply_window_is_refused_unless_forced(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    message_id, letter = letter_past_the_window(db, monkeypatch)

    assert wapipe(["dlq", "replay", str(letter["id"])]) == 1

    out = capsys.readouterr().out
    assert f"dead letter {letter['id']}: refused" in out
    assert "24-hour window" in out
    assert "--force" in out
    assert queued(redis_client, "commands") == []
    assert letters(db)[0]["replayed_at"] is None

    assert wapipe(["dlq", "replay", "--force", str(letter["id"])]) == 0
    assert f"dead letter {letter['id']}: replayed" in capsys.readouterr().out
    assert queued(redis_client, "commands") == [("commands.handle", {"message_id": message_id})]


def test_a_replayed_handler_that_gives_up_again_sends_no_second_apology(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = given_up_command(db, monkeypatch)
    [first] = letters(db)
    assert replay(first["id"]).result == "replayed"
    redis_client.delete("commands")

    with monkeypatch.context() as outage:
        database_down(outage)
        assert commands_worker.handle_task.apply(kwargs={"message_id": message_id}).state == "FAILURE"

    assert [letter["replayed_at"] is None for letter in letters(db)] == [False, True]  # a new letter
    assert replies(db) == [give_up.APOLOGY]


def test_an_apology_stored_as_the_reply_before_this_release_is_moved_aside_on_replay(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Letters already pending when this release is deployed had their apology stored as the reply itself.
    message_id = given_up_command(db, monkeypatch)
    db.execute("UPDATE messages SET idempotency_key = %s WHERE direction = 'out'", (f"reply:{message_id}",))
    [letter] = letters(db)

    assert replay(letter["id"]).result == "replayed"
    assert run_queued(redis_client, "commands") == ["SUCCESS"]

    assert len(replies(db)) == 2
    assert keys(db) == [f"reply:{message_id}:apology", f"reply:{message_id}"]


def test_a_command_that_answered_before_it_gave_up_is_not_answered_again_on_replay(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = dispatched(db, "/help")
    commands_worker.handle(message_id)  # answered; the task then died before it was acknowledged
    answered = replies(db)
    with monkeypatch.context() as outage:
        database_down(outage)
        commands_worker.handle_task.apply(kwargs={"message_id": message_id})
    assert replies(db) == answered  # no apology: the user has the answer
    [letter] = letters(db)

    assert replay(letter["id"]).result == "replayed"
    assert run_queued(redis_client, "commands") == ["SUCCESS"]

    assert replies(db) == answered


def test_a_refused_letter_can_be_discarded_and_then_is_never_replayed(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, letter = letter_past_the_window(db, monkeypatch)
    assert wapipe(["dlq", "replay", str(letter["id"])]) == 1  # refused: the window has closed
    before = keys(db)

    assert wapipe(["dlq", "discard", str(letter["id"]), "--reason", "window closed, user moved on"]) == 0
    assert wapipe(["dlq", "replay", "--force", str(letter["id"])]) == 1

    out = capsys.readouterr().out
    assert f"dead letter {letter['id']}: discarded" in out
    assert queued(redis_client, "commands") == []
    assert keys(db) == before  # the apology was not moved aside for a reply that will not come
    assert replies(db) == [give_up.APOLOGY]
    assert letters(db)[0]["replayed_at"] is None


def test_a_letter_is_refused_when_its_sender_wrote_since_in_a_later_conversation(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    given_up_command(db, monkeypatch)
    [letter] = letters(db)
    # The conversation is closed (idle, or by an operator); the user's resend starts a new one.
    db.execute("UPDATE conversations SET status = 'closed', closed_at = now()")
    store_inbound(db, "/help")
    assert db.execute("SELECT count(DISTINCT conversation_id) AS n FROM messages").fetchone()["n"] == 2

    refused = replay(letter["id"])

    # Before: replayed, since only the old conversation was looked at; the command was done twice.
    assert refused.result == "refused"
    assert "1 message since" in refused.detail
    assert queued(redis_client, "commands") == []
    assert letters(db)[0]["replayed_at"] is None


def test_a_message_from_someone_else_does_not_refuse_a_letter(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = given_up_command(db, monkeypatch)
    [letter] = letters(db)
    store_inbound(db, "/help", phone="+14155550199")

    assert replay(letter["id"]).result == "replayed"
    assert ("commands.handle", {"message_id": message_id}) in queued(redis_client, "commands")
