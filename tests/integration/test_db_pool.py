"""The pool pings a connection before handing it out only when it sat idle; a dead one is replaced."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from shared.db import pool
from shared.db.errors import TimedOut, Unavailable
from shared.settings import get_settings


def _backend_pid() -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
    assert row is not None
    return int(row["pid"])


def _terminate(db: psycopg.Connection, pid: int) -> None:
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.fixture
def one_connection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # One connection, so the one we terminate is the one the next checkout gets.
    monkeypatch.setenv("WAPIPE_DB_POOL_SIZE", "1")
    get_settings.cache_clear()
    pool.close_pool()
    yield
    pool.close_pool()
    monkeypatch.delenv("WAPIPE_DB_POOL_SIZE")
    get_settings.cache_clear()


def test_the_pool_is_as_big_as_the_setting(one_connection: None) -> None:
    assert pool.get_pool().max_size == 1


def test_an_idle_connection_killed_by_the_server_is_replaced_on_checkout(
    db: psycopg.Connection, one_connection: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "CHECK_AFTER_IDLE_SECONDS", 0.0)
    first = _backend_pid()
    _terminate(db, first)

    assert _backend_pid() != first  # no error: the checkout's ping found it dead and the pool replaced it


def test_a_connection_used_just_now_is_not_pinged_so_its_death_surfaces_once_as_unavailable(
    db: psycopg.Connection, one_connection: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "CHECK_AFTER_IDLE_SECONDS", 3600.0)
    first = _backend_pid()
    _terminate(db, first)

    with pytest.raises(Unavailable):
        _backend_pid()
    # The pool discarded the broken connection when it came back: the next checkout works.
    assert _backend_pid() != first


def test_a_statement_stuck_on_a_lock_is_cancelled_and_said_to_have_timed_out(
    db: psycopg.Connection, one_connection: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A statement waiting on a lock (or a stalled server) held its caller, and every API request sharing
    # its statement, for as long as the lock was held; cancelled, it is retried or answered 503.
    monkeypatch.setenv("WAPIPE_DB_STATEMENT_TIMEOUT", "0.3")
    get_settings.cache_clear()
    pool.close_pool()
    db.execute("INSERT INTO contacts (phone) VALUES ('+14155550123')")
    with psycopg.connect(db.info.dsn) as holder:
        holder.execute("SELECT * FROM contacts WHERE phone = '+14155550123' FOR UPDATE")
        with pytest.raises(TimedOut) as cancelled, pool.connection() as conn:
            conn.execute("UPDATE contacts SET profile_name = 'x' WHERE phone = '+14155550123'")
    # Said apart from a lost server, and still an Unavailable: tasks retry it as an outage.
    assert isinstance(cancelled.value, Unavailable)
    with pool.connection() as conn:  # the pool carries on
        assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "300ms"
    monkeypatch.delenv("WAPIPE_DB_STATEMENT_TIMEOUT")
    get_settings.cache_clear()


def test_the_pool_adds_tcp_keepalives_unless_the_url_sets_them() -> None:
    assert pool._connect_kwargs("postgresql://u@h/db")["keepalives_idle"] == 30
    assert "keepalives_idle" not in pool._connect_kwargs("postgresql://u@h/db?keepalives_idle=5")
