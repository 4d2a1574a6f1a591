"""A database outage delays a conversation's messages but does not reorder them (shared/arrivals.py).

Through a PostgreSQL outage the earlier message's route fails and retries with a backoff of up to 5
minutes, and the later message's route, waiting behind it, fails too (its look-up of the entries ahead).
Celery's retry keeps a task's headers, the later route's waiting clock with them; and a retried route's
entry is not lost, only due back later. Here: the line's retrying marks, the retry of a real
``inbound.route`` task published to the real broker, and real worker processes through an outage.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from celery.exceptions import Retry

from ingress.enqueue import route_job
from shared.arrivals import GIVE_UP_AFTER_SECONDS, MARK_MARGIN_SECONDS, Line, line_of, retrying_key
from shared.commands.dlq import replay
from shared.db import messages, turns
from shared.db.errors import Unavailable
from shared.db.pool import transaction
from shared.db.turns import STALE_AFTER
from shared.queues import OUTAGE_MAX_RETRIES, Job, Publisher, get_publisher, handler_key
from shared.settings import get_settings
from shared.wire.events import InboundMessage, MessageType
from tests.integration.test_arrival_order import RouteRun, line_entries, routed_event, stored_order, waits
from tests.integration.test_conversation_order import conversation, event, inbound, message, replies
from tests.integration.test_inbound_routing import queued as queued_jobs
from workers import inbound as inbound_worker
from workers import ordering
from workers.commands import handle_task
from workers.inbound import _take_place, route, route_task
from workers.signals import record_give_up

# Nothing listens there: a worker given this database sees PostgreSQL down.
DOWN_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/wapipe"


def message_of_type(kind: str) -> InboundMessage:
    """A Twilio message of type ``kind`` from the conversation's sender (as :func:`message` makes)."""
    return message("").model_copy(update={"type": MessageType(kind), "text": None})


# --- the line's retrying marks -------------------------------------------------------------------------


def test_an_entry_retrying_ahead_holds_the_line_until_well_past_its_retry(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    first, second, third = message("/help"), message("/project mobile"), message("/status")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(m) for m in (first, second, third)])
    line, key, now = Line(redis_client), line_of(first), time.time()

    assert line.retrying(key, third.dedupe_key, due=now + 60, now=now)
    assert line.drop_ahead(key, second.dedupe_key, now=now) == (0, None, True)  # itself marked first
    assert line.drop_ahead(key, second.dedupe_key, now=now) == (1, None, False)  # a mark behind holds nothing
    redis_client.zadd(key, {first.dedupe_key: 1})  # back in line, first

    assert line.retrying(key, first.dedupe_key, due=now + 60, now=now)
    assert line.drop_ahead(key, third.dedupe_key, now=now + 60 + GIVE_UP_AFTER_SECONDS - 1) == (
        0,
        now + 60,
        False,
    )
    everyone = [m.dedupe_key for m in (first, second, third)]
    assert [entry for entry, _ in line_entries(redis_client, first)] == everyone
    # Its retry long overdue, the mark no longer holds: the task is lost after all.
    later = now + 60 + GIVE_UP_AFTER_SECONDS + 1
    assert line.drop_ahead(key, third.dedupe_key, now=later) == (0, None, True)  # its own mark is old too
    assert line.drop_ahead(key, third.dedupe_key, now=later) == (2, None, False)
    assert 0 < redis_client.ttl(retrying_key(key)) <= 60 + GIVE_UP_AFTER_SECONDS + MARK_MARGIN_SECONDS + 1


def test_only_an_entry_still_in_line_is_marked_retrying(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    first = message("/help")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first)])
    line = Line(redis_client)
    line.leave(line_of(first), first.dedupe_key)  # stored: its route failed after the commit
    assert not line.retrying(line_of(first), first.dedupe_key, due=time.time() + 60)
    assert redis_client.exists(retrying_key(line_of(first))) == 0


