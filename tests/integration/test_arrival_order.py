"""A conversation's messages are stored in the order the ingress accepted them, whichever router runs first.

The ingress records each message's arrival in its conversation's line in the same publish as its route
task (shared/arrivals.py); a router stores a message only once every earlier one of its line is stored.
Here: the line as the publisher writes it, the router's look at it, and real worker processes given the
later message before the earlier one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis
import structlog
from celery.exceptions import Retry

from ingress.enqueue import route_job, status_job
from shared.arrivals import GIVE_UP_AFTER_SECONDS, Line, line_key, line_of
from shared.queues import Job, Publisher
from shared.wire.events import DeliveryStatus, InboundMessage, StatusUpdate
from tests.integration.test_conversation_order import PHONE, message
from workers import inbound as inbound_worker
from workers import ordering
from workers.inbound import _take_place, route, route_task

OTHER_PHONE = "+15551239999"


def line_entries(client: redis.Redis, of: InboundMessage) -> list[tuple[str, float]]:
    return [(entry.decode(), score) for entry, score in client.zrange(line_of(of), 0, -1, withscores=True)]


def stored_order(db: psycopg.Connection) -> list[str]:
    """The provider ids of the inbound messages, in the order of their ids (the order they are answered)."""
    rows = db.execute("SELECT provider_message_id FROM messages WHERE direction = 'in' ORDER BY id")
    return [row["provider_message_id"] for row in rows]


# --- the line, as the ingress's publish writes it ------------------------------------------------------


def test_each_accepted_message_joins_its_conversations_line_in_publish_order(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
    first, second, third = message("/help"), message("/project mobile"), message("/status")
    elsewhere = message("hi", phone=OTHER_PHONE)
    # Two publishes in one script run (same microsecond on Redis's clock), then one more.
    publisher.publish([route_job(first), route_job(second), route_job(elsewhere)])
    publisher.publish([route_job(third)])

    entries = line_entries(redis_client, first)
    assert [entry for entry, _ in entries] == [m.dedupe_key for m in (first, second, third)]
    scores = [score for _, score in entries]
    assert scores == sorted(scores)
    assert len(set(scores)) == 3
    assert [entry for entry, _ in line_entries(redis_client, elsewhere)] == [elsewhere.dedupe_key]
    assert line_of(first) != line_of(elsewhere)
    assert PHONE.lstrip("+") not in line_of(first)  # no phone number in a key


def test_a_duplicate_a_status_and_a_job_without_a_line_join_no_line(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
    first = message("/help")
    assert publisher.publish([route_job(first)]) == [True]
    assert publisher.publish([route_job(first)]) == [False]  # the provider's retry
    receipt = StatusUpdate(provider="twilio", provider_message_id="SMout", status=DeliveryStatus.delivered)
    publisher.publish([status_job(receipt), Job("inbound.route", {"event": {}}, None, line_of(first))])
    assert [entry for entry, _ in line_entries(redis_client, first)] == [first.dedupe_key]
    assert redis_client.keys("arrivals:*") == [line_of(first).encode()]


# --- the router's look at the line ---------------------------------------------------------------------


def test_a_place_lists_the_earlier_entries(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
    first, second, third = message("/help"), message("/project mobile"), message("/status")
    publisher.publish([route_job(first), route_job(second), route_job(third)])
    line = Line(redis_client)
    key = line_of(first)
    assert line.ahead(key, first.dedupe_key) == ()
    assert line.ahead(key, third.dedupe_key) == (first.dedupe_key, second.dedupe_key)
    assert line.ahead(key, message("not in line").dedupe_key) == ()

    line.leave(key, first.dedupe_key)
    assert line.ahead(key, third.dedupe_key) == (second.dedupe_key,)
    assert line.drop_ahead(key, third.dedupe_key) == (0, None, True)  # it marks itself first
    assert line.drop_ahead(key, third.dedupe_key) == (1, None, False)
    assert [entry for entry, _ in line_entries(redis_client, first)] == [third.dedupe_key]


class RouteRun:
    """What :func:`workers.inbound._take_place` sees of an ``inbound.route`` task delivered by a worker,
    having waited ``waits`` times since ``waiting_since``; records the waits it schedules."""

    name = "inbound.route"

    def __init__(self, waits: int = 0, waiting_since: float | None = None) -> None:
        headers = {} if waiting_since is None else {ordering.WAITING_SINCE_HEADER: waiting_since}
        self.request = SimpleNamespace(
            called_directly=False, is_eager=False, **{ordering.TURN_WAITS_HEADER: waits}, **headers
        )
        self.waits: list[dict[str, Any]] = []

    def signature_from_request(self, request: Any, **options: Any) -> Any:
        return SimpleNamespace(apply_async=lambda: self.waits.append(options))


def test_a_sender_whose_phone_comes_and_goes_keeps_one_line(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    # A WhatsApp user with a username: Meta sends their phone with some messages and not with others, but
    # always their business-scoped id; the router stores both in one conversation, so in arrival order.
    def from_user(text: str, phone: str | None) -> InboundMessage:
        return InboundMessage(
            provider="meta",
            provider_message_id=f"wamid.{text}",
            business_number="106540352242922",
            sender_phone=phone,
            sender_bsuid="US.13491208655302741918",
            text=text,
        )

    first, second = from_user("first", PHONE), from_user("second", None)
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first), route_job(second)])
    run = RouteRun()
    with pytest.raises(Retry):
        _take_place(run, second)
    assert len(run.waits) == 1


def test_messages_an_earlier_release_lined_up_by_phone_keep_their_order(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    # Queued by an ingress of the release before lines were keyed by the business-scoped id first (a
    # rolling deploy, or a backlog it left): their entries are in the phone's line.
    def from_user(text: str) -> InboundMessage:
        return InboundMessage(
            provider="meta",
            provider_message_id=f"wamid.{text}",
            business_number="106540352242922",
            sender_phone=PHONE,
            sender_bsuid="US.13491208655302741918",
            text=text,
        )

    def earlier_release_job(of: InboundMessage) -> Job:
        phone_line = line_key(of.provider.value, of.business_number, PHONE)
        return Job("inbound.route", {"event": of.model_dump(mode="json")}, of.dedupe_key, phone_line)

    first, second = from_user("first"), from_user("second")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish(
        [earlier_release_job(first), earlier_release_job(second)]
    )
    run = RouteRun()
    with pytest.raises(Retry):
        _take_place(run, second)
    assert len(run.waits) == 1

    route(first.model_dump(mode="json"), inbound=first)  # stored: it leaves the phone's line too
    _take_place(RouteRun(), second)


def test_the_next_in_line_looks_again_soon_and_one_further_back_later(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    messages = [message(f"photo {index}") for index in range(12)]
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(m) for m in messages])
    countdowns = []
    for later in (messages[1], messages[11]):
        run = RouteRun()
        with pytest.raises(Retry):
            _take_place(run, later)
        [wait] = run.waits
        assert wait["headers"][ordering.TURN_WAITS_HEADER] == 1
        countdowns.append(wait["countdown"])
    assert countdowns[0] <= ordering.FIRST_WAIT_SECONDS
    assert countdowns[1] >= 11 * ordering.FIRST_WAIT_SECONDS / 2


def test_old_entries_are_waited_for_when_the_wait_has_just_begun(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    """After a backlog (routers stopped for a while) every entry arrived long ago, yet each message's route
    task is on its way: a router that has just begun to wait keeps its place, and no entry is dropped."""
    first, second = message("/help"), message("/project mobile")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first), route_job(second)])
    long_ago = 1_000_000 * (time.time() - 3 * GIVE_UP_AFTER_SECONDS)
    redis_client.zadd(line_of(first), {first.dedupe_key: long_ago, second.dedupe_key: long_ago + 1})
    run = RouteRun()
    with pytest.raises(Retry):
        _take_place(run, second)
    assert [entry for entry, _ in line_entries(redis_client, first)] == [first.dedupe_key, second.dedupe_key]


def test_a_router_that_waited_too_long_drops_the_entries_ahead_and_goes_on(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lost, first, second = message("lost"), message("/help"), message("/project mobile")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(m) for m in (lost, first, second)])
    run = RouteRun(waits=40, waiting_since=time.time() - GIVE_UP_AFTER_SECONDS - 1)
    with structlog.testing.capture_logs() as logs:
        # A logger made inside the capture: the module's may have cached an earlier configuration's
        # processors (cache_logger_on_first_use), which the capture would not see.
        monkeypatch.setattr(inbound_worker, "log", structlog.get_logger(inbound_worker.__name__))
        with pytest.raises(Retry):
            _take_place(run, second)  # it marks its own entry first, and looks again
        _take_place(run, second)  # returns: it stores now
    [wait] = run.waits
    assert wait["countdown"] == ordering.PASS_OVER_LOOK_SECONDS
    assert [entry for entry, _ in line_entries(redis_client, first)] == [second.dedupe_key]
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["earlier_messages"] == 2
    assert "seen:" not in repr(logs)  # no provider id: a Meta id encodes the sender's number


def test_two_routers_giving_up_at_once_store_in_arrival_order(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    """The first message's route task was lost; the next two began to wait for it at the same moment (after
    a backlog) and both reach the give-up age at once. Whichever gives up first, the second is stored
    before the third: a live router's entry is not dropped with the lost one."""
    lost, second, third = message("lost"), message("/help"), message("/project mobile")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(m) for m in (lost, second, third)])
    began = time.time() - GIVE_UP_AFTER_SECONDS - 1
    stored: list[InboundMessage] = []
    for _ in range(3):
        for waiter in (third, second):  # the third looks first each time
            if waiter in stored:
                continue
            with contextlib.suppress(Retry):
                _take_place(RouteRun(waits=40, waiting_since=began), waiter)
                route(waiter.model_dump(mode="json"), inbound=waiter)
                stored.append(waiter)
    assert stored_order(db) == [second.provider_message_id, third.provider_message_id]


