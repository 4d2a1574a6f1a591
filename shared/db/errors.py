"""Our own database errors, so callers never depend on the driver's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg import errors as pg_errors


class DatabaseError(Exception):
    """Base for the errors repositories raise."""


class Duplicate(DatabaseError):
    """A row with the same unique key already exists."""

    def __init__(self, constraint: str | None = None) -> None:
        super().__init__(f"duplicate on {constraint or 'a unique key'}")
        self.constraint = constraint


class NotFound(DatabaseError):
    """The row asked for does not exist."""


class Unavailable(DatabaseError):
    """PostgreSQL could not be reached; the caller may retry."""


class TimedOut(Unavailable):
    """A statement ran past its ``statement_timeout`` (a lock held elsewhere, a long scan) and was cancelled.

    The server is there but did not answer in time; retried as an outage is, but said apart, so nobody
    hunts for a network fault, and nothing of the cancelled transaction was kept.
    """


@contextlib.contextmanager
def wrap_errors() -> Iterator[None]:
    """Turn driver errors into ours inside a repository function."""
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        raise Duplicate(exc.diag.constraint_name) from exc
    except psycopg.OperationalError as exc:
        raise unavailable(exc) from exc


def unavailable(exc: psycopg.OperationalError) -> Unavailable:
    """Ours for a driver's OperationalError: psycopg counts a cancelled statement as one too."""
    if isinstance(exc, pg_errors.QueryCanceled):
        return TimedOut(str(exc))
    return Unavailable(str(exc))
