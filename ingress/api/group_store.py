"""Group commit for the notify API: concurrent requests of one process share a statement and a publish.

gunicorn's threaded workers have several ``POST /api/v1/messages`` in flight at once. Rather than one
PostgreSQL round trip and one commit each, the first request to arrive stores everything pending in one
:func:`shared.db.outbound_api.accept_many` call, then publishes the ``notify.send`` jobs of the rows that
need one in one ``Publisher.publish`` call, where they go as one ``notify.send_many``
(:func:`shared.queues.notify_jobs`): the notify worker pulls one task for the group instead of one per
message, which costs more CPU than sending it. The requests that arrived meanwhile wait for that answer.
A request still returns only after its own row is committed and its job is on the broker (or it is told
the job could not be published), so nothing changes for the caller; with one request at a time it is a
plain insert and publish. The mechanism is :class:`shared.group_commit.GroupCommit`.

Publishing here, not in each request after the store, keeps the group whole: the requests a statement
answers wake together, and each publishing on its own split every group into a lone job and the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from psycopg import errors as pg_errors

from ingress.publishing import BROKER_DOWN, NO_BROKER
from shared.db import outbound_api
from shared.db.errors import DatabaseError, Unavailable
from shared.db.outbound_api import NewOutbound, Stored
from shared.db.pool import connection
from shared.group_commit import GroupCommit
from shared.logging import get_logger
from shared.queues import Job, Publisher, notify_jobs

log = get_logger(__name__)


@dataclass(frozen=True)
class Filed:
    """A message stored (or found under its key), and whether its ``notify.send`` job went out."""

    stored: Stored
    # Why the job this row needed could not be published (the caller answers 503); None when it was
    # published, or when the row needed none (a key used for another body, a message no longer queued).
    unqueued: str | None = None


class GroupStore:
    """Stores and enqueues the messages of concurrent requests in shared round trips; thread-safe, one
    per process. ``publisher`` None: no broker is configured, and every job is refused."""

    def __init__(self, publisher: Publisher | None) -> None:
        self._publisher = publisher
        # No waiter timeout: the leader's round trips are bounded like any request's (the pool's checkout
        # timeout, the server's answer, the publisher's socket timeouts); it then answers us or hands us
        # the lead.
        self._group: GroupCommit[NewOutbound, Filed] = GroupCommit(
            self._file_together, run_one=self._file_alone, one_at_fault=_one_message_at_fault
        )

    @property
    def waiting(self) -> int:
        """How many requests wait for the next shared statement."""
        return self._group.waiting

    def accept(self, message: NewOutbound) -> Filed:
        """Like :func:`shared.db.outbound_api.accept`, committed when it returns (or raises), and then
        its job published when the row needs one: new, or a replay still queued (its first job may be the
        one that was lost). A second job for one message is harmless (notify's claim sends it once)."""
        return self._group.submit(message)

    def _file_together(self, messages: list[NewOutbound]) -> list[Filed | DatabaseError]:
        with connection() as conn:
            outcomes = outbound_api.accept_many(conn, messages)
        # Those the database stored get their jobs, whatever became of the others (their own error).
        rows = [outcome for outcome in outcomes if isinstance(outcome, Stored)]
        stored = [
            message
            for message, outcome in zip(messages, outcomes, strict=True)
            if isinstance(outcome, Stored)
        ]
        filed = iter(self._enqueue(stored, rows))
        return [next(filed) if isinstance(outcome, Stored) else outcome for outcome in outcomes]

    def _file_alone(self, message: NewOutbound) -> Filed:
        with connection() as conn:
            stored = outbound_api.accept(conn, message)
        [filed] = self._enqueue([message], [stored])
        return filed

    def _enqueue(self, messages: list[NewOutbound], stored: list[Stored]) -> list[Filed]:
        needing = [
            i
            for i, (row, message) in enumerate(zip(stored, messages, strict=True))
            if _needs_job(row, message)
        ]
        jobs = notify_jobs(stored[i].id for i in needing)
        unqueued = self._publish(jobs) if jobs else None
        return [Filed(row, unqueued if i in needing else None) for i, row in enumerate(stored)]

    def _publish(self, jobs: list[Job]) -> str | None:
        """None once the jobs are on the broker; otherwise why they are not."""
        if self._publisher is None:
            return NO_BROKER
        try:
            self._publisher.publish(jobs)
        except redis.RedisError as exc:
            log.error("ingress.enqueue_failed", error_type=type(exc).__name__, jobs=len(jobs))
            return BROKER_DOWN
        return None


def _needs_job(stored: Stored, message: NewOutbound) -> bool:
    """A new row needs its job; so does a replay of the same request still queued. A key used for another
    body is a 409 with no job, and a failed one the caller may queue again (publishing then itself)."""
    return stored.new or (stored.status == "queued" and stored.request_hash == message.request_hash)


def _one_message_at_fault(exc: Exception) -> bool:
    """PostgreSQL refused the shared statement for something in one message (text it refuses), so each
    is stored on its own; not when PostgreSQL is away: every message would have failed alone too.

    The failed statement stored nothing; a message an earlier run of the same call stored (after a lost
    race) is found under its key and answered as a replay, still queued.
    """
    if isinstance(exc, Unavailable | pg_errors.OperationalError):
        return False
    return isinstance(exc, DatabaseError | pg_errors.Error)