def test_storing_a_message_takes_it_out_of_the_line(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    first = message("/help")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first)])
    route(first.model_dump(mode="json"))
    assert line_entries(redis_client, first) == []


def test_a_route_that_fails_for_good_leaves_the_line(
    clean: None, redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    first = message("/help")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first)])
    route_task.on_failure(RuntimeError("boom"), "task-id", (), {"event": first.model_dump(mode="json")}, None)
    assert line_entries(redis_client, first) == []
    # Nothing to leave for what is not an event.
    route_task.on_failure(RuntimeError("boom"), "task-id", ({"not": "an event"},), {}, None)


# --- real worker processes -----------------------------------------------------------------------------


def test_a_router_given_the_later_message_first_waits_for_the_earlier_one(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    """The earlier message's route task is held back (taken off the queue) while the router runs the later
    one's: the later one must wait, not take the smaller id; once the earlier task is back, both are
    stored, earlier first."""
    first, second = message("/help"), message("/project mobile")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first), route_job(second)])
    held = redis_client.rpop("inbound")  # the oldest message on the queue
    assert held is not None
    assert routed_event(held)["provider_message_id"] == first.provider_message_id
    worker = start_worker(["inbound"], env={"WAPIPE_MODE": "project"})
    wait_for(lambda: waits(worker.lines()) >= 3, what="the later message's route waiting")
    assert stored_order(db) == []

    redis_client.lpush("inbound", held)
    wait_for(lambda: len(stored_order(db)) == 2, what="both messages stored")
    assert stored_order(db) == [first.provider_message_id, second.provider_message_id]
    wait_for(lambda: line_entries(redis_client, first) == [], what="the line emptied")


