"""The small host model the WhatsApp commands act on: workspaces, their members, projects and tasks.

Every read a chat user can trigger goes through a ``*_for_user`` query that joins ``workspace_members``,
so a user only ever sees the workspaces they belong to, whatever ids their session holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from uuid import UUID

import psycopg

from shared.db.errors import wrap_errors

_UPSERT_WORKSPACE = """
INSERT INTO workspaces (id, name) VALUES (COALESCE(%(id)s, gen_random_uuid()), %(name)s)
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name
RETURNING id, name, created_at
"""
_ADD_MEMBER = """
INSERT INTO workspace_members (workspace_id, user_id, role) VALUES (%(workspace_id)s, %(user_id)s, %(role)s)
ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = EXCLUDED.role
"""
# A project's name is unique in its workspace, so creating it again returns the existing row.
_UPSERT_PROJECT = """
INSERT INTO projects (workspace_id, name) VALUES (%(workspace_id)s, %(name)s)
ON CONFLICT (workspace_id, name) DO UPDATE SET name = EXCLUDED.name
RETURNING id, workspace_id, name, archived, created_at
"""
_UPSERT_TASK = """
INSERT INTO tasks (id, project_id, title, status, priority, estimated_hours, due_date)
VALUES (COALESCE(%(id)s, gen_random_uuid()), %(project_id)s, %(title)s, %(status)s, %(priority)s,
        %(estimated_hours)s, %(due_date)s)
ON CONFLICT (id) DO NOTHING
"""
_WORKSPACES_FOR_USER = """
SELECT w.id, w.name, w.created_at
FROM workspaces w JOIN workspace_members m ON m.workspace_id = w.id
WHERE m.user_id = %(user_id)s
ORDER BY w.name, w.id
"""
# The projects a chat user may use: live ones in a workspace they belong to. /project offers these, and a
# proposal is only inserted into one of them (shared/db/proposals.py), so a selection kept in the Redis
# session is worth nothing once its user has left the workspace or the project is archived.
USABLE_PROJECTS = """
FROM projects p JOIN workspace_members m ON m.workspace_id = p.workspace_id
WHERE m.user_id = %(user_id)s AND NOT p.archived
"""
_PROJECT_COLUMNS = "p.id, p.workspace_id, p.name, p.archived, p.created_at"
_PROJECTS_FOR_USER = f"""
SELECT {_PROJECT_COLUMNS} {USABLE_PROJECTS}
  AND (%(workspace_id)s::uuid IS NULL OR p.workspace_id = %(workspace_id)s::uuid)
ORDER BY p.name, p.id
"""
_USABLE_PROJECT = f"SELECT {_PROJECT_COLUMNS} {USABLE_PROJECTS} AND p.id = %(project_id)s"
_TASKS_FOR_PROJECT = """
SELECT id, project_id, title, status, priority, estimated_hours, due_date, created_at
FROM tasks WHERE project_id = %(project_id)s
ORDER BY (status = 'done'), due_date NULLS LAST, created_at, id
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Workspace:
    id: UUID
    name: str
    created_at: datetime


@dataclass(frozen=True)
class Project:
    id: UUID
    workspace_id: UUID
    name: str
    archived: bool
    created_at: datetime


@dataclass(frozen=True)
class Task:
    id: UUID
    project_id: UUID
    title: str
    status: str
    priority: str
    estimated_hours: Decimal | None
    due_date: date | None
    created_at: datetime


def upsert_workspace(conn: psycopg.Connection, name: str, workspace_id: UUID | None = None) -> Workspace:
    """Create a workspace (a fixed id makes it idempotent: the same id updates the name)."""
    with wrap_errors():
        row = conn.execute(_UPSERT_WORKSPACE, {"id": workspace_id, "name": name}).fetchone()
    assert row is not None
    return Workspace(**row)


def add_member(conn: psycopg.Connection, workspace_id: UUID, user_id: UUID, role: str = "member") -> None:
    with wrap_errors():
        conn.execute(_ADD_MEMBER, {"workspace_id": workspace_id, "user_id": user_id, "role": role})


def upsert_project(conn: psycopg.Connection, workspace_id: UUID, name: str) -> Project:
    with wrap_errors():
        row = conn.execute(_UPSERT_PROJECT, {"workspace_id": workspace_id, "name": name}).fetchone()
    assert row is not None
    return Project(**row)


def upsert_task(
    conn: psycopg.Connection,
    project_id: UUID,
    title: str,
    *,
    task_id: UUID | None = None,
    status: str = "open",
    priority: str = "medium",
    estimated_hours: Decimal | float | None = None,
    due_date: date | None = None,
) -> None:
    """Create a task; with a fixed ``task_id`` a second call changes nothing."""
    with wrap_errors():
        conn.execute(
            _UPSERT_TASK,
            {
                "id": task_id,
                "project_id": project_id,
                "title": title,
                "status": status,
                "priority": priority,
                "estimated_hours": estimated_hours,
                "due_date": due_date,
            },
        )


def workspaces_for_user(conn: psycopg.Connection, user_id: UUID) -> list[Workspace]:
    with wrap_errors():
        rows = conn.execute(_WORKSPACES_FOR_USER, {"user_id": user_id}).fetchall()
    return [Workspace(**row) for row in rows]


def projects_for_user(
    conn: psycopg.Connection, user_id: UUID, workspace_id: UUID | None = None
) -> list[Project]:
    """Live projects in the user's workspaces (only ``workspace_id``'s when given)."""
    with wrap_errors():
        rows = conn.execute(_PROJECTS_FOR_USER, {"user_id": user_id, "workspace_id": workspace_id}).fetchall()
    return [Project(**row) for row in rows]


def usable_project(conn: psycopg.Connection, user_id: UUID, project_id: UUID | str) -> Project | None:
    """The project if ``user_id`` may use it now (see ``USABLE_PROJECTS``), else None."""
    try:
        project_id = UUID(str(project_id))
    except ValueError:
        return None
    with wrap_errors():
        row = conn.execute(_USABLE_PROJECT, {"user_id": user_id, "project_id": project_id}).fetchone()
    return Project(**row) if row else None


def tasks_for_project(conn: psycopg.Connection, project_id: UUID, limit: int = 20) -> list[Task]:
    """Open tasks first, soonest due first; the caller has already checked the user may see the project."""
    with wrap_errors():
        rows = conn.execute(_TASKS_FOR_PROJECT, {"project_id": project_id, "limit": limit}).fetchall()
    return [Task(**row) for row in rows]
