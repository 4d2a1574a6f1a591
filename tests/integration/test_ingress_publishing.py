"""Group commit in the ingress publisher: concurrent requests share round trips, each keeps its answer."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from ingress.publishing import GroupPublisher
from shared.queues import Job, Publisher


def _job(key: str, payload: object = "x") -> Job:
    return Job("inbound.route", {"event": {"id": key, "payload": payload}}, dedupe_key=f"seen:test:{key}")


def test_concurrent_publishes_each_get_their_own_answer(
    redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    group = GroupPublisher(Publisher(test_servers["WAPIPE_REDIS_URL"]))
    # 400 requests over 100 distinct message ids: each id enqueued exactly once, whoever wins.
    keys = [f"m{i % 100}" for i in range(400)]

    def request(key: str) -> bool:
        [flag] = group.publish([_job(key)])
        return flag

    with ThreadPoolExecutor(16) as pool:
        flags = list(pool.map(request, keys))
    winners = [key for key, flag in zip(keys, flags, strict=True) if flag]
    assert sorted(winners) == sorted(set(keys))
    assert redis_client.llen("inbound") == 100


def test_requests_arriving_during_a_round_trip_share_the_next_one(
    redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    base = Publisher(test_servers["WAPIPE_REDIS_URL"])
    real_publish = base.publish
    batches: list[int] = []
    release = threading.Event()

    def held_publish(jobs: list[Job]) -> list[bool]:
        batches.append(len(jobs))
        if len(batches) == 1:
            release.wait(timeout=30)  # the first round trip is "slow" until every other request queued
        return real_publish(jobs)

    base.publish = held_publish  # type: ignore[method-assign]  # observe batches; the real publish runs
    group = GroupPublisher(base)
    with ThreadPoolExecutor(12) as pool:
        first = pool.submit(group.publish, [_job("first")])
        while not batches:
            time.sleep(0.01)
        rest = [pool.submit(group.publish, [_job(f"r{i}")]) for i in range(11)]
        while group.waiting < 11:
            time.sleep(0.01)
        release.set()
        assert first.result() == [True]
        assert [future.result() for future in rest] == [[True]] * 11
    assert batches == [1, 11]
    assert redis_client.llen("inbound") == 12


def test_broker_down_fails_every_waiter_and_recovers(redis_client: redis.Redis) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    group = GroupPublisher(Publisher(f"redis://127.0.0.1:{port}/0"))

    def request(i: int) -> str:
        try:
            group.publish([_job(f"down{i}")])
        except redis.RedisError:
            return "503"
        return "200"

    for _ in range(2):  # a second round proves no leader was left stuck
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(request, range(16))) == {"503"}


def test_a_bad_job_fails_only_its_own_request(
    redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    group = GroupPublisher(Publisher(test_servers["WAPIPE_REDIS_URL"]))

    def request(i: int) -> str:
        payload: object = object() if i == 5 else "ok"  # not JSON-serialisable
        try:
            group.publish([_job(f"b{i}", payload)])
        except TypeError:
            return "error"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(request, range(40)))
    assert results.count("error") == 1
    assert results[5] == "error"
    assert redis_client.llen("inbound") == 39


def test_single_thread_is_a_plain_publish(redis_client: redis.Redis, test_servers: dict[str, str]) -> None:
    group = GroupPublisher(Publisher(test_servers["WAPIPE_REDIS_URL"]))
    assert group.publish([_job("s1"), _job("s2"), _job("s1")]) == [True, True, False]
    assert group.publish([_job("s1")]) == [False]
    with pytest.raises(ValueError, match="queue"):
        group.publish([Job("nowhere.go", {})])


def test_a_connection_redis_closed_is_replaced_before_publishing(
    redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    # As after a Redis restart or an idle timeout: the publisher's connection is gone under it, and the
    # next webhook must still be enqueued (not answered 503).
    publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
    assert publisher.publish([_job("k1")]) == [True]
    connection = publisher._connection()
    connection.send_command("CLIENT", "ID")
    redis_client.client_kill_filter(_id=connection.read_response())
    assert publisher.publish([_job("k2"), _job("k1")]) == [True, False]
    assert redis_client.llen("inbound") == 2


def test_a_script_redis_does_not_know_is_sent_whole(
    redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    # Redis forgets cached scripts on restart (and SCRIPT FLUSH): EVALSHA answers NOSCRIPT, which must
    # not become a 503. A sha Redis has never seen stands in for the flushed cache.
    publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
    publisher._script.sha = "0" * 40
    assert publisher.publish([_job("n1"), _job("n1")]) == [True, False]
    assert publisher.publish([_job("n1")]) == [False]
    assert redis_client.llen("inbound") == 1


def test_each_thread_publishes_on_its_own_connection(
    redis_client: redis.Redis, test_servers: dict[str, str]
) -> None:
    publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
    all_started = threading.Barrier(4)

    def connection_of_a_thread(_: int) -> int:
        all_started.wait(timeout=30)  # four calls in four distinct threads
        return id(publisher._connection())

    with ThreadPoolExecutor(4) as pool:
        connections = list(pool.map(connection_of_a_thread, range(4)))
        flags = list(pool.map(lambda i: publisher.publish([_job(f"t{i % 50}")]), range(200)))
    assert len(set(connections)) == 4
    assert sum(flag for [flag] in flags) == 50
    assert redis_client.llen("inbound") == 50


def test_a_request_no_publish_took_in_time_gets_a_redis_timeout_and_is_not_published(
    redis_client: redis.Redis, test_servers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stuck leader: the request behind it gives up (503 upstream, the provider retries) and its job is
    # never published by the batch it left. A zero wait stands in for WAIT_SECONDS having passed.
    monkeypatch.setattr("ingress.publishing.WAIT_SECONDS", 0.0)
    base = Publisher(test_servers["WAPIPE_REDIS_URL"])
    real_publish = base.publish
    running, release = threading.Event(), threading.Event()

    def stuck_publish(jobs: list[Job]) -> list[bool]:
        running.set()
        release.wait(timeout=30)
        return real_publish(jobs)

    base.publish = stuck_publish  # type: ignore[method-assign]
    group = GroupPublisher(base)
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(group.publish, [_job("stuck")])
        assert running.wait(timeout=30)
        with pytest.raises(redis.TimeoutError, match="shared publish"):
            group.publish([_job("late")])
        release.set()
        assert stuck.result() == [True]
    assert group.waiting == 0
    assert redis_client.llen("inbound") == 1
    assert group.publish([_job("late")]) == [True]  # the lead was released; the retry goes through
