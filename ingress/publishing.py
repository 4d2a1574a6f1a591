"""Enqueue jobs from a request, or answer 503 for the provider to retry.

The ingress acknowledges an event only once it is on the broker (ARCHITECTURE.md, guarantees): when
Redis cannot be reached the request is aborted with a 503 and a ``Retry-After``, never a 2xx. Whether it
comes again is the provider's: Meta retries for days, Kapso for about a minute, Twilio only as the webhook
URL's fragment asks and within 15 s (shared/providers/twilio/signature.py, ``RETRY_FRAGMENT``).

Group commit (:mod:`shared.group_commit`): with gunicorn's threaded workers several requests of one
process are in flight at once. Rather than one Redis round trip each, the first request to arrive
publishes everything pending in one ``Publisher.publish`` call (one atomic script run; each job still has
its own dedupe ``SET NX``), and the requests that arrived meanwhile wait for that call's answer. Each
request still returns only after its own job is on the broker, so the guarantee is unchanged; under load
it costs a fraction of a round trip per request. With one thread per worker it degenerates to a plain
publish.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

import redis
from flask import abort, current_app

from ingress.errors import api_error
from ingress.metrics import ENQUEUE_FAILURES
from ingress.per_app import per_app
from ingress.state import PUBLISHER_KEY
from shared.group_commit import GroupCommit, WaitTimeout
from shared.logging import get_logger
from shared.queues import Job, Publisher, queue_for

log = get_logger(__name__)

RETRY_AFTER_SECONDS = 5
GROUP_KEY = "wapipe.group_publisher"
# Longer than the publisher's socket timeouts (connect + read): a waiter only gives up on a stuck leader.
WAIT_SECONDS = 10.0
# Why a job is not on the broker (the 503's message).
NO_BROKER = "WAPIPE_REDIS_URL is not set: nothing can be enqueued"
BROKER_DOWN = "the queue is unreachable; retry later"


class GroupPublisher:
    """Publishes the jobs of concurrent requests in shared round trips; thread-safe, one per process."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._group: GroupCommit[list[Job], list[bool]] = GroupCommit(
            self._publish_together,
            wait_timeout=WAIT_SECONDS,
            run_one=publisher.publish,
            one_at_fault=_one_request_at_fault,
        )

    @property
    def waiting(self) -> int:
        """How many requests wait for the next shared publish."""
        return self._group.waiting

    def publish(self, jobs: list[Job]) -> list[bool]:
        """Like :meth:`Publisher.publish`: per job, False when its dedupe key was already set.

        Raises ``redis.RedisError`` when the batch holding these jobs could not be published, or when
        no batch took them in time (a stuck leader): then nothing was published for this request.
        """
        try:
            return self._group.submit(jobs)
        except WaitTimeout as exc:
            raise redis.TimeoutError("timed out waiting for a shared publish") from exc

    def _publish_together(self, requests: list[list[Job]]) -> list[list[bool]]:
        """One publish for every request's jobs; per request, its flags."""
        flags = self._publisher.publish([job for jobs in requests for job in jobs])
        answers: list[list[bool]] = []
        start = 0
        for jobs in requests:
            answers.append(flags[start : start + len(jobs)])
            start += len(jobs)
        return answers


def _one_request_at_fault(exc: Exception) -> bool:
    """A job that cannot even be serialised must fail its own request only: nothing was written (messages
    are built before the script runs), so each request is published on its own. Not when the broker is
    away (a Redis error): each request would have failed alone too."""
    return not isinstance(exc, redis.RedisError)


def publish(jobs: Iterable[Job]) -> list[bool]:
    """Publish with the app's publisher; per job, False when it was a duplicate.

    Aborts the request with a 503 JSON error when the broker is unreachable or not configured.
    """
    jobs = list(jobs)
    group = _group_publisher()
    if group is None:
        unavailable(jobs, NO_BROKER)
    try:
        return group.publish(jobs)
    except redis.RedisError as exc:
        log.error("ingress.enqueue_failed", error_type=type(exc).__name__, jobs=len(jobs))
        unavailable(jobs, BROKER_DOWN)


def _group_publisher() -> GroupPublisher | None:
    """The process's :class:`GroupPublisher` (as :func:`ingress.per_app.per_app` makes it); None when the
    app has no publisher (``WAPIPE_REDIS_URL`` is not set)."""
    publisher: Publisher | None = current_app.extensions.get(PUBLISHER_KEY)
    if publisher is None:
        return None
    return per_app(GROUP_KEY, lambda: GroupPublisher(publisher))


def unavailable(jobs: list[Job], message: str) -> NoReturn:
    """Abort the request with the 503 a provider or caller retries on; count it against the jobs' queues."""
    for queue in {queue_for(job.task) for job in jobs} or {"none"}:
        ENQUEUE_FAILURES.labels(queue).inc()
    abort(api_error(503, "queue_unavailable", message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}))