def test_a_router_that_waited_long_keeps_waiting_for_an_earlier_message_being_retried(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    """The earlier message's route failed and is due back in two minutes; the later one has waited past
    the give-up age. It keeps its place, and counts its next give-up from when the retry is due."""
    first, second = message("/help"), message("/project mobile")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first), route_job(second)])
    due = time.time() + 120
    Line(redis_client).retrying(line_of(first), first.dedupe_key, due)
    run = RouteRun(waits=40, waiting_since=time.time() - 2 * GIVE_UP_AFTER_SECONDS)
    with pytest.raises(Retry):
        _take_place(run, second)
    [wait] = run.waits
    assert wait["headers"][ordering.WAITING_SINCE_HEADER] == due
    assert [entry for entry, _ in line_entries(redis_client, first)] == [first.dedupe_key, second.dedupe_key]


# --- a route's retry, through Celery's own Task.retry, published to the broker -------------------------


def retried_after_a_failure(
    redis_client: redis.Redis,
    task: Any,
    queue: str,
    kwargs: dict[str, Any],
    retries: int,
    waits: int,
    waiting_since: float,
    countdown: float,
) -> dict[str, Any]:
    """Run ``task``'s retry after a database failure, through Celery's own ``Task.retry``, on a request
    built as a worker builds it from a message (custom headers beside Celery's own); the headers of the
    retry it published to ``queue``."""
    headers = {ordering.TURN_WAITS_HEADER: waits, ordering.WAITING_SINCE_HEADER: waiting_since}
    with delivered(task, queue, kwargs, retries, **headers), pytest.raises(Retry):
        task.retry(exc=Unavailable("connection refused"), countdown=countdown)
    [published] = [json.loads(raw) for raw in redis_client.lrange(queue, 0, -1)]
    return published["headers"]


@contextlib.contextmanager
def delivered(task: Any, queue: str, kwargs: dict[str, Any], retries: int, **headers: Any) -> Iterator[None]:
    """``task``'s request, as a worker builds it from a message of ``queue`` (``headers`` beside Celery's
    own), while the block runs."""
    task.push_request(
        id=str(uuid.uuid4()),
        args=[],
        kwargs=kwargs,
        retries=retries,
        called_directly=False,
        delivery_info={"exchange": "", "routing_key": queue},
        **headers,
    )
    try:
        yield
    finally:
        task.pop_request()


