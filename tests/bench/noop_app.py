"""The pipeline benchmark's reference: a bare 3-task Celery chain of no-op tasks, on the same broker.

    celery -A tests.bench.noop_app worker -Q inbound,commands   (and -Q notify)

Same Celery configuration as wapipe's workers (``shared.queues.celery_config``: JSON, acks_late, no
result backend) and the same queues as the three hops of an inbound command (``inbound`` ->
``commands`` -> ``notify``), each task doing nothing but letting Celery pass the chain on; the last one
counts the finished chain in Redis so the bench can see when all are done.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

from shared.queues import celery_config

BROKER = os.environ.get("WAPIPE_REDIS_URL", "redis://127.0.0.1:6379/0")
DONE_KEY = "bench:chains-done"

app = Celery("wapipe-bench-noop")
app.config_from_object(celery_config(BROKER))
_counter: redis.Redis | None = None


@app.task(name="inbound.noop", acks_late=True, ignore_result=True)
def first() -> None:
    return None


@app.task(name="commands.noop", acks_late=True, ignore_result=True)
def second(*_: Any) -> None:
    return None


@app.task(name="notify.noop", acks_late=True, ignore_result=True)
def third(*_: Any) -> None:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(BROKER)
    _counter.incr(DONE_KEY)


def send_chains(count: int) -> None:
    """Enqueue ``count`` chains first -> second -> third, as a client of Celery would."""
    from celery import chain

    for _ in range(count):
        chain(first.si(), second.si(), third.si()).apply_async()
