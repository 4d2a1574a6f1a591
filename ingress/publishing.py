"""Enqueue jobs from a request, or answer 503 so the provider retries.

The ingress acknowledges an event only once it is on the broker (ARCHITECTURE.md, guarantees): when
Redis cannot be reached the request is aborted with a 503 and a ``Retry-After``, never a 2xx.

Group commit: with gunicorn's threaded workers several requests of one process are in flight at once.
Rather than one Redis round trip each, the first request to arrive publishes everything pending in one
``Publisher.publish`` call (one atomic script run; each job still has its own dedupe ``SET NX``), and
the requests that arrived meanwhile wait for that call's answer. Each request still returns only after
its own job is on the broker, so the guarantee is unchanged; under load it costs a fraction of a round
trip per request. With one thread per worker it degenerates to a plain publish.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import NoReturn

import redis
from flask import abort, current_app

from ingress.errors import api_error
from ingress.metrics import ENQUEUE_FAILURES
from ingress.state import PUBLISHER_KEY
from shared.logging import get_logger
from shared.queues import Job, Publisher, queue_for

log = get_logger(__name__)

RETRY_AFTER_SECONDS = 5
GROUP_KEY = "wapipe.group_publisher"
# Longer than the publisher's socket timeouts (connect + read): a waiter only gives up on a stuck leader.
WAIT_SECONDS = 10.0


class _Pending:
    __slots__ = ("done", "error", "jobs", "lead", "result")

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.done = threading.Event()
        self.lead = False
        self.result: list[bool] = []
        self.error: BaseException | None = None


class GroupPublisher:
    """Publishes the jobs of concurrent requests in shared round trips; thread-safe, one per process."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._busy = False

    def publish(self, jobs: list[Job]) -> list[bool]:
        """Like :meth:`Publisher.publish`: per job, False when its dedupe key was already set.

        Raises ``redis.RedisError`` when the batch holding these jobs could not be published.
        """
        mine = _Pending(jobs)
        with self._lock:
            self._queue.append(mine)
            lead = not self._busy
            self._busy = True
        if not lead:
            if not mine.done.wait(WAIT_SECONDS):
                with self._lock:
                    if not mine.lead and mine in self._queue:
                        self._queue.remove(mine)
                        raise redis.TimeoutError("timed out waiting for a shared publish")
                # Taken into a batch in flight (bounded by the socket timeouts) or just made leader.
                mine.done.wait()
            if not mine.lead:
                if mine.error is not None:
                    raise mine.error
                return mine.result
        self._flush()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _flush(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            try:
                flags = self._publisher.publish([job for pending in batch for job in pending.jobs])
            except redis.RedisError:
                raise
            except Exception:
                if len(batch) == 1:
                    raise
                # A job that cannot even be serialised must fail its own request only: nothing was
                # written (messages are built before the script runs), so publish each on its own.
                self._one_by_one(batch)
            else:
                start = 0
                for pending in batch:
                    pending.result = flags[start : start + len(pending.jobs)]
                    start += len(pending.jobs)
        except BaseException as exc:
            for pending in batch:
                pending.error = exc
        finally:
            with self._lock:
                if self._queue:
                    # Hand over to the oldest request that arrived during this round trip.
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._busy = False
            for pending in batch:
                pending.lead = False
                pending.done.set()

    def _one_by_one(self, batch: list[_Pending]) -> None:
        for pending in batch:
            try:
                pending.result = self._publisher.publish(pending.jobs)
            except Exception as exc:
                pending.error = exc


def publish(jobs: Iterable[Job]) -> list[bool]:
    """Publish with the app's publisher; per job, False when it was a duplicate.

    Aborts the request with a 503 JSON error when the broker is unreachable or not configured.
    """
    jobs = list(jobs)
    group = _group_publisher()
    if group is None:
        _unavailable(jobs, "WAPIPE_REDIS_URL is not set: nothing can be enqueued")
    try:
        return group.publish(jobs)
    except redis.RedisError as exc:
        log.error("ingress.enqueue_failed", error_type=type(exc).__name__, jobs=len(jobs))
        _unavailable(jobs, "the queue is unreachable; retry later")


def _group_publisher() -> GroupPublisher | None:
    extensions = current_app.extensions
    group = extensions.get(GROUP_KEY)
    if group is None and extensions.get(PUBLISHER_KEY) is not None:
        group = extensions.setdefault(GROUP_KEY, GroupPublisher(extensions[PUBLISHER_KEY]))
    return group


def _unavailable(jobs: list[Job], message: str) -> NoReturn:
    for queue in {queue_for(job.task) for job in jobs} or {"none"}:
        ENQUEUE_FAILURES.labels(queue).inc()
    abort(api_error(503, "queue_unavailable", message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}))
