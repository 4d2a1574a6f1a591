"""A project chosen in a chat session is only used while the sender may still use it.

The choice lives in a Redis session keyed by phone and outlives the checks /project made: a member removed
from the workspace, an archived project or a number relinked to another account must not let free text
become a proposal in that project (a cross-tenant write), nor /status and /list show it.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
import redis

from shared.commands.seed_demo import DEMO_USER_ID, DEMO_WORKSPACE_ID, seed
from shared.db import links
from shared.db import workspaces as repo
from shared.db.pool import transaction
from shared.sessions import Sessions
from shared.settings import load_settings
from tests.integration.test_ai_persist_stages import _queued
from tests.integration.test_bot_workers import PHONE, issue, replies, store_inbound
from workers import ai as ai_worker
from workers import commands as commands_worker
from workers import persist as persist_worker
from workers import verify as verify_worker

TEXT = "Need to add login page and user dashboard by Friday. Should take about 8 hours."
OFFLINE = load_settings(ai="offline", app_url="https://app.example.com")


@pytest.fixture
def sessions(clean: None, redis_client: redis.Redis) -> Sessions:
    seed(PHONE)
    return Sessions(redis_client, ttl_seconds=1800)


def command(db: psycopg.Connection, sessions: Sessions, text: str) -> str:
    """Send a slash command from PHONE through the commands stage; return its reply."""
    message_id = store_inbound(db, text)
    commands_worker.handle(message_id, sessions)
    return db.execute(
        "SELECT body FROM messages WHERE idempotency_key = %s", (f"reply:{message_id}",)
    ).fetchone()["body"]


def choose_mobile_app(db: psycopg.Connection, sessions: Sessions) -> uuid.UUID:
    assert command(db, sessions, "/project mobile").startswith("✅ Project: Mobile App")
    return db.execute("SELECT id FROM projects WHERE name = 'Mobile App'").fetchone()["id"]


def save(job: dict[str, Any], sessions: Sessions) -> uuid.UUID | None:
    """Run one queued persist.save_proposal job."""
    return persist_worker.save_proposal(
        job["message_id"],
        job["proposal"],
        job["parser"],
        job["project_id"],
        sessions=sessions,
        settings=OFFLINE,
    )


def send_text(db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis) -> tuple[int, str]:
    """Free text from PHONE through ai.parse_proposal and, when it queued one, persist.save_proposal."""
    message_id = store_inbound(db, TEXT)
    outcome = ai_worker.parse_message(message_id, sessions, OFFLINE)
    for job in _queued(redis_client, "persist"):
        save(job, sessions)
    redis_client.delete("persist")
    return message_id, outcome


def reply_to(db: psycopg.Connection, message_id: int) -> str:
    return db.execute(
        "SELECT body FROM messages WHERE idempotency_key = %s", (f"reply:{message_id}",)
    ).fetchone()["body"]


def proposal_projects(db: psycopg.Connection) -> list[Any]:
    return [row["project_id"] for row in db.execute("SELECT project_id FROM proposals ORDER BY created_at")]


def relink_to_a_new_user(db: psycopg.Connection, *, member_of_demo: bool) -> uuid.UUID:
    """The demo user's link to PHONE is removed and another user links the number with VERIFY."""
    with transaction() as conn:
        links.unlink(conn, DEMO_USER_ID)
    newcomer = uuid.uuid4()
    code = issue(newcomer)
    verify_worker.check_code(store_inbound(db, f"VERIFY {code}"))
    assert db.execute("SELECT user_id FROM user_links WHERE phone = %s", (PHONE,)).fetchone()["user_id"] == (
        newcomer
    )
    with transaction() as conn:
        own = repo.upsert_workspace(conn, "Newcomer's workspace")
        repo.add_member(conn, own.id, newcomer)
        repo.upsert_project(conn, own.id, "Newcomer's project")
        if member_of_demo:
            repo.add_member(conn, DEMO_WORKSPACE_ID, newcomer)
    return newcomer


