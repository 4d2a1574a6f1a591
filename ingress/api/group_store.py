"""Group commit for the notify API's inserts: concurrent requests of one process share a statement.

gunicorn's threaded workers have several ``POST /api/v1/messages`` in flight at once. Rather than one
PostgreSQL round trip and one commit each, the first request to arrive stores everything pending in one
:func:`shared.db.outbound_api.accept_many` call, and the requests that arrived meanwhile wait for its
answer; then each publishes its own job (which ``ingress/publishing.py`` groups the same way). A request
still returns only after its own row is committed, so nothing changes for the caller; with one request
at a time it is a plain insert. The mechanism is :class:`shared.group_commit.GroupCommit`.
"""

from __future__ import annotations

from psycopg import errors as pg_errors

from shared.db import outbound_api
from shared.db.errors import DatabaseError, Unavailable
from shared.db.outbound_api import NewOutbound, Stored
from shared.db.pool import connection
from shared.group_commit import GroupCommit


class GroupStore:
    """Stores the messages of concurrent requests in shared statements; thread-safe, one per process."""

    def __init__(self) -> None:
        # No waiter timeout: the leader's statement is bounded like any request's (the pool's checkout
        # timeout, the server's answer); it then answers us or hands us the lead.
        self._group: GroupCommit[NewOutbound, Stored] = GroupCommit(
            _store_together, run_one=_store_alone, one_at_fault=_one_message_at_fault
        )

    @property
    def waiting(self) -> int:
        """How many requests wait for the next shared statement."""
        return self._group.waiting

    def accept(self, message: NewOutbound) -> Stored:
        """Like :func:`shared.db.outbound_api.accept`: committed when it returns, or raises."""
        return self._group.submit(message)


def _store_together(messages: list[NewOutbound]) -> list[Stored]:
    with connection() as conn:
        return outbound_api.accept_many(conn, messages)


def _store_alone(message: NewOutbound) -> Stored:
    with connection() as conn:
        return outbound_api.accept(conn, message)


def _one_message_at_fault(exc: Exception) -> bool:
    """PostgreSQL refused the shared statement for something in one message (text it refuses), so each
    is stored on its own; not when PostgreSQL is away: every message would have failed alone too.

    The failed statement stored nothing; a message an earlier run of the same call stored (after a lost
    race) is found under its key and answered as a replay, still queued.
    """
    if isinstance(exc, Unavailable | pg_errors.OperationalError):
        return False
    return isinstance(exc, DatabaseError | pg_errors.Error)
