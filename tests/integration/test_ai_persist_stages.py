"""The ai and persist stages: plain functions on real PostgreSQL and Redis, then real worker processes."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import psycopg
import pytest
import redis

from shared.ai.offline import parse_offline
from shared.ai.proposal import Proposal
from shared.commands.seed_demo import DEMO_USER_ID, seed
from shared.db import proposals
from shared.queues import Job, Publisher
from shared.replies import APOLOGY
from shared.sessions import Sessions
from shared.settings import load_settings
from tests.fakes.openai_api import VALID_PROPOSAL, FakeOpenAI
from tests.integration.test_bot_workers import PHONE, replies, store_inbound
from workers import ai as ai_worker
from workers import persist as persist_worker

TEXT = "Need to add login page and user dashboard by Friday. Should take about 8 hours."
OFFLINE = load_settings(ai="offline", app_url="https://app.example.com")


@pytest.fixture
def sessions(redis_client: redis.Redis) -> Sessions:
    return Sessions(redis_client, ttl_seconds=1800)


def _project(db: psycopg.Connection) -> uuid.UUID:
    return db.execute("SELECT id FROM projects ORDER BY name LIMIT 1").fetchone()["id"]


def _queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The kwargs of every task message waiting on ``queue`` (oldest first)."""
    found = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        found.append({"task": envelope["headers"]["task"], **kwargs})
    return found


