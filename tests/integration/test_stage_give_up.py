"""A handler stage that gives up on a message for good leaves a dead letter and tells the sender to try
again, once; a few minutes of PostgreSQL outage is not enough to make it give up; ``wapipe dlq replay``
publishes the task again, which sends its real reply once (more in test_dlq_replay_handlers.py); and with
the database itself down at that moment the worker logs what it lost and goes on.

The outage is PostgreSQL refusing the handler's first read (``answers.start`` raising ``Unavailable``, as
shared/db/pool.py turns a refused connection into), so the dead letter and the reply can still be written
to the real database when the task gives up; the failures of a real worker process are real.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import redis
from celery.utils.time import get_exponential_backoff_interval

from shared.commands.dlq import replay
from shared.db.errors import Unavailable
from shared.queues import Job, Publisher
from tests.integration.test_bot_workers import PHONE, replies, store_inbound
from tests.integration.test_inbound_routing import queued
from workers import commands as commands_worker
from workers import signals as give_up  # connects the task_failure handler in this process, as a worker does

# The outage a handler must outlast: a failover or a restart of PostgreSQL.
OUTAGE_SECONDS = 10 * 60


def dispatched(db: psycopg.Connection, text: str) -> int:
    """An inbound message the router handed to commands.handle: it holds its conversation's turn."""
    message_id = store_inbound(db, text)
    db.execute(
        "UPDATE messages SET routed_at = now(), dispatched_at = now(), dispatched_to = 'commands.handle'"
        " WHERE id = %s",
        (message_id,),
    )
    return message_id


def letters(db: psycopg.Connection) -> list[dict[str, Any]]:
    columns = "id, task_name, message_id, payload, error, attempts, replayed_at"
    return db.execute(f"SELECT {columns} FROM dead_letters ORDER BY id").fetchall()  # noqa: S608 - constant


def database_down(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The handler's reads fail as with PostgreSQL unreachable; returns the list its attempts land in."""
    attempts: list[int] = []

    def refused(*_: Any, **__: Any) -> None:
        attempts.append(1)
        raise Unavailable("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    monkeypatch.setattr(commands_worker.answers, "start", refused)
    return attempts


def test_a_handler_outlasts_minutes_of_database_outage() -> None:
    task = commands_worker.handle_task
    # Celery's countdown before retry n is drawn at random below this cap (full jitter).
    caps = [
        get_exponential_backoff_interval(task.retry_backoff, n, task.retry_backoff_max, full_jitter=False)
        for n in range(task.max_retries)
    ]
    assert sum(caps) / 2 > OUTAGE_SECONDS  # what the retries last on average before the task gives up


def test_a_handler_that_gives_up_is_dead_lettered_and_the_sender_gets_one_apology(
    clean: None, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = dispatched(db, "/help")
    attempts = database_down(monkeypatch)

    result = commands_worker.handle_task.apply(kwargs={"message_id": message_id})

    assert result.state == "FAILURE"
    assert len(attempts) == 1 + commands_worker.handle_task.max_retries
    [letter] = letters(db)
    assert letter["task_name"] == "commands.handle"
    assert letter["message_id"] == message_id
    assert letter["payload"] == {"message_id": message_id}  # what a replay publishes
    assert letter["error"].startswith("Unavailable: ")
    assert PHONE not in letter["error"]
    assert replies(db) == [give_up.APOLOGY]
    # The message no longer holds its conversation's turn: it was answered, with the apology.
    row = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row["handled_at"] is not None

    # The same task failing again (redelivered): no second letter, no second apology.
    commands_worker.handle_task.apply(kwargs={"message_id": message_id})
    assert len(letters(db)) == 1
    assert replies(db) == [give_up.APOLOGY]


def test_a_reply_already_stored_gets_no_apology(
    clean: None, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = dispatched(db, "/help")
    commands_worker.handle(message_id)  # answered; say the task then died before it was acknowledged
    answered = replies(db)
    database_down(monkeypatch)

    assert commands_worker.handle_task.apply(kwargs={"message_id": message_id}).state == "FAILURE"

    assert replies(db) == answered
    assert [letter["message_id"] for letter in letters(db)] == [message_id]


def test_replaying_the_letter_publishes_the_task_again_and_sends_nothing_twice(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = dispatched(db, "/help")
    with monkeypatch.context() as outage:
        database_down(outage)
        commands_worker.handle_task.apply(kwargs={"message_id": message_id})
    [letter] = letters(db)
    redis_client.delete("notify")

    assert replay(letter["id"]).result == "replayed"

    assert queued(redis_client, "commands") == [("commands.handle", {"message_id": message_id})]
    assert letters(db)[0]["replayed_at"] is not None
    # The replayed task runs with the database back and sends its real answer, under reply:<id> (the
    # apology has a key of its own); run again, it sends nothing more.
    for _ in range(2):
        assert commands_worker.handle_task.apply(kwargs={"message_id": message_id}).state == "SUCCESS"
        assert replies(db)[0] == give_up.APOLOGY
        assert len(replies(db)) == 2


@pytest.mark.slow
def test_a_real_worker_dead_letters_a_job_it_cannot_run(
    clean: None,
    db: psycopg.Connection,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    # A job this worker's code does not take (say a newer router's, during a rolling deploy): a TypeError,
    # which no retry can fix, so the task fails at once.
    message_id = dispatched(db, "/help")
    start_worker(["commands"])
    job = Job("commands.handle", {"message_id": message_id, "added_later": True})
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([job])

    [letter] = wait_for(lambda: letters(db), what="the dead letter")
    assert (letter["task_name"], letter["message_id"]) == ("commands.handle", message_id)
    assert letter["attempts"] == 1
    assert letter["payload"] == {"message_id": message_id, "added_later": True}
    assert letter["error"].startswith("TypeError")
    assert wait_for(lambda: replies(db), what="the apology") == [give_up.APOLOGY]


@pytest.mark.slow
def test_with_the_database_down_the_worker_logs_what_it_lost_and_goes_on(
    clean: None,
    db: psycopg.Connection,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    message_id = dispatched(db, "/help")
    # Nothing listens on port 1: PostgreSQL refuses every connection, as while it restarts.
    down = "postgresql://wapipe@127.0.0.1:1/wapipe?connect_timeout=1"
    # A short wait for a connection: each attempt to store the letter or the apology waits it out.
    worker = start_worker(["commands"], env={"WAPIPE_DATABASE_URL": down, "WAPIPE_DB_POOL_TIMEOUT": "1"})
    publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
    publisher.publish([Job("commands.handle", {"message_id": message_id, "added_later": True})])

    def logged(event: str) -> list[dict[str, Any]]:
        return [entry for entry in _json(worker.lines()) if entry.get("event") == event]

    [lost] = wait_for(lambda: logged("task gave up; its dead letter could not be stored"), timeout=60)
    assert (lost["task"], lost["message_id"], lost["level"]) == ("commands.handle", message_id, "error")
    assert lost["error_type"] == "TypeError"
    wait_for(lambda: logged("could not queue the apology of a task that gave up"), timeout=60)
    assert all(PHONE not in line for line in worker.lines())

    # Still working: the next job is taken and fails the same way, logged again.
    publisher.publish([Job("commands.handle", {"message_id": message_id + 1, "added_later": True})])
    wait_for(lambda: len(logged("task gave up; its dead letter could not be stored")) == 2, timeout=60)
    assert letters(db) == []


def _json(lines: list[str]) -> list[dict[str, Any]]:
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return [entry for entry in entries if isinstance(entry, dict)]
