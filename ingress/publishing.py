"""Enqueue jobs from a request, or answer 503 so the provider retries.

The ingress acknowledges an event only once it is on the broker (ARCHITECTURE.md, guarantees): when
Redis cannot be reached the request is aborted with a 503 and a ``Retry-After``, never a 2xx.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

import redis
from flask import abort

from ingress.errors import api_error
from ingress.metrics import ENQUEUE_FAILURES
from ingress.state import current_publisher
from shared.logging import get_logger
from shared.queues import Job, queue_for

log = get_logger(__name__)

RETRY_AFTER_SECONDS = 5


def publish(jobs: Iterable[Job]) -> list[bool]:
    """Publish with the app's :class:`shared.queues.Publisher`; per job, False when it was a duplicate.

    Aborts the request with a 503 JSON error when the broker is unreachable or not configured.
    """
    jobs = list(jobs)
    publisher = current_publisher()
    if publisher is None:
        _unavailable(jobs, "WAPIPE_REDIS_URL is not set: nothing can be enqueued")
    try:
        return publisher.publish(jobs)
    except redis.RedisError as exc:
        log.error("ingress.enqueue_failed", error_type=type(exc).__name__, jobs=len(jobs))
        _unavailable(jobs, "the queue is unreachable; retry later")


def _unavailable(jobs: list[Job], message: str) -> NoReturn:
    for queue in {queue_for(job.task) for job in jobs} or {"none"}:
        ENQUEUE_FAILURES.labels(queue).inc()
    abort(api_error(503, "queue_unavailable", message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}))
