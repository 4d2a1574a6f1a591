"""The proposals repository on real PostgreSQL: one transaction, idempotent on the source message."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import psycopg

from shared.ai.offline import parse_offline
from shared.commands.seed_demo import DEMO_USER_ID, seed
from shared.db import proposals, users, workspaces
from shared.db.pool import transaction
from tests.integration.test_bot_workers import store_inbound

TEXT = "Write API docs (2h), add rate limiting (5h) and set up CI (1h) by Monday"
PROPOSAL = parse_offline(TEXT, dt.date(2026, 1, 27))


def _project(db: psycopg.Connection) -> uuid.UUID:
    return db.execute("SELECT id FROM projects ORDER BY name LIMIT 1").fetchone()["id"]


def test_saves_the_proposal_and_its_items(clean: None, db: psycopg.Connection) -> None:
    seed()
    message_id = store_inbound(db, TEXT)
    saved = proposals.save(message_id, PROPOSAL, "offline", user_id=DEMO_USER_ID, project_id=_project(db))
    assert saved.created
    stored = proposals.get(saved.id)
    assert stored is not None
    assert stored["source_message_id"] == message_id
    assert stored["user_id"] == DEMO_USER_ID
    assert stored["project_id"] == _project(db)
    assert float(stored["total_estimated_hours"]) == 8
    assert stored["parser"] == "offline"
    assert [(i["position"], i["title"], float(i["estimated_hours"])) for i in stored["items"]] == [
        (1, "Write API docs", 2.0),
        (2, "Add rate limiting", 5.0),
        (3, "Set up CI", 1.0),
    ]
    assert {i["due_date"] for i in stored["items"]} == {dt.date(2026, 2, 2)}


def test_a_second_save_returns_the_same_id_and_changes_nothing(clean: None, db: psycopg.Connection) -> None:
    seed()
    message_id = store_inbound(db, TEXT)
    first = proposals.save(message_id, PROPOSAL, "offline", user_id=DEMO_USER_ID, project_id=_project(db))
    other = parse_offline("Refactor the auth module", dt.date(2026, 1, 27))
    second = proposals.save(message_id, other, "gpt-4o-mini", user_id=DEMO_USER_ID, project_id=_project(db))
    assert second.id == first.id
    assert not second.created
    assert db.execute("SELECT count(*) AS n FROM proposals").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM proposal_items").fetchone()["n"] == 3
    assert db.execute("SELECT parser FROM proposals").fetchone()["parser"] == "offline"
    assert proposals.id_for_message(message_id) == first.id


def test_concurrent_saves_store_one_proposal(clean: None, db: psycopg.Connection) -> None:
    seed()
    message_id = store_inbound(db, TEXT)
    project_id = _project(db)
    ids: list[uuid.UUID] = []
    barrier = threading.Barrier(4)

    def save() -> None:
        barrier.wait()
        saved = proposals.save(message_id, PROPOSAL, "offline", user_id=DEMO_USER_ID, project_id=project_id)
        assert saved is not None
        ids.append(saved.id)

    threads = [threading.Thread(target=save) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    assert len(ids) == 4
    assert db.execute("SELECT count(*) AS n FROM proposal_items").fetchone()["n"] == 3


def test_nothing_is_saved_in_a_project_the_user_may_not_use(clean: None, db: psycopg.Connection) -> None:
    seed()
    message_id = store_inbound(db, TEXT)
    project_id = _project(db)
    outsider = uuid.uuid4()
    with transaction() as conn:
        users.ensure_user(conn, outsider)
        other = workspaces.upsert_workspace(conn, "Other")
        workspaces.add_member(conn, other.id, outsider)
    refused = [
        (outsider, project_id),  # not a member of the project's workspace
        (uuid.uuid4(), project_id),  # no such user
        (DEMO_USER_ID, uuid.uuid4()),  # no such project
        (DEMO_USER_ID, "not-a-uuid"),
        (DEMO_USER_ID, None),
        (None, project_id),
    ]
    for user_id, project in refused:
        assert proposals.save(message_id, PROPOSAL, "offline", user_id=user_id, project_id=project) is None
    db.execute("UPDATE projects SET archived = true WHERE id = %s", (project_id,))
    assert (
        proposals.save(message_id, PROPOSAL, "offline", user_id=DEMO_USER_ID, project_id=project_id) is None
    )
    assert db.execute("SELECT count(*) AS n FROM proposals").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM proposal_items").fetchone()["n"] == 0


def test_a_failed_item_insert_leaves_no_proposal(clean: None, db: psycopg.Connection) -> None:
    seed()
    message_id = store_inbound(db, TEXT)
    project_id = _project(db)
    db.execute("ALTER TABLE proposal_items ADD CONSTRAINT test_no_ci CHECK (title <> 'Set up CI')")
    try:
        try:
            proposals.save(message_id, PROPOSAL, "offline", user_id=DEMO_USER_ID, project_id=project_id)
        except psycopg.errors.CheckViolation:
            pass
        else:
            raise AssertionError("the item insert should have failed")
        assert db.execute("SELECT count(*) AS n FROM proposals").fetchone()["n"] == 0
        assert db.execute("SELECT count(*) AS n FROM proposal_items").fetchone()["n"] == 0
    finally:
        db.execute("ALTER TABLE proposal_items DROP CONSTRAINT test_no_ci")


def test_a_user_or_a_workspace_can_be_erased_once_it_has_proposals(
    clean: None, db: psycopg.Connection
) -> None:
    # A host erasing a user (GDPR) or deleting a workspace must not be refused because the user once
    # made a proposal: the proposal stays, no longer anyone's, with its items.
    seed()
    project_id = _project(db)
    first = proposals.save(
        store_inbound(db, TEXT), PROPOSAL, "offline", user_id=DEMO_USER_ID, project_id=project_id
    )
    assert first is not None

    db.execute("DELETE FROM users WHERE id = %s", (DEMO_USER_ID,))

    stored = proposals.get(first.id)
    assert stored is not None
    assert (stored["user_id"], stored["project_id"], len(stored["items"])) == (None, project_id, 3)

    db.execute("DELETE FROM workspaces")

    stored = proposals.get(first.id)
    assert stored is not None
    assert (stored["user_id"], stored["project_id"], len(stored["items"])) == (None, None, 3)
