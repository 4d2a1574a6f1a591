"""Outbound pacing when every Redis round trip is slow (a Redis on another host, or a loaded one): the real
Redis behind a TCP proxy on 127.0.0.1 that holds every reply 40-60 ms, notify sending through the real
twilio SDK to the fake Twilio API. Every message still goes out, and no one-second window of the fake's
arrivals holds more than the configured rate."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
import redis
import structlog.testing

from shared.providers import get_sender
from shared.providers.aio import get_loop
from shared.ratelimit import RateLimiter
from shared.settings import load_settings
from tests.fakes.twilio_api import FakeTwilioAPI, busiest_second
from tests.integration.test_notify_pacing import queue_messages, settled, store_messages
from tests.integration.test_notify_send import twilio_settings
from workers import notify
from workers.notify import RetryLater, dispatch

REPLY_DELAY_SECONDS = (0.04, 0.06)


class SlowRedisProxy:
    """A TCP proxy in front of Redis that passes requests on at once and holds each reply chunk a random
    40-60 ms before passing it back (in order): what a client sees of a Redis far away."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slow-redis", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def __enter__(self) -> SlowRedisProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            others = asyncio.all_tasks() - {asyncio.current_task()}
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        upstream_in, upstream_out = await asyncio.open_connection(*self._upstream)
        tasks = [
            asyncio.create_task(self._pipe(client_in, upstream_out, delay=False)),
            asyncio.create_task(self._pipe(upstream_in, client_out, delay=True)),
        ]
        # Cancelled at teardown too: the connection then just closes, with nothing to report.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_out, upstream_out):
            writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, delay: bool) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                sink.write(chunk)
                await sink.drain()

        deliverer = asyncio.create_task(deliver())
        try:
            last_due = 0.0
            while chunk := await source.read(65536):
                # Never before an earlier chunk: a stream keeps its order, however long each is held.
                pause = random.uniform(*REPLY_DELAY_SECONDS) if delay else 0.0
                last_due = max(last_due, loop.time() + pause)
                held.put_nowait((last_due, chunk))
            while not held.empty():
                await asyncio.sleep(0.01)
        finally:
            deliverer.cancel()


@pytest.fixture
def slow_redis(test_servers: dict[str, str]) -> Iterator[tuple[SlowRedisProxy, int]]:
    """The proxy in front of the session's Redis server, and the session's database index."""
    direct = redis.Redis.from_url(test_servers["WAPIPE_REDIS_URL"])
    kwargs = direct.connection_pool.connection_kwargs
    direct.close()
    with SlowRedisProxy(kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379))) as proxy:
        yield proxy, int(kwargs.get("db", 0))


@pytest.fixture
def fake() -> Iterator[FakeTwilioAPI]:
    with FakeTwilioAPI() as api:
        yield api


def store_texts(count: int) -> list[int]:
    """``count`` queued texts, each to its own recipient who wrote a minute ago; no jobs: the test runs
    the task body itself."""
    return store_messages(count, prefix="+1416")


def queued(db: psycopg.Connection, ids: list[int]) -> list[int]:
    rows = db.execute("SELECT id FROM messages WHERE id = ANY(%s) AND status = 'queued' ORDER BY id", (ids,))
    return [row["id"] for row in rows]


def test_a_slow_redis_still_paces_every_message_out_at_the_rate(
    db, redis_client, fake, slow_redis, monkeypatch
) -> None:
    rate, count = 20, 40  # one task's batch holds two seconds of the rate: all 40
    proxy, redis_db = slow_redis
    settings = twilio_settings(fake, send_rate=rate)
    loop = get_loop()
    # This process's pacer books its slots through the slow proxy (the rest of the task talks to Redis
    # directly: only the pacing's round trips matter here).
    pacer = notify._Pacer(loop, RateLimiter(redis.Redis.from_url(proxy.url(redis_db))), settings)
    monkeypatch.setattr(notify, "_pacers", {id(loop): pacer})
    # A batch that cannot get its slots goes back to the queue this soon, so a failure shows quickly.
    monkeypatch.setattr(notify, "MAX_PACING_WAIT_SECONDS", 3.0)
    ids = store_texts(count)
    sender = get_sender(settings)

    # Each round is one run of a task: a message the batch gave back is made due again at once.
    for _ in range(3):
        waiting = queued(db, ids)
        if not waiting:
            break
        with contextlib.suppress(RetryLater):
            dispatch(waiting[0], settings=settings, sender=sender)
        db.execute("UPDATE messages SET send_after = NULL WHERE id = ANY(%s)", (ids,))

    rows = db.execute("SELECT status FROM messages WHERE id = ANY(%s)", (ids,)).fetchall()
    assert Counter(row["status"] for row in rows) == {"sent": count}
    assert len({request.form["To"] for request in fake.created()}) == count  # each recipient once
    assert len(fake.requests()) == count
    assert busiest_second(fake.arrival_times()) <= rate


