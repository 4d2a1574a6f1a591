"""flows.step's two kinds of retry, counted apart: waits for a conversation's lock another worker holds
(:class:`shared.flows.service.Busy`, short countdowns, up to ``BUSY_RETRIES``) and retries through a
PostgreSQL or Redis outage (the standard ``OUTAGE_RETRIES``, which shared/db/turns.py's ``HORIZON`` is
derived from). A step that waited long for the lock must still get the whole outage schedule, from its
first countdown, and no more; one retried through an outage must still wait its whole bound for the lock.

The real task runs on real PostgreSQL and Redis, on each retry it published to the real broker, read
back from the ``flows`` queue and run on a request built from it as a worker builds one; the outage is the
flows stage's Redis client refusing connections; the final give-up is a real worker's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from celery.exceptions import MaxRetriesExceededError, Retry

from shared.flows import service
from shared.flows.service import LOCK_KEY
from shared.queues import (
    OUTAGE_BACKOFF_MAX_SECONDS,
    OUTAGE_BACKOFF_SECONDS,
    OUTAGE_MAX_RETRIES,
    Job,
    get_publisher,
    handler_key,
)
from tests.integration.flows_support import add_inbound, make_conversation
from workers import flows
from workers import signals as give_up  # connects the task_failure handler, as in a worker

PHONE = "+15550100023"
QUEUE = "flows"
# Nothing listens there: the flows stage's Redis refuses every connection, as through a failover.
DOWN_REDIS_URL = "redis://127.0.0.1:1/0"


def dispatched_step(db: psycopg.Connection, redis_client: redis.Redis, text: str = "hi") -> tuple[int, int]:
    """An inbound message the router handed to flows.step, its task queued: (message id, conversation id)."""
    contact_id, conversation_id = make_conversation(db, PHONE)
    message_id = add_inbound(db, contact_id, conversation_id, text)
    db.execute(
        "UPDATE messages SET dispatched_at = now(), dispatched_to = 'flows.step' WHERE id = %s", (message_id,)
    )
    redis_client.set(handler_key(message_id), 1)
    get_publisher().publish([Job("flows.step", {"message_id": message_id})])
    return message_id, conversation_id


def queued(redis_client: redis.Redis) -> dict[str, Any]:
    """The one task message on the flows queue, taken off it."""
    [raw] = redis_client.lrange(QUEUE, 0, -1)
    redis_client.delete(QUEUE)
    return json.loads(raw)


def run(task_message: dict[str, Any]) -> None:
    """Run flows.step on the request a worker builds from ``task_message`` (its headers, Celery's and
    ours, and its delivery), as the worker would."""
    args, kwargs, _ = json.loads(base64.b64decode(task_message["body"]))
    flows.step_task.push_request(
        **task_message["headers"],
        args=args,
        kwargs=kwargs,
        called_directly=False,
        delivery_info={"exchange": "", "routing_key": QUEUE},
    )
    try:
        flows.step_task.run(*args, **kwargs)
    finally:
        flows.step_task.pop_request()


def retried(redis_client: redis.Redis, task_message: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Run the task, which must schedule itself again: (its countdown, the message it published)."""
    with pytest.raises(Retry) as retry:
        run(task_message)
    assert retry.value.when is not None
    return float(retry.value.when), queued(redis_client)


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """``outage(True)``: from now on the flows stage's Redis (its locks and sessions) refuses connections;
    ``outage(False)``: it is back."""
    down = redis.Redis.from_url(DOWN_REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    real = service._redis_client

    def switch(on: bool) -> None:
        monkeypatch.setattr(service, "_redis_client", (lambda url: down) if on else real)

    yield switch
    down.close()


def hold_lock(redis_client: redis.Redis, conversation_id: int) -> None:
    """Another worker holds the conversation's lock (and keeps renewing it)."""
    redis_client.set(LOCK_KEY.format(conversation_id=conversation_id), "another-worker", px=600_000)


def busy_cap(waits: int) -> float:
    """The longest countdown of a step's ``waits + 1``-th wait for the lock."""
    return min(flows.BUSY_COUNTDOWN_MAX, flows.BUSY_COUNTDOWN_FIRST * 2 ** min(waits, 5))


def outage_cap(retries: int) -> float:
    """The longest countdown of the ``retries + 1``-th retry through an outage (Celery's full jitter draws
    it at random below)."""
    return min(OUTAGE_BACKOFF_MAX_SECONDS, OUTAGE_BACKOFF_SECONDS * 2**retries)


def test_a_step_that_waited_long_for_the_lock_gets_the_outage_schedule_from_its_start(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, outage: Callable[[bool], None]
) -> None:
    _, conversation_id = dispatched_step(db, redis_client)
    task_message = queued(redis_client)
    hold_lock(redis_client, conversation_id)
    waits = 100  # far more than an outage's retries: each would have counted as one
    for wait in range(waits):
        countdown, task_message = retried(redis_client, task_message)
        assert countdown <= busy_cap(wait)
    assert task_message["headers"]["retries"] == 0  # no failure yet

    outage(True)
    for retry in range(OUTAGE_MAX_RETRIES):
        countdown, task_message = retried(redis_client, task_message)
        assert countdown <= outage_cap(retry)  # 2 s at first, not the 120 s cap of 100 retries
        assert task_message["headers"]["retries"] == retry + 1
    # The standard budget spent (turns.HORIZON counts on it): it gives up, a dead letter.
    with pytest.raises(redis.ConnectionError):
        run(task_message)
    assert redis_client.llen(QUEUE) == 0


def test_outage_retries_and_waits_for_the_lock_count_apart(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, outage: Callable[[bool], None]
) -> None:
    _, conversation_id = dispatched_step(db, redis_client)
    task_message = queued(redis_client)
    outage(True)
    for _ in range(OUTAGE_MAX_RETRIES):  # its whole outage budget
        _, task_message = retried(redis_client, task_message)
    outage(False)

    hold_lock(redis_client, conversation_id)
    for wait in range(flows.BUSY_RETRIES):  # still its whole bound of waits, as short as ever
        countdown, task_message = retried(redis_client, task_message)
        assert countdown <= busy_cap(wait)
        assert task_message["headers"]["retries"] == OUTAGE_MAX_RETRIES
    # Its waits spent, the lock held all along: it gives up for good, as it always did.
    with pytest.raises(MaxRetriesExceededError):
        run(task_message)
    assert redis_client.llen(QUEUE) == 0


def test_outage_retries_between_waits_for_the_lock_take_none_of_them(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, outage: Callable[[bool], None]
) -> None:
    _, conversation_id = dispatched_step(db, redis_client)
    task_message = queued(redis_client)
    hold_lock(redis_client, conversation_id)
    half = flows.BUSY_RETRIES // 2
    for _ in range(half):
        _, task_message = retried(redis_client, task_message)
    outage(True)
    for retry in range(3):
        countdown, task_message = retried(redis_client, task_message)
        assert countdown <= outage_cap(retry)
    outage(False)
    for _ in range(flows.BUSY_RETRIES - half):
        _, task_message = retried(redis_client, task_message)
    with pytest.raises(MaxRetriesExceededError):
        run(task_message)


def test_a_wait_for_its_turn_keeps_the_count_of_waits_for_the_lock(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    """Waiting behind another stage's message (workers/ordering.py) between waits for the lock does not
    start the lock's bound afresh."""
    contact_id, conversation_id = make_conversation(db, PHONE)
    verify = add_inbound(db, contact_id, conversation_id, "VERIFY 123456")
    db.execute(
        "UPDATE messages SET dispatched_at = now(), dispatched_to = 'verify.check_code', handled_at = now()"
        " WHERE id = %s",
        (verify,),
    )
    message_id = add_inbound(db, contact_id, conversation_id, "hi")
    db.execute(
        "UPDATE messages SET dispatched_at = now(), dispatched_to = 'flows.step' WHERE id = %s", (message_id,)
    )
    redis_client.set(handler_key(message_id), 1)
    get_publisher().publish([Job("flows.step", {"message_id": message_id})])
    task_message = queued(redis_client)
    hold_lock(redis_client, conversation_id)
    for _ in range(flows.BUSY_RETRIES):
        _, task_message = retried(redis_client, task_message)

    db.execute("UPDATE messages SET handled_at = NULL WHERE id = %s", (verify,))  # its turn, not yet ours
    _, task_message = retried(redis_client, task_message)
    db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (verify,))

    with pytest.raises(MaxRetriesExceededError):
        run(task_message)


@pytest.mark.slow
def test_a_step_whose_waits_for_the_lock_run_out_is_dead_lettered_and_its_sender_told(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    """The lock held past every wait (a holder stuck beyond what any live one holds it): the task fails
    for good on a real worker, kept as a dead letter, its sender told to try again, its turn released."""
    message_id, conversation_id = dispatched_step(db, redis_client)
    task_message = queued(redis_client)
    hold_lock(redis_client, conversation_id)
    for _ in range(flows.BUSY_RETRIES - 1):
        _, task_message = retried(redis_client, task_message)
    redis_client.rpush(QUEUE, json.dumps(task_message))  # back on the queue, its last wait to come

    start_worker([QUEUE], env={"WAPIPE_MODE": "menu", "WAPIPE_FLOWS": "shopfloor"})

    [letter] = wait_for(
        lambda: db.execute("SELECT task_name, message_id, error FROM dead_letters").fetchall(),
        what="the dead letter",
    )
    assert (letter["task_name"], letter["message_id"]) == ("flows.step", message_id)
    assert letter["error"].startswith("MaxRetriesExceededError")
    apology = wait_for(
        lambda: db.execute(
            "SELECT body FROM messages WHERE direction = 'out' AND conversation_id = %s", (conversation_id,)
        ).fetchall(),
        what="the apology",
    )
    assert [row["body"] for row in apology] == [give_up.APOLOGY]
    row = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row["handled_at"] is not None  # its turn released: the conversation goes on
