"""Group commit for the notify API's inserts: concurrent requests of one process share a statement.

gunicorn's threaded workers have several ``POST /api/v1/messages`` in flight at once. Rather than one
PostgreSQL round trip and one commit each, the first request to arrive stores everything pending in one
:func:`shared.db.outbound_api.accept_many` call, and the requests that arrived meanwhile wait for its
answer; then each publishes its own job (which ``ingress/publishing.py`` groups the same way). A request
still returns only after its own row is committed, so nothing changes for the caller; with one request
at a time it is a plain insert. The same shape as ``ingress.publishing.GroupPublisher``.
"""

from __future__ import annotations

import threading

from psycopg import errors as pg_errors

from shared.db import outbound_api
from shared.db.errors import DatabaseError, Unavailable
from shared.db.outbound_api import NewOutbound, Stored
from shared.db.pool import connection


class _Pending:
    __slots__ = ("done", "error", "lead", "message", "result")

    def __init__(self, message: NewOutbound) -> None:
        self.message = message
        self.done = threading.Event()
        self.lead = False
        self.result: Stored | None = None
        self.error: BaseException | None = None


class GroupStore:
    """Stores the messages of concurrent requests in shared statements; thread-safe, one per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._busy = False

    def accept(self, message: NewOutbound) -> Stored:
        """Like :func:`shared.db.outbound_api.accept`: committed when it returns, or raises."""
        mine = _Pending(message)
        with self._lock:
            self._queue.append(mine)
            lead = not self._busy
            self._busy = True
        if not lead:
            # The leader's statement is bounded like any request's (the pool's checkout timeout, the
            # server's answer); it then answers us or hands us the lead.
            mine.done.wait()
        if lead or mine.lead:
            self._flush()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result

    def _flush(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._store(batch)
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

    def _store(self, batch: list[_Pending]) -> None:
        try:
            with connection() as conn:
                results = outbound_api.accept_many(conn, [pending.message for pending in batch])
        except (Unavailable, pg_errors.OperationalError) as exc:
            # PostgreSQL is away: every request of the batch would have failed alone too.
            for pending in batch:
                pending.error = exc
        except (DatabaseError, pg_errors.Error) as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            # Something in one message (text PostgreSQL refuses) must fail its own request only, so store
            # each on its own. The failed statement stored nothing; a message an earlier run of the same
            # call stored (after a lost race) is found under its key and answered as a replay, still queued.
            self._one_by_one(batch)
        except BaseException as exc:
            for pending in batch:
                pending.error = exc
        else:
            for pending, result in zip(batch, results, strict=True):
                pending.result = result

    def _one_by_one(self, batch: list[_Pending]) -> None:
        for pending in batch:
            try:
                with connection() as conn:
                    pending.result = outbound_api.accept(conn, pending.message)
            except Exception as exc:
                pending.error = exc