def test_two_workers_behind_a_slow_redis_send_everything_and_never_exceed_the_rate(
    db, redis_client, start_worker, wait_for, fake, slow_redis, test_servers
) -> None:
    rate, workers = 50, 2
    proxy, redis_db = slow_redis
    # Everything the workers do with Redis (broker, results, pacing) crosses the proxy.
    env = {
        **fake.credentials_env(),
        "WAPIPE_SEND_RATE": str(rate),
        "WAPIPE_PUBLIC_URL": "https://bot.example",
        "WAPIPE_REDIS_URL": proxy.url(redis_db),
    }
    for _ in range(workers):
        start_worker(["notify"], concurrency=4, env=env, pool="threads")
    ids = queue_messages(test_servers["WAPIPE_REDIS_URL"], 300)

    rows = wait_for(lambda: settled(db, ids), timeout=120, what="all 300 messages to be sent")

    assert Counter(row["status"] for row in rows) == {"sent": 300}
    assert len({request.form["To"] for request in fake.created()}) == 300
    assert len(fake.requests()) == 300
    assert busiest_second(fake.arrival_times()) <= rate


def test_a_redis_too_slow_to_pace_by_is_logged_and_its_sends_go_back_to_the_queue(
    db, redis_client, fake, slow_redis, monkeypatch
) -> None:
    proxy, redis_db = slow_redis
    settings = twilio_settings(fake, send_rate=20)
    loop = get_loop()
    pacer = notify._Pacer(loop, RateLimiter(redis.Redis.from_url(proxy.url(redis_db))), settings)
    monkeypatch.setattr(notify, "_pacers", {id(loop): pacer})
    # Round trips of 40-60 ms against a pad of at most 10 ms: every booking comes back too late to use.
    monkeypatch.setattr(notify, "MAX_PACING_PAD_SECONDS", 0.01)
    # Long enough for the sends to keep missing their slots past PACING_STUCK_WARNING_SECONDS first.
    monkeypatch.setattr(notify, "MAX_PACING_WAIT_SECONDS", 2 * notify.PACING_STUCK_WARNING_SECONDS)
    ids = store_texts(10)

    with structlog.testing.capture_logs() as logs:
        # A logger made inside the capture: notify's own may have cached the processors of an earlier
        # configure_logging in this process (cache_logger_on_first_use), which the capture would not see.
        monkeypatch.setattr(notify, "log", structlog.get_logger(notify.__name__))
        with pytest.raises(RetryLater):
            dispatch(ids[0], settings=settings, sender=get_sender(settings))

    assert fake.requests() == []  # nothing goes out late, crowding the slots booked after it
    assert queued(db, ids) == ids
    warnings = Counter(entry["event"] for entry in logs if entry["log_level"] == "warning")
    # Each kind of trouble once: the warnings are limited to one per sender number every 30 s.
    assert warnings["sends keep missing their pacing slots; booking again"] == 1
    assert warnings["sends waited too long for a pacing slot; back to the queue"] == 1


def test_one_slow_reply_among_fast_ones_pads_nothing(redis_client) -> None:
    # A busy host's occasional slow reply must not pad every booking (a tenth of the rate, and latency).
    pacer = notify._Pacer(get_loop(), RateLimiter(redis_client), load_settings())
    now = time.monotonic()
    pacer._round_trips.extend([(now, 0.002)] * 9 + [(now, 0.08)])
    assert pacer._pad(now) == 0.0
    # A Redis slow on most replies is padded for by its typical round trip.
    pacer._round_trips.extend([(now, 0.05)] * 12)
    assert pacer._pad(now) == pytest.approx(0.05)