def test_a_route_that_fails_after_storing_keeps_its_message_turn(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The route stored the message and dispatched it, then could not publish its handler's task (Redis
    failing) and is retried: its message holds the turn with no handler task to mark it retrying. Through
    an outage longer than the grace the message looks stale, yet its route is due back: a later message's
    handler waits for it instead of answering first."""
    first = message("/help")
    first_event = first.model_dump(mode="json")

    def refused(self: Publisher, jobs: Any) -> None:
        raise redis.ConnectionError("Connection refused")

    with monkeypatch.context() as outage:
        outage.setattr(Publisher, "publish", refused)
        with delivered(route_task, "inbound", {"event": first_event}, 8), pytest.raises(Retry):
            route_task.run(event=first_event)
    [stored] = db.execute("SELECT id FROM messages WHERE direction = 'in' AND dispatched_at IS NOT NULL")
    assert redis_client.llen("commands") == 0  # its handler was never published
    db.execute(  # the outage outlasted the grace
        "UPDATE messages SET created_at = now() - interval '20 minutes',"
        " dispatched_at = now() - interval '20 minutes' WHERE id = %s",
        (stored["id"],),
    )

    later = route(event("/status"))
    assert later.message_id is not None
    for _ in range(2):  # however many times it looks
        assert ordering.check_turn(later.message_id) is False

    # Its last retry fails too: the route gives up for good, and the later message goes at once.
    with monkeypatch.context() as outage:
        outage.setattr(Publisher, "publish", refused)
        with delivered(route_task, "inbound", {"event": first_event}, OUTAGE_MAX_RETRIES):
            with pytest.raises(redis.ConnectionError) as failure:
                route_task.run(event=first_event)
            route_task.on_failure(failure.value, "task-id", (), {"event": first_event}, None)
    assert redis_client.exists(ordering.retrying_key(stored["id"])) == 0
    assert ordering.check_turn(later.message_id) is True  # marked while it waited: it goes at once


@pytest.mark.parametrize("fails_at", ["publish", "decide"])
def test_a_route_that_fails_for_good_lets_the_next_message_go_at_once_and_stays_replayable(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    fails_at: str,
) -> None:
    """The route stored the message, then failed for good at once (an unexpected error, not an outage):
    its handler's task never published, or the reply of an outcome decided after the commit never queued.
    The conversation's next message is answered at once, not after the 5-minute grace; and the letter the
    route left, replayed, routes the message it gave up on."""
    first = message("/help") if fails_at == "publish" else message_of_type("unknown")
    first_event = first.model_dump(mode="json")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as bug:
        if fails_at == "publish":
            bug.setattr(Publisher, "publish", broken)
        else:
            bug.setattr(inbound_worker, "queue_reply", broken)
        with delivered(route_task, "inbound", {"event": first_event}, 0):
            with pytest.raises(RuntimeError) as failure:
                route_task.run(event=first_event)
            route_task.on_failure(failure.value, "task-id", (), {"event": first_event}, None)
            record_give_up(route_task, "task-id", failure.value, (), {"event": first_event}, apologise=False)
    [stored] = db.execute("SELECT id FROM messages WHERE direction = 'in'")

    later = route(event("/status"))
    assert later.message_id is not None
    assert ordering.check_turn(later.message_id) is True

    [letter] = db.execute("SELECT id FROM dead_letters WHERE task_name = 'inbound.route'")
    redis_client.delete("inbound", "commands")
    assert replay(letter["id"], force=True).result == "replayed"
    assert queued_jobs(redis_client, "inbound") == [("inbound.route", {"event": first_event})]
    replayed = route(first_event)
    assert replayed.message_id == stored["id"]
    assert replayed.action == ("handler" if fails_at == "publish" else "unreadable")
    if fails_at == "publish":  # the key its router took in giving up does not stop its handler now
        assert queued_jobs(redis_client, "commands") == [("commands.handle", {"message_id": stored["id"]})]


def test_a_route_failing_for_good_after_publishing_its_handler_leaves_the_handler_its_turn(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first run of the route stored the message and published its handler's task, then could not mark
    it routed; the handler, failing through the same outage, retries. The route's later runs fail too: its
    retries do not bring the handler's mark forward, and its failure for good neither clears that mark nor
    releases the turn. The handler still owes the answer: a later message waits for it."""
    first = message("/help")
    first_event = first.model_dump(mode="json")

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise Unavailable("connection refused")

    with monkeypatch.context() as outage:
        outage.setattr(inbound_worker.messages, "mark_routed", unavailable)
        with delivered(route_task, "inbound", {"event": first_event}, 0), pytest.raises(Retry):
            route_task.run(event=first_event)
    [stored] = db.execute("SELECT id FROM messages WHERE direction = 'in' AND routed_at IS NULL")
    assert redis_client.llen("commands") == 1  # its handler was published
    # The handler failed on the database too; its retry is due after any the route's own retries (their
    # countdown is capped at 300 s, with jitter) could write, so the mark must stay exactly this.
    handler_due = time.time() + 900
    ordering.mark_retrying(stored["id"], due=handler_due)
    db.execute(  # the outage outlasted the grace
        "UPDATE messages SET created_at = now() - interval '20 minutes',"
        " dispatched_at = now() - interval '20 minutes' WHERE id = %s",
        (stored["id"],),
    )
    later = route(event("/status"))
    assert later.message_id is not None

    mark = ordering.retrying_key(stored["id"])
    with monkeypatch.context() as outage:
        outage.setattr(inbound_worker.turns, "dispatched_to", unavailable)
        with delivered(route_task, "inbound", {"event": first_event}, 1), pytest.raises(Retry):
            route_task.run(event=first_event)
        assert float(redis_client.get(mark)) == handler_due  # not brought forward to the route's retry
        with delivered(route_task, "inbound", {"event": first_event}, OUTAGE_MAX_RETRIES):
            with pytest.raises(Unavailable) as failure:
                route_task.run(event=first_event)
            route_task.on_failure(failure.value, "task-id", (), {"event": first_event}, None)

    assert float(redis_client.get(mark)) == handler_due
    row = db.execute("SELECT dispatched_at FROM messages WHERE id = %s", (stored["id"],)).fetchone()
    assert row["dispatched_at"] is not None  # still the handler's turn
    for _ in range(2):  # however many times it looks
        assert ordering.check_turn(later.message_id) is False


