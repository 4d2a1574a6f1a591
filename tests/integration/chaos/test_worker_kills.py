"""Chaos: ``kill -9`` a random worker process every half second while messages flow end to end, main
processes included; and ``kill -9`` a worker's main process while it holds messages.

Signed ``/help`` webhooks from linked users go through the ingress -> ``inbound.route`` ->
``commands.handle`` -> ``notify.send`` -> the fake Twilio API, each stage in its own prefork pool. A
killer thread SIGKILLs a random process of the ``inbound`` and ``commands`` pools every 0.5 s:

- mostly a pool child: the parent reports the lost task (``acks_late`` + ``reject_on_worker_lost``), it is
  redelivered at once, and the idempotent stages turn the redelivery into no second effect;
- every eighth kill (every 4 s) the pool's main process, the one that takes messages from Redis and holds
  them (running in a child, prefetched, or an ETA countdown). Its children die with it (Celery sets their
  parent-death signal); it puts nothing back, and its lease (shared/broker.py) runs out; the workers still
  alive then put back what it held, well before the hour-long visibility timeout. The killer then starts
  a replacement, as a supervisor (systemd, a Procfile runner) would. Main processes are killed while the
  first three quarters of the replies come in: each such kill holds its messages back for about 35 s,
  and kills all the way to the end would keep pushing the end back.

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
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from tests.integration.conftest import WorkerProcess

MESSAGES = 2000
KILL_EVERY_SECONDS = 0.5
MAIN_EVERY = 8  # every eighth kill takes a main process
MAINS_UNTIL_REPLIES = MESSAGES * 3 // 4
KILLED_POOLS = ("inbound", "commands")
MAIN_KILL_MESSAGES = 200
PUT_BACK = "put back messages held by workers that are gone"


class Killer(threading.Thread):
    """SIGKILLs one random process of the given pools every ``interval`` seconds: a pool child, or every
    ``main_every``-th time (while ``mains_wanted()``) a pool's main process, which ``restart`` replaces."""

    def __init__(
        self,
        workers: dict[str, WorkerProcess],
        restart: Callable[[str], WorkerProcess],
        interval: float,
        main_every: int,
        mains_wanted: Callable[[], bool],
    ) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self._current = dict(workers)
        self._restart = restart
        self._interval = interval
        self._main_every = main_every
        self._mains_wanted = mains_wanted
        self._stop_event = threading.Event()
        self.started = {pool: [worker] for pool, worker in workers.items()}
        self.kills: list[int] = []
        self.main_kills: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random()
        try:
            while not self._stop_event.wait(self._interval):
                if (len(self.kills) + 1) % self._main_every == 0 and self._mains_wanted():
                    self._kill_a_main(rng.choice(sorted(self._current)))
                else:
                    self._kill_a_child(rng)
        except BaseException as exc:  # a replacement that never got ready: the test reports it
            self.error = exc

    def _kill_a_child(self, rng: random.Random) -> None:
        children = [
            child
            for worker in self._current.values()
            for child in _children(worker.process.pid)
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        ]
        if not children:
            return
        victim = rng.choice(children)
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            return
        self.kills.append(victim.pid)

    def _kill_a_main(self, pool: str) -> None:
        victim = self._current[pool].process
        victim.kill()  # the main process alone: its children get their parent-death signal
        victim.wait(timeout=10)
        self.kills.append(victim.pid)
        self.main_kills.append(victim.pid)
        replacement = self._restart(pool)
        self._current[pool] = replacement
        self.started[pool].append(replacement)

    def lines(self, pool: str) -> list[str]:
        return [line for worker in self.started[pool] for line in worker.lines()]

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=90)
        assert not self.is_alive(), "the killer did not stop"
        if self.error is not None:
            raise self.error


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_message_gets_exactly_one_reply_while_worker_processes_are_killed(
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

        killer = Killer(
            {pool: workers[pool] for pool in KILLED_POOLS},
            restart=lambda pool: start_worker([pool], concurrency=2, env=env),
            interval=KILL_EVERY_SECONDS,
            main_every=MAIN_EVERY,
            mains_wanted=lambda: len(fake.replies_per_recipient()) < MAINS_UNTIL_REPLIES,
        )
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

        assert len(killer.kills) >= 5, "the killer did not get to kill enough processes to mean anything"
        # Killing an idle process proves nothing: some child kill hit a task while it ran, which the pool's
        # parent reports as the task's WorkerLostError before the message is redelivered; and some main
        # kill left messages held, which a live worker put back once the lease ran out.
        chaos_lines = [line for pool in KILLED_POOLS for line in killer.lines(pool)]
        assert any("WorkerLostError" in line for line in chaos_lines), "no kill hit a running task"
        assert killer.main_kills, "no main process was killed"
        put_back = [line for line in chaos_lines + workers["notify"].lines() if PUT_BACK in line]
        assert put_back, "no main process killed held anything"
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
        # Gone and holding nothing: the sweeps no longer look at it.
        owners = [owner.decode() for owner in redis_client.smembers(broker.OWNERS_KEY)]
        assert not [owner for owner in owners if owner.split(":")[1] == str(victim)]