def test_the_chosen_project_gets_one_proposal(
    db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    project_id = choose_mobile_app(db, sessions)
    message_id = store_inbound(db, TEXT)
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "parsed"
    (job,) = _queued(redis_client, "persist")
    proposal_id = save(job, sessions)
    assert proposal_projects(db) == [project_id]
    assert reply_to(db, message_id).startswith("✅ Proposal saved to Mobile App: 2 items")
    # Redelivered: the same proposal, nothing new.
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "done"
    assert save(job, sessions) == proposal_id
    assert proposal_projects(db) == [project_id]
    assert len([r for r in replies(db) if r.startswith("✅ Proposal saved")]) == 1


def test_a_member_removed_after_choosing_saves_nothing(
    db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    choose_mobile_app(db, sessions)
    db.execute("DELETE FROM workspace_members WHERE user_id = %s", (DEMO_USER_ID,))

    message_id, outcome = send_text(db, sessions, redis_client)
    assert outcome == "no_project"
    assert proposal_projects(db) == []
    assert reply_to(db, message_id) == ai_worker.CHOOSE_PROJECT
    assert "project_id" not in sessions.load(PHONE)


def test_a_member_removed_between_parse_and_save_saves_nothing(
    db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    choose_mobile_app(db, sessions)
    message_id = store_inbound(db, TEXT)
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "parsed"
    db.execute("DELETE FROM workspace_members WHERE user_id = %s", (DEMO_USER_ID,))

    (job,) = _queued(redis_client, "persist")
    assert save(job, sessions) is None
    assert proposal_projects(db) == []
    assert reply_to(db, message_id) == ai_worker.CHOOSE_PROJECT
    assert "project_id" not in sessions.load(PHONE)
    handled = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert handled["handled_at"] is not None
    # Redelivered: still nothing, and no second reply.
    assert save(job, sessions) is None
    assert proposal_projects(db) == []
    assert replies(db).count(ai_worker.CHOOSE_PROJECT) == 1


def test_an_archived_project_takes_no_proposal(
    db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    project_id = choose_mobile_app(db, sessions)
    db.execute("UPDATE projects SET archived = true WHERE id = %s", (project_id,))

    message_id, outcome = send_text(db, sessions, redis_client)
    assert outcome == "no_project"
    assert proposal_projects(db) == []
    assert reply_to(db, message_id) == ai_worker.CHOOSE_PROJECT


@pytest.mark.parametrize("member_of_demo", [False, True], ids=["outsider", "same-workspace"])
def test_a_relinked_number_does_not_write_to_the_previous_users_project(
    db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis, member_of_demo: bool
) -> None:
    choose_mobile_app(db, sessions)
    newcomer = relink_to_a_new_user(db, member_of_demo=member_of_demo)

    # Even a newcomer who may use the project did not choose it: the previous user's choice is not theirs.
    message_id, outcome = send_text(db, sessions, redis_client)
    assert outcome == "no_project"
    assert proposal_projects(db) == []
    assert reply_to(db, message_id) == ai_worker.CHOOSE_PROJECT

    # Their own choice works, and their proposal is theirs.
    assert command(db, sessions, "/project newcomer").startswith("✅ Project: Newcomer's project")
    _, outcome = send_text(db, sessions, redis_client)
    assert outcome == "parsed"
    row = db.execute(
        "SELECT p.user_id, j.name FROM proposals p JOIN projects j ON j.id = p.project_id"
    ).fetchone()
    assert (row["user_id"], row["name"]) == (newcomer, "Newcomer's project")


def test_a_relinked_number_does_not_show_the_previous_users_selection(
    db: psycopg.Connection, sessions: Sessions
) -> None:
    choose_mobile_app(db, sessions)
    relink_to_a_new_user(db, member_of_demo=True)
    status = command(db, sessions, "/status")
    assert "Mobile App" not in status
    assert "Project: none" in status
    assert command(db, sessions, "/list tasks") == "Choose a project first with /project <name>."


def test_a_sender_unlinked_between_the_parse_and_the_save_is_told_to_link(
    db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    # Choosing a project would not help someone whose number is no longer linked: linking again would.
    choose_mobile_app(db, sessions)
    message_id = store_inbound(db, TEXT)
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "parsed"
    with transaction() as conn:
        links.unlink(conn, DEMO_USER_ID)

    (job,) = _queued(redis_client, "persist")
    assert save(job, sessions) is None
    assert proposal_projects(db) == []
    assert reply_to(db, message_id) == ai_worker.NOT_LINKED