@pytest.mark.parametrize("published", ["as_it_gives_up", "after_it_gave_up"])
def test_a_route_failing_for_good_while_another_run_routes_its_message_leaves_no_handler_out_of_turn(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    published: str,
) -> None:
    """Two runs of one route at once (a wait or a retry whose publish timed out yet landed, beside the
    delivery it was to replace): one fails for good, its handler's task unpublished, while the other has
    dispatched the message and publishes that task as the first gives the message up, or just after. A
    handler's task published must find its message holding the turn: else a later message is answered
    before it. Published as the route gives up, it keeps the turn; after, it is not published at all, and
    a run that decides the message after the give-up (a redelivery that found it stored but not routed
    yet) does not dispatch it again: it would hold the turn with no handler to answer it."""
    first = message("/help")
    first_event = first.model_dump(mode="json")

    def refused(self: Publisher, jobs: Any) -> None:
        raise redis.ConnectionError("Connection refused")

    with delivered(route_task, "inbound", {"event": first_event}, OUTAGE_MAX_RETRIES):
        with monkeypatch.context() as outage:
            outage.setattr(Publisher, "publish", refused)
            with pytest.raises(redis.ConnectionError) as failure:
                route_task.run(event=first_event)
        [stored] = db.execute("SELECT id FROM messages WHERE direction = 'in' AND dispatched_at IS NOT NULL")
        later = route(event("/status"))
        assert later.message_id is not None
        # The other run: the message dispatched (again), the publish of its handler's task next.
        handler_job = Job(
            "commands.handle", {"message_id": stored["id"]}, dedupe_key=handler_key(stored["id"])
        )
        with transaction() as conn:
            turns.mark_dispatched(conn, stored["id"], handler_job.task)
        outcome: list[bool] = []
        real_give_up = turns.give_up_route

        def published_meanwhile(conn: psycopg.Connection, message_id: int) -> bool:
            outcome.extend(get_publisher().publish([handler_job]))
            return real_give_up(conn, message_id)

        with monkeypatch.context() as race:
            if published == "as_it_gives_up":
                race.setattr(turns, "give_up_route", published_meanwhile)
            route_task.on_failure(failure.value, "task-id", (), {"event": first_event}, None)
    if published == "after_it_gave_up":
        outcome.extend(get_publisher().publish([handler_job]))
        # A third run, which found the message stored and not routed before the give-up committed.
        decided = inbound_worker._decide(stored["id"], get_settings())
        assert (decided.action, decided.handler) == ("given_up", None)
    with transaction() as conn:  # the other run finishes: the message marked routed
        messages.mark_routed(conn, stored["id"])

    row = db.execute("SELECT dispatched_at FROM messages WHERE id = %s", (stored["id"],)).fetchone()
    its_handler = [job for job in queued_jobs(redis_client, "commands") if job[1] == handler_job.kwargs]
    if published == "as_it_gives_up":
        assert outcome == [True]
        assert its_handler == [(handler_job.task, handler_job.kwargs)]
        assert row["dispatched_at"] is not None  # its handler's turn, until it answers
        assert ordering.check_turn(later.message_id) is False
    else:
        assert outcome == [False]  # the route that gave up took its key: the task is never published
        assert its_handler == []
        assert row["dispatched_at"] is None  # given up: it holds no turn, and a replay routes it
        assert ordering.check_turn(later.message_id) is True


