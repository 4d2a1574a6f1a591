"""Chaos: ``kill -9`` a worker child every half second while messages flow end to end; and ``kill -9`` a
worker's main process while it holds messages.

Signed ``/help`` webhooks from linked users go through the ingress -> ``inbound.route`` ->
``commands.handle`` -> ``notify.send`` -> the fake Twilio API, each stage in its own prefork pool. A
killer thread SIGKILLs a random pool child of the ``inbound`` and ``commands`` pools every 0.5 s; the
parent reports the lost task (``acks_late`` + ``reject_on_worker_lost``), it is redelivered, and the
idempotent stages turn the redelivery into no second effect.

N = 2,000, the issue's figure. The waits below only bound a failure: the run took 4.5 minutes while four
other test sessions shared this 2-core machine (load average ~10), so this test gets a timeout of its own
above the suite's 300 s. The kills come every half second (the issue asks for one every few seconds) so
that even a quick run sees plenty of them.

Why the ``notify`` pool is not a target here: a child killed *during the provider call* leaves an
outcome nobody can know (neither Twilio nor Meta takes an idempotency key on send), and notify.send is
at-most-once by design in that case: after a 120 s lease it dead-letters the message as
``outcome_unknown`` for an operator instead of risking a duplicate (see workers/notify.py). "Exactly one
reply" cannot hold for that window by construction, so the killer stays on the stages where
redelivery must give exactly once.

A worker's main process is the one that takes messages from Redis and holds them (running in a child,
prefetched, or an ETA countdown): killed, it puts nothing back, and its lease (shared/broker.py) runs out;
the workers still alive then put back what it held, well before the hour-long visibility timeout.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest
import redis

from shared import broker
from tests.integration.chaos.harness import (
    POOLS,
    WORKER_ENV,
    ChaosTwilioAPI,
    Ingress,
    assert_exactly_one_reply_each,
    phones,
    queues_empty,
    seed_linked_users,
    sent_count,
)

MESSAGES = 2000
KILL_EVERY_SECONDS = 0.5
KILLED_POOLS = {"inbound", "commands"}
MAIN_KILL_MESSAGES = 200


class Killer(threading.Thread):
    """SIGKILLs one random pool child of the given worker processes every ``interval`` seconds."""

    def __init__(self, parents: list[int], interval: float) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self._parents = parents
        self._interval = interval
        self._stop_event = threading.Event()
        self.kills: list[int] = []

    def run(self) -> None:
        rng = random.Random()
        while not self._stop_event.wait(self._interval):
            children = [
                child
                for parent in self._parents
                for child in _children(parent)
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
            ]
            if not children:
                continue
            victim = rng.choice(children)
            try:
                victim.kill()
            except psutil.NoSuchProcess:
                continue
            self.kills.append(victim.pid)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_message_gets_exactly_one_reply_while_worker_children_are_killed(
    db: Any,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    database_url = test_servers["WAPIPE_DATABASE_URL"]
    numbers = phones(MESSAGES)
    seed_linked_users(database_url, numbers)
    with ChaosTwilioAPI() as fake:
        env = {**WORKER_ENV, **fake.credentials_env()}
        workers = {pool[0]: start_worker(list(pool), concurrency=2, env=env) for pool in POOLS}
        ingress = Ingress(test_servers["WAPIPE_REDIS_URL"], fake.auth_token)

        killer = Killer([workers[p].process.pid for p in KILLED_POOLS], KILL_EVERY_SECONDS)
        killer.start()
        try:
            with ThreadPoolExecutor(max_workers=4) as pool:
                codes = list(pool.map(ingress.send, numbers))
            assert set(codes) == {200}
            wait_for(
                lambda: len(fake.replies_per_recipient()) >= MESSAGES,
                timeout=600,
                interval=0.5,
                what=f"a reply to each of the {MESSAGES} messages",
            )
        finally:
            killer.stop()
        # Quiet: nothing left on any queue and every reply row final; a late duplicate would show here.
        wait_for(lambda: queues_empty(redis_client), timeout=60, what="empty queues")
        wait_for(lambda: sent_count(database_url) >= MESSAGES, timeout=60, what="every reply recorded sent")

        assert len(killer.kills) >= 5, "the killer did not get to kill enough children to mean anything"
        # Killing an idle child proves nothing: some kill hit a task while it ran, which the pool's parent
        # reports as the task's WorkerLostError before the message is redelivered.
        lost = [line for pool in KILLED_POOLS for line in workers[pool].lines() if "WorkerLostError" in line]
        assert lost, "no kill hit a running task"
        assert_exactly_one_reply_each(fake, database_url, numbers)


def held_by(client: redis.Redis, pid: int) -> list[str]:
    """The delivery tags the worker process ``pid`` holds (owner ids read "host:pid:random")."""
    owners = client.hgetall(broker.OWNER_HASH)
    return [tag.decode() for tag, owner in owners.items() if owner.decode().split(":")[1] == str(pid)]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_what_a_killed_worker_main_process_held_is_answered_exactly_once_soon_after(
    db: Any,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    database_url = test_servers["WAPIPE_DATABASE_URL"]
    numbers = phones(MAIN_KILL_MESSAGES, offset=5000)
    seed_linked_users(database_url, numbers)
    with ChaosTwilioAPI() as fake:
        env = {**WORKER_ENV, **fake.credentials_env()}
        workers = {pool[0]: start_worker(list(pool), concurrency=2, env=env) for pool in POOLS}
        ingress = Ingress(test_servers["WAPIPE_REDIS_URL"], fake.auth_token)
        victim = workers["inbound"].process.pid

        with ThreadPoolExecutor(max_workers=4) as pool:
            codes = pool.map(ingress.send, numbers)
            wait_for(lambda: held_by(redis_client, victim), timeout=60, interval=0.01, what="inbound holding")
            os.kill(victim, signal.SIGKILL)  # the main process alone; its pool children are orphaned
            assert set(codes) == {200}
        held = held_by(redis_client, victim)
        assert held, "the killed worker held nothing"
        start_worker(["inbound"], concurrency=2, env=env)

        # Bounds a failure only: the lease runs out in 30 s, and the next sweep puts the messages back.
        wait_for(
            lambda: len(fake.replies_per_recipient()) >= MAIN_KILL_MESSAGES,
            timeout=120,
            interval=0.5,
            what=f"a reply to each of the {MAIN_KILL_MESSAGES} messages, the {len(held)} held ones included",
        )
        wait_for(lambda: queues_empty(redis_client), timeout=60, what="empty queues")
        wait_for(lambda: sent_count(database_url) >= MAIN_KILL_MESSAGES, timeout=60, what="replies recorded")
        assert_exactly_one_reply_each(fake, database_url, numbers)
        assert not held_by(redis_client, victim)
