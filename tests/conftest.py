"""Test session wiring: a fresh PostgreSQL database built from the migrations and a Redis database index
claimed for this session alone, both real servers (see tests/run for how they are found or started).

Each test that asks for ``db`` or ``redis_client`` starts from empty tables and an empty Redis database.
Worker processes started by tests inherit the same ``WAPIPE_*`` URLs through the environment.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

ADMIN_DATABASE_URL = os.environ.get(
    "WAPIPE_TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_SERVER_URL = os.environ.get("WAPIPE_TEST_REDIS_SERVER", "redis://127.0.0.1:6379")


def _database_url(name: str) -> str:
    return psycopg.conninfo.make_conninfo(ADMIN_DATABASE_URL, dbname=name)


def _claim_redis_db() -> int:
    """Claim a Redis database index no other concurrent test session is using."""
    control = redis.Redis.from_url(f"{REDIS_SERVER_URL}/0")
    for index in range(1, 16):
        if control.set(f"wapipe:test-session-db:{index}", os.getpid(), nx=True, ex=6 * 3600):
            return index
    raise RuntimeError("every Redis database 1-15 is claimed by another wapipe test session")


class _Servers:
    """This session's database and Redis index, made before collection so that modules importing the
    Celery app (which reads ``WAPIPE_REDIS_URL`` at import) see them, and removed after the run."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self._saved: dict[str, str | None] = {}
        self._name = ""
        self._redis_index = 0

    def create(self) -> None:
        self._name = f"wapipe_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self._name}"')
        self._redis_index = _claim_redis_db()
        self.urls = {
            "WAPIPE_DATABASE_URL": _database_url(self._name),
            "WAPIPE_REDIS_URL": f"{REDIS_SERVER_URL}/{self._redis_index}",
        }
        self._saved = {key: os.environ.get(key) for key in self.urls}
        os.environ.update(self.urls)
        from shared.db.migrate import migrate
        from shared.settings import get_settings

        get_settings.cache_clear()
        migrate(self.urls["WAPIPE_DATABASE_URL"])
        redis.Redis.from_url(self.urls["WAPIPE_REDIS_URL"]).flushdb()

    def remove(self) -> None:
        if not self.urls:
            return
        from shared.db.pool import close_pool

        close_pool()
        redis.Redis.from_url(self.urls["WAPIPE_REDIS_URL"]).flushdb()
        redis.Redis.from_url(f"{REDIS_SERVER_URL}/0").delete(f"wapipe:test-session-db:{self._redis_index}")
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)')
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.urls = {}


_servers = _Servers()


def pytest_configure(config: pytest.Config) -> None:
    _servers.create()


def pytest_unconfigure(config: pytest.Config) -> None:
    _servers.remove()


@pytest.fixture(scope="session", autouse=True)
def test_servers() -> dict[str, str]:
    return dict(_servers.urls)


def _truncate_all(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
            )
        ]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def db(test_servers: dict[str, str]) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the session database, whose tables are empty when the test starts."""
    url = test_servers["WAPIPE_DATABASE_URL"]
    _truncate_all(url)
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn


@pytest.fixture
def redis_client(test_servers: dict[str, str]) -> Iterator[redis.Redis]:
    """The session's Redis database, flushed when the test starts."""
    client = redis.Redis.from_url(test_servers["WAPIPE_REDIS_URL"])
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def clean(db: psycopg.Connection, redis_client: redis.Redis) -> None:
    """Empty tables and an empty Redis, for tests that go through both."""