@pytest.mark.parametrize("fails", ["forgo_answer_lost", "commit"])
def test_a_route_give_up_that_does_not_commit_leaves_its_handler_key_free(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    fails: str,
) -> None:
    """The route fails for good and its give-up takes the handler's key, but does not commit: the answer to
    that SET was lost (a timeout after it landed), or the commit after it failed. The message stays
    dispatched and unrouted; the key must not stay "forgone" (for days), or no run of its route could
    publish its handler: the next one publishes it, and it is answered."""
    first = message("/help")
    first_event = first.model_dump(mode="json")

    def refused(self: Publisher, jobs: Any) -> None:
        raise redis.ConnectionError("Connection refused")

    backends: list[int] = []
    real_give_up, real_forgo = turns.give_up_route, Publisher.forgo

    def give_up_on_its_backend(conn: psycopg.Connection, message_id: int) -> bool:
        backends.append(conn.info.backend_pid)
        return real_give_up(conn, message_id)

    def forgo_then_fail(self: Publisher, dedupe_key: str) -> bool:
        taken = real_forgo(self, dedupe_key)
        if fails == "forgo_answer_lost":
            raise redis.TimeoutError("Timeout reading from socket")
        # The give-up's connection is lost before its COMMIT.
        db.execute("SELECT pg_terminate_backend(%s, 5000)", (backends[-1],))
        return taken

    with delivered(route_task, "inbound", {"event": first_event}, OUTAGE_MAX_RETRIES):
        with monkeypatch.context() as outage:
            outage.setattr(Publisher, "publish", refused)
            with pytest.raises(redis.ConnectionError) as failure:
                route_task.run(event=first_event)
        with monkeypatch.context() as broken:
            broken.setattr(turns, "give_up_route", give_up_on_its_backend)
            broken.setattr(Publisher, "forgo", forgo_then_fail)
            route_task.on_failure(failure.value, "task-id", (), {"event": first_event}, None)
    [stored] = db.execute("SELECT id FROM messages WHERE direction = 'in' AND routed_at IS NULL")
    assert redis_client.get(handler_key(stored["id"])) is None

    redis_client.delete("commands")
    assert route(first_event).action == "handler"  # the route redelivered
    assert queued_jobs(redis_client, "commands") == [("commands.handle", {"message_id": stored["id"]})]


def test_a_failed_route_retries_marked_as_retrying_and_not_counting_its_wait(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    """A route that had waited for an earlier message, then failed on the database: its retry keeps its
    count of waits, but not when it began to wait (Celery's retry would keep that header, and the backoff
    through an outage would count as waiting); and its entry holds the line until the retry is due."""
    first, second = message("/help"), message("/project mobile")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first), route_job(second)])
    redis_client.delete("inbound")
    began = time.time() - 3 * GIVE_UP_AFTER_SECONDS

    headers = retried_after_a_failure(
        redis_client, route_task, "inbound", {"event": second.model_dump(mode="json")}, 2, 7, began, 240
    )

    assert headers["retries"] == 3
    assert headers[ordering.TURN_WAITS_HEADER] == 7
    assert ordering.WAITING_SINCE_HEADER not in headers
    # The entry is due back with the retry: a router behind it that has waited long does not drop it.
    third = message("/status")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(third)])
    dropped, due, _ = Line(redis_client).drop_ahead(line_of(first), third.dedupe_key, now=time.time() + 240)
    assert dropped == 0
    assert due is not None
    assert due >= began + 3 * GIVE_UP_AFTER_SECONDS + 240


def test_a_failed_handler_retries_waiting_afresh_marked_as_retrying(redis_client: redis.Redis) -> None:
    """The handler stages' tasks (workers.ordering.StageTask) likewise: a handler that waited for an earlier
    message's turn, then failed, would otherwise pass MAX_WAIT_SECONDS through a long outage and answer
    out of turn as soon as the database is back. And its message is marked as retrying, due when the retry
    is, so a later message does not pass it over once it has held the turn past the stale grace."""
    redis_client.delete("commands")
    before = time.time()

    headers = retried_after_a_failure(
        redis_client, handle_task, "commands", {"message_id": 41}, 0, 3, time.time() - 600, 120
    )

    mark = ordering.retrying_key(41)
    assert before + 120 <= float(redis_client.get(mark)) <= time.time() + 120
    grace = STALE_AFTER.total_seconds()
    assert 120 + grace <= redis_client.ttl(mark) <= 120 + grace + MARK_MARGIN_SECONDS + 1
    assert (headers["task"], headers["retries"], headers[ordering.TURN_WAITS_HEADER]) == (
        "commands.handle",
        1,
        3,
    )
    assert ordering.WAITING_SINCE_HEADER not in headers


# --- real worker processes through an outage -----------------------------------------------------------


def fail_through_an_outage(
    start_worker: Callable[..., Any], wait_for: Callable[..., Any], queue: str, task_ids: Iterable[str]
) -> None:
    """A worker of ``queue`` that sees PostgreSQL down runs these tasks until each has failed and scheduled
    its retry, then stops: the retries still pending go back on the queue."""
    outage = start_worker([queue], concurrency=2, env={"WAPIPE_DATABASE_URL": DOWN_DATABASE_URL})
    wait_for(
        lambda: all(failure_retried(outage.lines(), task_id) for task_id in task_ids),
        timeout=60,
        what=f"the {queue} tasks retried after failing on the database",
    )
    outage.stop()


