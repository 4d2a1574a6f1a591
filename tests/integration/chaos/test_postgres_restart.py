"""Chaos: PostgreSQL (our own embedded one, on a free port) restarts in the middle of a run.

``pg_ctl restart -m fast`` cuts every pooled connection and rolls back open transactions. Tasks that hit
it fail with ``OperationalError`` / ``Unavailable`` and retry; the pools replace their dead connections;
every message still gets exactly one reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from shared.db.migrate import migrate
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
from tests.integration.chaos.servers import PrivatePostgres, private_folder

MESSAGES = 300
# What a task fails with when PostgreSQL goes away under it, which the workers retry (workers/__init__.py).
DATABASE_LOST = ("Unavailable", "OperationalError", "AdminShutdown")
# Four senders, one webhook each per interval: ~40/s, so the restart lands while messages still arrive.
SEND_INTERVAL_SECONDS = 0.1


@pytest.mark.slow
def test_every_message_is_answered_once_across_a_postgres_restart(
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    with private_folder() as folder:
        database = PrivatePostgres(folder / "var").start()
        try:
            migrate(database.url)
            numbers = phones(MESSAGES, offset=4000)
            seed_linked_users(database.url, numbers)
            with ChaosTwilioAPI() as fake:
                env = {**WORKER_ENV, **fake.credentials_env(), "WAPIPE_DATABASE_URL": database.url}
                workers = [start_worker(list(pool), concurrency=2, env=env) for pool in POOLS]
                ingress = Ingress(test_servers["WAPIPE_REDIS_URL"], fake.auth_token)

                def deliver(phone: str) -> int:
                    time.sleep(SEND_INTERVAL_SECONDS)
                    return ingress.send(phone)

                with ThreadPoolExecutor(max_workers=4) as senders:
                    results = senders.map(deliver, numbers)
                    wait_for(
                        lambda: len(fake.replies_per_recipient()) >= MESSAGES // 6,
                        timeout=120,
                        what="replies flowing before the restart",
                    )
                    answered_before = len(fake.replies_per_recipient())
                    database.restart()
                    codes = list(results)
                # The ingress does not touch PostgreSQL: every webhook was acknowledged.
                assert set(codes) == {200}

                wait_for(
                    lambda: len(fake.replies_per_recipient()) >= MESSAGES,
                    timeout=180,
                    interval=0.5,
                    what=f"a reply to each of the {MESSAGES} messages",
                )
                wait_for(lambda: sent_count(database.url) >= MESSAGES, timeout=60, what="replies recorded")
                assert_exactly_one_reply_each(fake, database.url, numbers)

                # The restart hit work in flight, not only idle pooled connections (which the pool may
                # replace unnoticed): messages were still unanswered when it came, and a task failed on it
                # and retried.
                assert answered_before < MESSAGES
                lines = [line for worker in workers for line in worker.lines()]
                retried = [line for line in lines if _retried_after_losing_the_database(line)]
                assert retried, "no task failed on the restart and retried"
        finally:
            database.stop()


def _retried_after_losing_the_database(line: str) -> bool:
    """Whether a worker line is Celery's "Task ...[id] retry: ..." for a task that lost PostgreSQL."""
    return " retry: " in line and any(error in line for error in DATABASE_LOST)
