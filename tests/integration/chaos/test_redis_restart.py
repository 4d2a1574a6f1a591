"""Chaos: the broker (our own redis-server, AOF with ``appendfsync always``) restarts in the middle of a run.

Webhooks keep arriving while Redis is down: the ingress answers 503 (so Twilio retries, as it does on any
5xx) and acknowledges nothing it did not enqueue. Tasks in flight when Redis went away, queued ones (kept
in the AOF) and the ones published after it came back all complete: every webhook that got a 2xx is
answered exactly once.

This test found what shared/broker.py guards against: on ``SIGTERM`` Redis may run a command in its last
turn and exit before answering it. A worker then recorded a message it had just taken in ``unacked``
without knowing it (the message waited there for the hour-long visibility timeout), and a message a plain
``BRPOP`` took in that turn was lost outright (about 1 run in 5). The fetch is now one step on the server
that takes and records, and whatever Redis did not answer is settled on reconnect
(tests/integration/test_broker.py holds each step on its own).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest
import redis

from shared.broker import Channel
from tests.integration.chaos.harness import (
    POOLS,
    WORKER_ENV,
    ChaosTwilioAPI,
    Ingress,
    assert_exactly_one_reply_each,
    phones,
    seed_linked_users,
    sent_count,
)
from tests.integration.chaos.servers import PrivateRedis, private_folder

MESSAGES = 300
OUTAGE_SECONDS = 3.0
# Four senders, one webhook each per interval: ~40/s, spread over the run.
SEND_INTERVAL_SECONDS = 0.1
# What a worker logs when Redis went away while it held messages (shared/broker.py), and once it put them
# back: the proof that the restart hit tasks in flight, not idle workers.
HELD_WHEN_REDIS_WENT = "what Redis did not confirm goes back on its queue on reconnect"
PUT_BACK = "broker back; what it did not confirm is back on its queue"


def workers_hold_messages(broker_url: str) -> bool:
    """Whether a worker holds a message now (taken, not yet acked: running, prefetched or counting down)."""
    client = redis.Redis.from_url(broker_url)
    try:
        return int(client.hlen(Channel.unacked_key)) > 0
    finally:
        client.close()


@contextlib.contextmanager
def frozen(workers: list[Any]) -> Iterator[None]:
    """Every process of the workers stopped (SIGSTOP) inside the block, so what they hold cannot change
    between a look at the broker and the restart; continued after it, whatever happened."""
    processes = []
    for worker in workers:
        main = psutil.Process(worker.process.pid)
        processes += [main, *main.children(recursive=True)]
    stopped = []
    try:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.suspend()
                stopped.append(process)
        yield
    finally:
        for process in stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


def stop_while_workers_hold_messages(broker: PrivateRedis, workers: list[Any], timeout: float = 60) -> None:
    """Stop Redis at a moment a worker holds a message. Looked at with the workers frozen: a look and a
    stop with them running could straddle the ack of the last message held (1 run in 4)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with frozen(workers):
            if workers_hold_messages(broker.url):
                broker.stop()
                return
        time.sleep(0.01)
    pytest.fail(f"no worker held a message within {timeout:g}s")


@pytest.mark.slow
def test_webhooks_acknowledged_around_a_redis_restart_are_answered_exactly_once(
    db: Any,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    database_url = test_servers["WAPIPE_DATABASE_URL"]
    numbers = phones(MESSAGES, offset=2000)
    probe = phones(1, offset=3999)[0]
    seed_linked_users(database_url, [*numbers, probe])
    with private_folder() as folder:
        broker = PrivateRedis(folder / "redis").start()
        try:
            with ChaosTwilioAPI() as fake:
                env = {**WORKER_ENV, **fake.credentials_env(), "WAPIPE_REDIS_URL": broker.url}
                workers = [start_worker(list(pool), concurrency=2, env=env) for pool in POOLS]
                ingress = Ingress(broker.url, fake.auth_token)

                accepted: list[str] = []
                lock = threading.Lock()

                def deliver(phone: str) -> list[int]:
                    time.sleep(
                        SEND_INTERVAL_SECONDS
                    )  # Twilio's pace, so webhooks keep coming during the outage
                    final, codes = ingress.send_until_accepted(phone)
                    if 200 <= final < 300:
                        with lock:
                            accepted.append(phone)
                    return codes

                with ThreadPoolExecutor(max_workers=4) as senders:
                    results = senders.map(deliver, numbers)
                    # Mid-run: a third of the webhooks in, replies flowing, tasks in flight in every pool.
                    wait_for(
                        lambda: len(fake.replies_per_recipient()) >= MESSAGES // 6,
                        timeout=120,
                        what="replies",
                    )
                    wait_for(lambda: len(accepted) >= MESSAGES // 3, timeout=120, what="a third acknowledged")
                    # Stopped while workers hold messages, so the restart lands on tasks in flight.
                    stop_while_workers_hold_messages(broker, workers)
                    down_codes = [ingress.send(probe)]
                    time.sleep(OUTAGE_SECONDS)  # the outage itself, not an assertion
                    down_codes.append(ingress.send(probe))
                    broker.start()
                    codes = [code for per_webhook in results for code in per_webhook]
                final, _ = ingress.send_until_accepted(probe)
                with lock:
                    accepted.append(probe)

                # While Redis was down the ingress said 503, never a 2xx it could not keep.
                assert down_codes == [503, 503]
                assert final == 200
                # Webhooks arriving during the outage were refused, then accepted when Twilio retried them.
                assert 503 in codes
                assert set(codes) <= {200, 503}
                assert sorted(accepted) == sorted([*numbers, probe])

                wait_for(
                    lambda: len(fake.replies_per_recipient()) >= len(accepted),
                    timeout=180,
                    interval=0.5,
                    what="a reply to every acknowledged webhook",
                )
                wait_for(
                    lambda: sent_count(database_url) >= len(accepted), timeout=60, what="replies recorded"
                )
                assert_exactly_one_reply_each(fake, database_url, accepted)

                # The restart hit work in flight: a worker held messages when Redis went away and put them
                # back once it returned (a restart between tasks would prove nothing about them).
                lines = [line for worker in workers for line in worker.lines()]
                assert any(HELD_WHEN_REDIS_WENT in line for line in lines), "no worker held a message"
                assert any(PUT_BACK in line for line in lines), "no worker put back what it held"
        finally:
            broker.stop()