def test_a_database_outage_does_not_let_the_later_message_overtake_the_earlier_one(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    """Both routes fail while PostgreSQL is down and are retried. Then, the database back, the later one
    has waited past the give-up age (its clock moved on here, instead of waiting minutes) while the
    earlier one's retry is still pending: the later one keeps waiting, and both are stored in order."""
    first, second = message("/help"), message("/project mobile")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first), route_job(second)])
    task_ids = [headers_of(raw)["id"] for raw in queued(redis_client)]

    fail_through_an_outage(start_worker, wait_for, "inbound", task_ids)
    held = {routed_event(raw)["provider_message_id"]: raw for raw in queued(redis_client)}
    assert held.keys() == {first.provider_message_id, second.provider_message_id}, "a retry was not put back"
    redis_client.delete("inbound")
    later = json.loads(held[second.provider_message_id])
    assert later["headers"][ordering.TURN_WAITS_HEADER] >= 4  # it looked the entries ahead up, and failed
    assert ordering.WAITING_SINCE_HEADER not in later["headers"]

    later["headers"][ordering.WAITING_SINCE_HEADER] = time.time() - 2 * GIVE_UP_AFTER_SECONDS
    redis_client.lpush("inbound", json.dumps(later))
    back = start_worker(["inbound"], env={"WAPIPE_MODE": "project"})
    wait_for(
        lambda: waits(back.lines()) >= 3 or stored_order(db),
        what="the later message's route waiting, or stored",
    )
    assert stored_order(db) == []

    redis_client.lpush("inbound", held[first.provider_message_id])  # the earlier one's retry comes
    wait_for(lambda: len(stored_order(db)) == 2, what="both messages stored")
    assert stored_order(db) == [first.provider_message_id, second.provider_message_id]


def test_a_database_outage_longer_than_the_grace_does_not_let_a_later_handler_answer_first(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    """Two commands dispatched 20 minutes ago (an outage longer than the stale grace, without its wait), both
    handlers failing on the database and retried. Then, the database back, the later one's retry comes
    first: the earlier one is stale, but retrying, so the later one waits for it; both answered in order."""
    convo = conversation(db)
    first, second = (inbound(db, convo, age="20 minutes", dispatched="20 minutes") for _ in range(2))
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish(
        [Job("commands.handle", {"message_id": message_id}) for message_id in (first, second)]
    )
    task_ids = {headers_of(raw)["id"] for raw in queued(redis_client, "commands")}

    fail_through_an_outage(start_worker, wait_for, "commands", task_ids)
    held = {handled_message(raw): raw for raw in queued(redis_client, "commands")}
    assert held.keys() == {first, second}, "a retry was not put back"
    redis_client.delete("commands")

    redis_client.lpush("commands", held[second])
    back = start_worker(["commands"])
    wait_for(
        lambda: turn_waits(back.lines()) >= 3 or replies(db),
        what="the later message's handler waiting, or answering",
    )
    assert replies(db) == []

    redis_client.lpush("commands", held[first])  # the earlier one's retry comes
    wait_for(lambda: len(replies(db)) == 2, what="both messages answered")
    assert [row["inbound_id"] for row in replies(db)] == [first, second]


def queued(client: redis.Redis, queue: str = "inbound") -> list[bytes]:
    return client.lrange(queue, 0, -1)


def handled_message(task_message: bytes) -> int:
    """The message id a handler task message carries."""
    _, kwargs, _ = json.loads(base64.b64decode(json.loads(task_message)["body"]))
    return kwargs["message_id"]


def turn_waits(lines: list[str]) -> int:
    """How many times a handler task put itself back to wait for its turn."""
    return sum(1 for line in lines if "commands.handle" in line and "waiting for an earlier" in line)


def headers_of(task_message: bytes) -> dict[str, Any]:
    return json.loads(task_message)["headers"]


def failure_retried(lines: list[str], task_id: str) -> bool:
    """Whether the worker logged a retry of task ``task_id`` after a failure (not a wait)."""
    return any(task_id in line and "Unavailable" in line and "retry" in line.lower() for line in lines)
