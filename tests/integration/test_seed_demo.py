"""``wapipe seed-demo`` creates the demo once: a second run leaves the very same rows."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from shared.cli import main
from shared.commands.seed_demo import DEMO_USER_ID

TABLES = ("users", "user_links", "workspaces", "workspace_members", "projects", "tasks")


def snapshot(db: psycopg.Connection) -> dict[str, list[dict]]:
    return {
        table: db.execute(sql.SQL("SELECT * FROM {} ORDER BY 1, 2").format(sql.Identifier(table))).fetchall()
        for table in TABLES
    }


def test_seed_demo_is_idempotent(db: psycopg.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seed-demo"]) == 0
    first = snapshot(db)
    out = capsys.readouterr().out
    assert str(DEMO_USER_ID) in out
    assert "wapipe chat --from +15551234567" in out
    assert main(["seed-demo"]) == 0
    assert snapshot(db) == first
    assert [row["phone"] for row in first["user_links"]] == ["+15551234567"]
    assert [row["name"] for row in first["workspaces"]] == ["Demo Workspace"]
    names = {row["name"] for row in first["projects"]}
    assert names == {"Website Redesign", "Mobile App", "Marketing Site"}
    assert len(first["tasks"]) >= 3


def test_seed_demo_refuses_a_phone_of_another_user(
    db: psycopg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "11111111-1111-4111-8111-111111111111"
    db.execute("INSERT INTO users (id) VALUES (%s)", (other,))
    db.execute("INSERT INTO user_links (user_id, phone) VALUES (%s, '+15550001111')", (other,))
    assert main(["seed-demo", "--phone", "+1 555 000 1111"]) == 1
    # On stderr, where a script running it looks for why it failed.
    assert "already linked to another user" in capsys.readouterr().err
    # Nothing half-written: the demo user was not created either.
    assert db.execute("SELECT count(*) AS n FROM workspaces").fetchone()["n"] == 0