def test_no_project_selected_asks_for_one(
    clean: None, db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    seed(PHONE)
    message_id = store_inbound(db, TEXT)
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "no_project"
    assert replies(db) == [ai_worker.CHOOSE_PROJECT]
    assert "/project" in replies(db)[0]
    assert _queued(redis_client, "persist") == []


def test_a_rerun_of_an_answered_message_makes_no_proposal(
    clean: None, db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    # The first run asked for a project and was run again (killed before its task was acknowledged, or
    # retried when enqueueing the send failed); the answer ended the message's turn, so the sender's
    # /project could come first. The rerun parsed the text into that project under the answer's taken key:
    # a proposal the sender was never told of, doubled when they send the text again as asked.
    seed(PHONE)
    message_id = store_inbound(db, TEXT)
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "no_project"
    sessions.select(PHONE, DEMO_USER_ID, workspace_id=None, project_id=str(_project(db)))

    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "done"

    assert _queued(redis_client, "persist") == []
    assert replies(db) == [ai_worker.CHOOSE_PROJECT]
    # Its send is enqueued again, should the first run have died before: notify.send sends it once.
    assert [j["task"] for j in _queued(redis_client, "notify")] == ["notify.send", "notify.send"]


def test_a_rerun_finding_a_reply_stored_without_its_handled_mark_ends_the_turn(
    clean: None, db: psycopg.Connection, sessions: Sessions
) -> None:
    # A reply stored without the message marked handled (by a release that marked it in a second step)
    # held the conversation's turn for good: the rerun that finds it answered marks it, as commands do.
    seed(PHONE)
    message_id = store_inbound(db, TEXT)
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "no_project"
    db.execute("UPDATE messages SET handled_at = NULL WHERE id = %s", (message_id,))

    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "done"

    row = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row["handled_at"] is not None
    assert replies(db) == [ai_worker.CHOOSE_PROJECT]


def test_unlinked_sender_gets_linking_instructions(
    clean: None, db: psycopg.Connection, sessions: Sessions
) -> None:
    message_id = store_inbound(db, TEXT, phone="+14155550999")
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "not_linked"
    assert replies(db) == [ai_worker.NOT_LINKED]


def test_text_without_items_gets_a_clear_reply(
    clean: None, db: psycopg.Connection, sessions: Sessions
) -> None:
    seed(PHONE)
    sessions.select(PHONE, DEMO_USER_ID, workspace_id=None, project_id=str(_project(db)))
    message_id = store_inbound(db, "🙂 Friday")
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "no_items"
    # Said once: it read "I could not find a task in that: no work item found: name what to do, ...".
    assert replies(db)[0].startswith("🤔 No work item found: name what to do, e.g. ")
    assert "could not find" not in replies(db)[0]


def test_parse_then_persist_stores_rows_and_queues_the_reply_with_the_link(
    clean: None, db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    seed(PHONE)
    project_id = _project(db)
    sessions.select(PHONE, DEMO_USER_ID, workspace_id=None, project_id=str(project_id))
    message_id = store_inbound(db, TEXT)

    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "parsed"
    (job,) = _queued(redis_client, "persist")
    assert job["task"] == "persist.save_proposal"
    assert job["message_id"] == message_id
    assert job["parser"] == "offline"
    assert [i["title"] for i in job["proposal"]["items"]] == ["Add login page", "Add user dashboard"]

    proposal_id = persist_worker.save_proposal(
        job["message_id"], job["proposal"], job["parser"], job["project_id"], settings=OFFLINE
    )
    row = db.execute("SELECT * FROM proposals").fetchone()
    assert row["id"] == proposal_id
    assert row["project_id"] == project_id
    assert row["user_id"] == DEMO_USER_ID
    assert row["source_message_id"] == message_id
    assert float(row["total_estimated_hours"]) == 8
    assert db.execute("SELECT count(*) AS n FROM proposal_items").fetchone()["n"] == 2
    (reply,) = replies(db)
    assert reply.startswith("✅ Proposal saved to Marketing Site: 2 items, 8h total")
    assert "\n1. Add login page · 4h · 📅 20" in reply
    assert reply.endswith(f"https://app.example.com/proposals/{proposal_id}")
    assert [j["task"] for j in _queued(redis_client, "notify")] == ["notify.send"]

    # Redelivered tasks: nothing new is stored or sent.
    assert ai_worker.parse_message(message_id, sessions, OFFLINE) == "done"
    again = persist_worker.save_proposal(job["message_id"], job["proposal"], job["parser"], settings=OFFLINE)
    assert again == proposal_id
    assert db.execute("SELECT count(*) AS n FROM proposals").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM proposal_items").fetchone()["n"] == 2
    assert len(replies(db)) == 1


def test_without_an_app_url_the_confirmation_has_no_link(
    clean: None, db: psycopg.Connection, sessions: Sessions
) -> None:
    # The review page belongs to the host application: a link on wapipe's own public URL answered 404.
    seed(PHONE)
    project_id = _project(db)
    message_id = store_inbound(db, TEXT)
    persist_worker.save_proposal(
        message_id, VALID_PROPOSAL, "offline", str(project_id), settings=load_settings(ai="offline")
    )

    (reply,) = replies(db)
    assert reply.startswith("✅ Proposal saved")
    assert "/proposals/" not in reply
    assert "http" not in reply


def _confirm(db: psycopg.Connection, text: str) -> tuple[str, str]:
    """The confirmation of ``text`` parsed offline into the first demo project, and that project's name."""
    seed(PHONE)
    project = db.execute("SELECT id, name FROM projects ORDER BY name LIMIT 1").fetchone()
    message_id = store_inbound(db, text)
    proposal = parse_offline(text, dt.date(2026, 12, 7)).to_json_dict()
    persist_worker.save_proposal(message_id, proposal, "offline", str(project["id"]), settings=OFFLINE)
    (reply,) = replies(db)
    return reply, project["name"]


def test_the_confirmation_names_the_project_and_each_figure_once(clean: None, db: psycopg.Connection) -> None:
    # The header's figures came again on the next line (the proposal's summary), and no project was named.
    reply, project = _confirm(db, "Fix the login bug and write the release notes by Friday, 2h each")

    assert reply.splitlines()[:3] == [
        f"✅ Proposal saved to {project}: 2 items, 4h total",
        "1. Fix the login bug · 2h · 📅 2026-12-11",
        "2. Write the release notes · 2h · 📅 2026-12-11",
    ]
    assert reply.count("4h") == 1
    assert "2 items" not in reply.split("\n", 1)[1]


def test_a_single_items_confirmation_says_its_hours_once(clean: None, db: psycopg.Connection) -> None:
    reply, project = _confirm(db, "Fix the login bug by Friday, 2h")

    assert reply.splitlines()[:2] == [
        f"✅ Proposal saved to {project}",
        "1. Fix the login bug · 2h · 📅 2026-12-11",
    ]


def test_the_confirmation_gives_no_total_the_items_do_not_add_up_to(
    clean: None, db: psycopg.Connection
) -> None:
    # The second line said "0.75h estimated" under a header with no total: one item has no estimate.
    reply, project = _confirm(db, "Call the client tomorrow\nand then update the spreadsheet 45 min")

    assert reply.splitlines()[:3] == [
        f"✅ Proposal saved to {project}: 2 items",
        "1. Call the client · 📅 2026-12-08",
        "2. Update the spreadsheet · 0.75h",
    ]
    assert "estimated" not in reply


def test_a_spanish_proposal_is_confirmed_in_one_language_a_line(clean: None, db: psycopg.Connection) -> None:
    # The English header was followed by the Spanish summary; an item line's own words are the user's, so
    # its figures are marked with symbols, not English words.
    text = "Llamar al cliente mañana y actualizar la hoja de cálculo, 2 horas cada una, prioridad alta"
    reply, project = _confirm(db, text)

    assert reply.splitlines()[:3] == [
        f"✅ Proposal saved to {project}: 2 items, 4h total",
        "1. Llamar al cliente · 2h · 📅 2026-12-08 · ❗",
        "2. Actualizar la hoja de cálculo · 2h · ❗",
    ]
    assert "tareas" not in reply


def test_the_confirmation_says_what_the_parser_left_out(clean: None, db: psycopg.Connection) -> None:
    # "due 31/02" is no day: the parser takes it out of the title and notes it in the summary, which the
    # confirmation no longer sends, so the deadline was dropped and the sender told nothing.
    reply, project = _confirm(db, "Fix login due 31/02")

    assert reply.splitlines()[:3] == [
        f"✅ Proposal saved to {project}",
        "1. Fix login",
        "Not understood, left out: “due 31/02”",
    ]


def test_a_confirmation_with_nothing_left_out_has_no_such_line(clean: None, db: psycopg.Connection) -> None:
    reply, _ = _confirm(db, "Fix login by Friday, 2h")

    assert "left out" not in reply


def test_an_invalid_proposal_dict_is_dropped_and_its_sender_told_to_send_it_again(
    clean: None, db: psycopg.Connection
) -> None:
    # A job a release's tighter validation refuses, or a dead letter edited before its replay: nothing will
    # come of it, and the user who sent the message must not wait for an answer forever.
    message_id = store_inbound(db, TEXT)
    assert (
        persist_worker.save_proposal(message_id, {"summary": "x", "items": []}, "offline", settings=OFFLINE)
        is None
    )
    assert db.execute("SELECT count(*) AS n FROM proposals").fetchone()["n"] == 0
    assert replies(db) == [APOLOGY]
    handled = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert handled["handled_at"] is not None


def test_a_rerun_confirms_the_stored_proposal_not_its_own_parse(
    clean: None, db: psycopg.Connection, sessions: Sessions
) -> None:
    # The first run stored the model's proposal and died before answering; the rerun's job holds another
    # parse of the same message (the ai stage ran twice, the second time offline).
    seed(PHONE)
    project_id = _project(db)
    message_id = store_inbound(db, TEXT)
    stored = Proposal.model_validate(
        dict(VALID_PROPOSAL, items=[dict(VALID_PROPOSAL["items"][0], title="Build login")])
    )
    saved = proposals.save(message_id, stored, "kimi-test", user_id=DEMO_USER_ID, project_id=project_id)
    assert saved is not None

    other = dict(VALID_PROPOSAL, summary="another parse")
    again = persist_worker.save_proposal(message_id, other, "offline", str(project_id), settings=OFFLINE)

    assert again == saved.id
    (reply,) = replies(db)
    assert reply.startswith("✅ Proposal saved to Marketing Site\n")
    assert "\n1. Build login · 4h · 📅 2026-01-30" in reply
    assert "another parse" not in reply


def test_control_characters_in_the_models_answer_are_not_stored(
    clean: None, db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    # PostgreSQL refuses text holding NUL: kept, it failed persist.save_proposal on every replay.
    seed(PHONE)
    sessions.select(PHONE, DEMO_USER_ID, workspace_id=None, project_id=str(_project(db)))
    message_id = store_inbound(db, TEXT)
    item = dict(
        VALID_PROPOSAL["items"][0], title="Add\u0000 login\u0007 page", description="For\u0000 the app\u001b"
    )
    answer = dict(VALID_PROPOSAL, summary="2 items\u0000, 8h", items=[item, VALID_PROPOSAL["items"][1]])
    with FakeOpenAI() as fake:
        fake.reply(json.dumps(answer))
        settings = load_settings(openai_api_key="sk-test", openai_base_url=fake.url, ai_model="kimi-test")
        assert ai_worker.parse_message(message_id, sessions, settings) == "parsed"
    (job,) = _queued(redis_client, "persist")
    assert job["parser"] == "kimi-test"
    persist_worker.save_proposal(
        message_id, job["proposal"], job["parser"], job["project_id"], settings=OFFLINE
    )

    assert db.execute("SELECT summary FROM proposals").fetchone()["summary"] == "2 items, 8h"
    first = db.execute("SELECT title, description FROM proposal_items WHERE position = 1").fetchone()
    assert first == {"title": "Add login page", "description": "For the app"}
    assert replies(db)[0].startswith("✅ Proposal saved to Marketing Site: 2 items")


def test_a_models_answer_of_control_characters_only_falls_back_to_offline(
    clean: None, db: psycopg.Connection, sessions: Sessions, redis_client: redis.Redis
) -> None:
    seed(PHONE)
    sessions.select(PHONE, DEMO_USER_ID, workspace_id=None, project_id=str(_project(db)))
    message_id = store_inbound(db, TEXT)
    item = dict(VALID_PROPOSAL["items"][0], title="\u0000\u0001")
    with FakeOpenAI() as fake:
        fake.reply(json.dumps(dict(VALID_PROPOSAL, items=[item])))
        settings = load_settings(openai_api_key="sk-test", openai_base_url=fake.url, ai_model="kimi-test")
        assert ai_worker.parse_message(message_id, sessions, settings) == "parsed"
    (job,) = _queued(redis_client, "persist")
    assert job["parser"] == "offline"
    assert [i["title"] for i in job["proposal"]["items"]] == ["Add login page", "Add user dashboard"]


@pytest.mark.slow
def test_real_workers_turn_a_message_into_a_proposal_once(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    test_servers: dict[str, str],
    start_worker: Any,
    wait_for: Any,
) -> None:
    seed(PHONE)
    Sessions(redis_client, ttl_seconds=1800).select(
        PHONE, DEMO_USER_ID, workspace_id=None, project_id=str(_project(db))
    )
    message_id = store_inbound(db, TEXT)
    worker = start_worker(
        ["ai", "persist"], env={"WAPIPE_AI": "offline", "WAPIPE_APP_URL": "https://app.example.com"}
    )
    publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
    publisher.publish([Job("ai.parse_proposal", {"message_id": message_id})])
    reply = wait_for(lambda: replies(db), what="the proposal reply")
    assert reply[0].startswith("✅ Proposal saved to Marketing Site: 2 items, 8h total")

    # The same task delivered again (a redelivery after a lost ack): nothing new is stored or sent.
    publisher.publish([Job("ai.parse_proposal", {"message_id": message_id})])
    wait_for(
        lambda: _succeeded(worker.lines(), "ai.parse_proposal") >= 2, what="the second delivery to finish"
    )
    assert db.execute("SELECT count(*) AS n FROM proposals").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM proposal_items").fetchone()["n"] == 2
    assert len(replies(db)) == 1
    assert _queued(redis_client, "persist") == []


def _succeeded(lines: list[str], task: str) -> int:
    return sum(task in line and "succeeded" in line for line in lines)