def test_an_earlier_entry_whose_message_is_stored_does_not_hold_the_line(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    """A router that died between its commit and leaving the line left its entry behind: the next
    message's router finds the message stored, drops the entry and goes on, long before the stale age."""
    first, second = message("/help"), message("/project mobile")
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(first)])
    [(entry, score)] = line_entries(redis_client, first)
    route(first.model_dump(mode="json"))
    redis_client.zadd(line_of(first), {entry: score})  # as if it had never left
    redis_client.delete("inbound")  # the first route task, already run above

    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([route_job(second)])
    start_worker(["inbound"], env={"WAPIPE_MODE": "project"})
    wait_for(lambda: len(stored_order(db)) == 2, what="the later message stored")
    assert stored_order(db) == [first.provider_message_id, second.provider_message_id]
    wait_for(lambda: line_entries(redis_client, first) == [], what="the line emptied")


def routed_event(task_message: bytes) -> dict[str, Any]:
    """The event an ``inbound.route`` task message carries."""
    _, kwargs, _ = json.loads(base64.b64decode(json.loads(task_message)["body"]))
    return kwargs["event"]


def waits(lines: list[str]) -> int:
    """How many times a route task put itself back to wait."""
    return sum(1 for line in lines if "inbound.route" in line and "retry" in line.lower())
