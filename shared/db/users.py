"""Users of the host application, recorded the first time wapipe sees their UUID.

wapipe does not own accounts: the host application calls the API with its own user ids, and a row here
only anchors the links, codes and memberships that refer to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg

from shared.db.errors import wrap_errors

_ENSURE = """
INSERT INTO users (id, display_name) VALUES (%(id)s, %(display_name)s)
ON CONFLICT (id) DO UPDATE SET display_name = COALESCE(EXCLUDED.display_name, users.display_name)
RETURNING id, display_name, created_at
"""

_GET = "SELECT id, display_name, created_at FROM users WHERE id = %(id)s"


@dataclass(frozen=True)
class User:
    id: UUID
    display_name: str | None
    created_at: datetime


def ensure_user(conn: psycopg.Connection, user_id: UUID, display_name: str | None = None) -> User:
    """Record the user on first sight (a later display name fills in or replaces the old one)."""
    with wrap_errors():
        row = conn.execute(_ENSURE, {"id": user_id, "display_name": display_name}).fetchone()
    assert row is not None
    return User(**row)


def get_user(conn: psycopg.Connection, user_id: UUID) -> User | None:
    with wrap_errors():
        row = conn.execute(_GET, {"id": user_id}).fetchone()
    return User(**row) if row else None
