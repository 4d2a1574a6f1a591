"""Maintenance jobs against real PostgreSQL: each does its work once, and a second run changes nothing."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog

from shared.db import maintenance as queries
from shared.db.turns import HORIZON
from shared.settings import get_settings, load_settings
from shared.wire.events import Media
from tests.fakes.media_host import MediaHost
from tests.integration.test_inbound_media import (
    BASIC,
    JPEG,
    inbound,
    media_column,
    stored_message,
    twilio_settings,
)
from workers import celery, maintenance, media
from workers.media import fetch_media


def _contact(db: psycopg.Connection, phone: str) -> int:
    return db.execute("INSERT INTO contacts (phone) VALUES (%s) RETURNING id", (phone,)).fetchone()["id"]


def _conversation(db: psycopg.Connection, contact_id: int, status: str, idle: str) -> int:
    return db.execute(
        "INSERT INTO conversations (contact_id, provider, business_number, status, last_message_at)"
        " VALUES (%s, 'twilio', '+14155238886', %s, now() - %s::interval) RETURNING id",
        (contact_id, status, idle),
    ).fetchone()["id"]


def _status(db: psycopg.Connection, conversation_id: int) -> tuple[str, object]:
    row = db.execute(
        "SELECT status, closed_at FROM conversations WHERE id = %s", (conversation_id,)
    ).fetchone()
    return row["status"], row["closed_at"]


def test_closes_only_conversations_idle_longer_than_the_setting(db: psycopg.Connection) -> None:
    idle_open = _conversation(db, _contact(db, "+14155550101"), "open", "25 hours")
    idle_handoff = _conversation(db, _contact(db, "+14155550102"), "handoff", "3 days")
    recent = _conversation(db, _contact(db, "+14155550103"), "open", "23 hours")
    already = _conversation(db, _contact(db, "+14155550104"), "closed", "40 days")
    db.execute("UPDATE conversations SET closed_at = now() - interval '39 days' WHERE id = %s", (already,))
    before_already = _status(db, already)

    assert maintenance.close_idle_conversations(idle_minutes=24 * 60) == 2

    assert _status(db, idle_open)[0] == "closed"
    assert _status(db, idle_handoff)[0] == "closed"
    assert _status(db, recent) == ("open", None)
    assert _status(db, already) == before_already
    first_closed_at = _status(db, idle_open)[1]
    assert first_closed_at is not None

    assert maintenance.close_idle_conversations(idle_minutes=24 * 60) == 0
    assert _status(db, idle_open)[1] == first_closed_at


def test_closing_works_through_batches(db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintenance, "BATCH_SIZE", 2)
    ids = [_conversation(db, _contact(db, f"+1415555{n:04d}"), "open", "2 days") for n in range(5)]

    assert maintenance.close_idle_conversations(idle_minutes=60) == 5
    assert {_status(db, i)[0] for i in ids} == {"closed"}


def test_purges_only_codes_past_their_expiry(db: psycopg.Connection) -> None:
    expired, live = uuid.uuid4(), uuid.uuid4()
    for user_id, expires in ((expired, "-1 day"), (live, "5 minutes")):
        db.execute("INSERT INTO users (id) VALUES (%s)", (user_id,))
        db.execute(
            "INSERT INTO verification_codes (user_id, phone, code_hash, expires_at)"
            " VALUES (%s, '+14155550101', '\\x00', now() + %s::interval)",
            (user_id, expires),
        )

    assert maintenance.purge_expired_codes() == 1
    assert maintenance.purge_expired_codes() == 0
    left = [row["user_id"] for row in db.execute("SELECT user_id FROM verification_codes")]
    assert left == [live]


def test_purges_webhook_events_past_retention_in_batches(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "BATCH_SIZE", 3)
    db.execute(
        "INSERT INTO webhook_events (provider, body, received_at)"
        " SELECT 'meta', '{}'::jsonb, now() - make_interval(days => d) + interval '12 hours'"
        " FROM generate_series(1, 40) AS d"
    )

    assert maintenance.purge_webhook_events(retention_days=30) == 10
    assert maintenance.purge_webhook_events(retention_days=30) == 0
    oldest = db.execute("SELECT max(now() - received_at) AS age FROM webhook_events").fetchone()["age"]
    assert db.execute("SELECT count(*) AS n FROM webhook_events").fetchone()["n"] == 30
    assert oldest.days == 29  # the 29.5-day-old event stays


def _webhook_events(db: psycopg.Connection, count: int, age: str) -> None:
    db.execute(
        "INSERT INTO webhook_events (provider, body, received_at)"
        " SELECT 'meta', '{}'::jsonb, now() - %s::interval FROM generate_series(1, %s)",
        (age, count),
    )


def test_a_backlog_of_many_batches_is_purged_in_one_run(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 250 batches of 2: more than a run took when it stopped after 100 batches, whatever the backlog.
    monkeypatch.setattr(maintenance, "BATCH_SIZE", 2)
    _webhook_events(db, 500, "31 days")
    _webhook_events(db, 5, "29 days")

    assert maintenance.purge_webhook_events(retention_days=30) == 500

    assert db.execute("SELECT count(*) AS n FROM webhook_events").fetchone()["n"] == 5


def test_a_run_out_of_time_says_how_many_events_it_left(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "BATCH_SIZE", 2)
    monkeypatch.setattr(maintenance, "RUN_BUDGET_SECONDS", 0.0)  # spent after the first batch
    _webhook_events(db, 7, "31 days")
    _webhook_events(db, 1, "1 day")

    with structlog.testing.capture_logs() as logs:
        # A logger made inside the capture: the module's may have cached an earlier configuration.
        monkeypatch.setattr(maintenance, "log", structlog.get_logger(maintenance.__name__))
        assert maintenance.purge_webhook_events(retention_days=30) == 2

    [left] = [entry["left"] for entry in logs if entry["log_level"] == "warning"]
    assert left == 5
    assert db.execute("SELECT count(*) AS n FROM webhook_events").fetchone()["n"] == 6


def test_reports_pending_dead_letters_with_count_and_oldest_age(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert maintenance.report_dead_letters().count == 0
    db.execute(
        "INSERT INTO dead_letters (task_name, payload, error, created_at, replayed_at) VALUES"
        " ('notify.send', '{}', 'boom', now() - interval '2 hours', NULL),"
        " ('notify.send', '{}', 'boom', now() - interval '5 minutes', NULL),"
        " ('notify.send', '{}', 'boom', now() - interval '3 days', now())"
    )
    db.execute(  # closed by an operator (`wapipe dlq discard`): not waiting any more
        "INSERT INTO dead_letters (task_name, payload, error, created_at, discarded_at, discard_reason)"
        " VALUES ('notify.send', '{}', 'boom', now() - interval '4 days', now(), 'delivered')"
    )

    with structlog.testing.capture_logs() as logs:
        # A logger made inside the capture: the module's may have cached an earlier configuration's
        # processors (cache_logger_on_first_use), which the capture would not see.
        monkeypatch.setattr(maintenance, "log", structlog.get_logger(maintenance.__name__))
        first = maintenance.report_dead_letters()
    second = maintenance.report_dead_letters()

    assert first.count == second.count == 2
    assert first.oldest_age_seconds is not None
    assert 2 * 3600 <= first.oldest_age_seconds < 3 * 3600
    warning = next(entry for entry in logs if entry["log_level"] == "warning")
    assert warning["count"] == 2


def test_beat_schedules_every_job_on_registered_tasks() -> None:
    schedule = celery.conf.beat_schedule
    tasks = {entry["task"] for entry in schedule.values()}
    assert tasks == {
        "maintenance.close_idle_conversations",
        "maintenance.purge_expired_codes",
        "maintenance.purge_media",
        "maintenance.purge_webhook_events",
        "maintenance.release_lost_turns",
        "maintenance.remove_stale_downloads",
        "maintenance.report_dead_letters",
        "notify.sweep",
    }
    import workers.notify  # noqa: F401 - registers notify.sweep, as a worker's imports do

    assert tasks <= set(celery.tasks)


def _inbound(db: psycopg.Connection, conversation_id: int, dispatched: str, handled: bool) -> int:
    """An inbound message of the conversation, dispatched to a handler ``dispatched`` ago."""
    return db.execute(
        "INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id, body,"
        " status, created_at, routed_at, dispatched_at, dispatched_to, handled_at)"
        " SELECT id, contact_id, 'in', 'twilio', %(sid)s, 'hello', 'received', now() - %(ago)s::interval,"
        " now() - %(ago)s::interval, now() - %(ago)s::interval, 'ai.reply',"
        " CASE WHEN %(handled)s THEN now() - %(ago)s::interval END"
        " FROM conversations WHERE id = %(conversation)s RETURNING id",
        {
            "sid": f"SM{uuid.uuid4().hex}",
            "ago": dispatched,
            "handled": handled,
            "conversation": conversation_id,
        },
    ).fetchone()["id"]


def test_a_conversation_whose_message_still_waits_for_its_answer_is_not_closed(
    db: psycopg.Connection,
) -> None:
    # WAPIPE_CONVERSATION_IDLE_MINUTES shorter than a handler's retries through an outage (about 70 min).
    waiting = _conversation(db, _contact(db, "+14155550101"), "open", "40 minutes")
    _inbound(db, waiting, "40 minutes", handled=False)  # its handler is still retrying
    answered = _conversation(db, _contact(db, "+14155550102"), "open", "40 minutes")
    _inbound(db, answered, "40 minutes", handled=True)
    past_retries = f"{HORIZON.total_seconds() + 3600} seconds"  # its handler is gone for good: stale
    abandoned = _conversation(db, _contact(db, "+14155550103"), "open", past_retries)
    _inbound(db, abandoned, past_retries, handled=False)

    assert maintenance.close_idle_conversations(idle_minutes=30) == 2

    # Before: closed, so the handler's answer found its conversation closed and the user got nothing.
    assert _status(db, waiting) == ("open", None)
    assert _status(db, answered)[0] == "closed"
    assert _status(db, abandoned)[0] == "closed"


def test_the_idle_close_reads_only_the_indexes(db: psycopg.Connection) -> None:
    # Tables this small are read whole anyway: ask the planner what it would do at scale.
    db.execute("SET enable_seqscan = off")
    try:
        plan = db.execute(
            "EXPLAIN " + queries._CLOSE_IDLE, {"minutes": 30, "batch": 1000} | queries.close_idle_params()
        ).fetchall()
    finally:
        db.execute("RESET enable_seqscan")
    text = "\n".join(row["QUERY PLAN"] for row in plan)

    assert "messages_turn" in text
    assert "Seq Scan" not in text


def _turn_of(db: psycopg.Connection, message_id: int) -> tuple[object, object]:
    row = db.execute("SELECT dispatched_at, handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    return row["dispatched_at"], row["handled_at"]


def test_turns_held_past_the_horizon_by_a_lost_handler_are_released(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "BATCH_SIZE", 2)  # three lost ones: more than one batch
    conversation = _conversation(db, _contact(db, "+14155550101"), "open", "1 minute")
    past = f"{HORIZON.total_seconds() + 60} seconds"
    within = f"{HORIZON.total_seconds() - 60} seconds"
    lost = [_inbound(db, conversation, past, handled=False) for _ in range(3)]
    retrying = _inbound(db, conversation, within, handled=False)
    answered = _inbound(db, conversation, past, handled=True)
    before = {m: _turn_of(db, m) for m in (retrying, answered)}

    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(maintenance, "log", structlog.get_logger(maintenance.__name__))
        assert maintenance.release_lost_turns() == 3
    assert maintenance.release_lost_turns() == 0

    # Before: these rows stayed in messages_turn for ever, read by every later message's turn check.
    assert [_turn_of(db, m)[0] for m in lost] == [None] * 3
    assert {m: _turn_of(db, m) for m in (retrying, answered)} == before
    assert [entry["released"] for entry in logs if entry["event"] == "lost turns released"] == [3]
    in_index = db.execute(
        "SELECT count(*) AS n FROM messages WHERE conversation_id = %s AND direction = 'in'"
        " AND handled_at IS NULL AND (dispatched_at IS NOT NULL OR routed_at IS NULL)",
        (conversation,),
    ).fetchone()["n"]
    assert in_index == 1  # only the message whose handler may still answer it


def test_the_lost_turns_sweep_reads_only_the_turn_index(db: psycopg.Connection) -> None:
    db.execute("SET enable_seqscan = off")  # as for the idle close: the plan at scale
    try:
        plan = db.execute(
            "EXPLAIN " + queries._RELEASE_LOST_TURNS, {"horizon": HORIZON, "batch": 1000}
        ).fetchall()
    finally:
        db.execute("RESET enable_seqscan")
    text = "\n".join(row["QUERY PLAN"] for row in plan)

    assert "messages_turn" in text
    assert "Seq Scan" not in text


def _file(path: Path, size: int, age: timedelta) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    then = time.time() - age.total_seconds()
    os.utime(path, (then, then))
    return path


def test_downloads_left_by_a_killed_worker_are_removed_once_no_download_can_be_writing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    age = maintenance.STALE_DOWNLOAD_AGE
    left = [_file(tmp_path / f"{media.PART_PREFIX}{n}", 1000, age + timedelta(minutes=n)) for n in (1, 90)]
    writing = _file(tmp_path / f"{media.PART_PREFIX}now", 10, age - timedelta(minutes=5))
    stored = _file(tmp_path / "ab" / ("ab" + "0" * 62 + ".jpg"), 10, timedelta(days=400))
    other = _file(tmp_path / "notes.txt", 10, timedelta(days=400))

    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(maintenance, "log", structlog.get_logger(maintenance.__name__))
        assert maintenance.remove_stale_downloads(tmp_path) == 2
    assert maintenance.remove_stale_downloads(tmp_path) == 0

    # Before: nothing removed them, and each killed download's bytes stayed on disk for good.
    assert [path.exists() for path in left] == [False, False]
    assert [path.exists() for path in (writing, stored, other)] == [True, True, True]
    [line] = [entry for entry in logs if entry["event"] == "stale media downloads removed"]
    assert (line["removed"], line["freed_bytes"]) == (2, 2000)


def test_no_media_folder_yet_is_nothing_to_remove(tmp_path: Path) -> None:
    assert maintenance.remove_stale_downloads(tmp_path / "media") == 0


def _stored_name(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256}.jpg"


def test_stored_media_older_than_the_retention_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = timedelta(days=1)
    old = [_file(tmp_path / _stored_name(f"{n:02x}" + "0" * 62), 1000, 31 * day) for n in (1, 2)]
    recent = _file(tmp_path / _stored_name("03" + "0" * 62), 10, 29 * day)
    writing = _file(tmp_path / f"{media.PART_PREFIX}now", 10, timedelta(minutes=1))
    other = _file(tmp_path / "notes.txt", 10, 400 * day)

    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(maintenance, "log", structlog.get_logger(maintenance.__name__))
        assert maintenance.purge_media(tmp_path, retention_days=30) == 2
    assert maintenance.purge_media(tmp_path, retention_days=30) == 0

    # Before: nothing ever deleted a stored file, and WAPIPE_MEDIA_DIR grew for good.
    assert [path.exists() for path in old] == [False, False]
    assert [path.exists() for path in (recent, writing, other)] == [True, True, True]
    [line] = [entry for entry in logs if entry["event"] == "old media deleted"]
    assert (line["deleted"], line["freed_bytes"], line["retention_days"]) == (2, 2000, 30)


def test_a_retention_of_0_keeps_media_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ages = (timedelta(days=400), timedelta())
    kept = [_file(tmp_path / _stored_name(f"{n:02x}" + "0" * 62), 10, age) for n, age in enumerate(ages, 4)]
    monkeypatch.setenv("WAPIPE_MEDIA_RETENTION_DAYS", "0")
    get_settings.cache_clear()
    try:
        # Before: the settings refused 0, and 0 given here fell back to them.
        assert maintenance.purge_media(tmp_path) == 0
        assert maintenance.purge_media(tmp_path, retention_days=0) == 0
    finally:
        get_settings.cache_clear()

    assert [path.exists() for path in kept] == [True, True]


def test_media_retention_defaults_to_the_raw_events_retention() -> None:
    assert load_settings().media_retention_days == load_settings().webhook_retention_days == 30
    assert load_settings(media_retention_days=7).media_retention_days == 7


def test_a_file_stored_again_by_a_recent_message_outlives_the_older_one(
    db: psycopg.Connection, redis_client, tmp_path: Path
) -> None:
    # Files are content-addressed: the photo of a message past the retention may be a recent message's
    # too. Storing it again makes it recent, so the later message keeps its file.
    with MediaHost() as host:
        shared = host.serve("/media/shared", JPEG, "image/jpeg", auth=BASIC)
        alone = host.serve("/media/alone", JPEG[::-1], "image/jpeg", auth=BASIC)
        settings = twilio_settings(host, tmp_path)
        first, only_old = (stored_message(inbound("twilio", Media(url=url))) for url in (shared, alone))
        for message_id in (first, only_old):
            fetch_media(message_id, settings=settings)
        paths = [Path(media_column(db, m)[0]["stored"]["path"]) for m in (first, only_old)]
        then = time.time() - timedelta(days=40).total_seconds()
        for path in paths:
            os.utime(path, (then, then))
        later = stored_message(inbound("twilio", Media(url=shared)))
        fetch_media(later, settings=settings)

    assert maintenance.purge_media(tmp_path, retention_days=30) == 1

    assert Path(media_column(db, later)[0]["stored"]["path"]) == paths[0]
    assert paths[0].read_bytes() == JPEG
    assert not paths[1].exists()


@pytest.mark.parametrize(
    ("step", "deleted"),
    [
        ("stat", 0),  # the store lands after the purge read the old file's age: that file is gone
        ("rename", 1),  # after the purge renamed the old file aside: it is deleted, the new one stays
    ],
)
def test_a_file_stored_again_while_the_purge_deletes_it_is_kept(
    db: psycopg.Connection,
    redis_client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    deleted: int,
) -> None:
    # A message storing the same bytes replaces the file (workers/media.py) at any moment of the purge: the
    # purge must not delete the file that message was just given.
    with MediaHost() as host:
        photo = host.serve("/media/photo", JPEG, "image/jpeg", auth=BASIC)
        settings = twilio_settings(host, tmp_path)
        first = stored_message(inbound("twilio", Media(url=photo)))
        fetch_media(first, settings=settings)
        path = Path(media_column(db, first)[0]["stored"]["path"])
        then = time.time() - timedelta(days=40).total_seconds()
        os.utime(path, (then, then))
        later = stored_message(inbound("twilio", Media(url=photo)))
        purge_step = getattr(Path, step)

        def store_later_right_after(self: Path, *args: Any, **kwargs: Any) -> Any:
            done = purge_step(self, *args, **kwargs)
            if self == path:
                monkeypatch.setattr(Path, step, purge_step)
                fetch_media(later, settings=settings)
            return done

        monkeypatch.setattr(Path, step, store_later_right_after)
        assert maintenance.purge_media(tmp_path, retention_days=30) == deleted
        monkeypatch.setattr(Path, step, purge_step)

    # Before: the purge unlinked the name, and with it the file just stored for the later message.
    assert Path(media_column(db, later)[0]["stored"]["path"]) == path
    assert path.read_bytes() == JPEG
    assert path.stat().st_mtime > time.time() - timedelta(days=1).total_seconds()
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]


def test_a_file_a_killed_purge_left_aside_is_deleted_or_put_back(tmp_path: Path) -> None:
    # A purge renames a file aside before it reads its age again: killed in between, it leaves the file
    # there, maybe stored again just before (to be put back) or old (to be deleted).
    day = timedelta(days=1)
    recent, old = (tmp_path / _stored_name(f"{n:02x}" + "0" * 62) for n in (6, 7))
    _file(recent.with_name(f"{maintenance.ASIDE_PREFIX}1a2b-{recent.name}"), 10, day)
    _file(old.with_name(f"{maintenance.ASIDE_PREFIX}3c4d-{old.name}"), 1000, 31 * day)

    assert maintenance.purge_media(tmp_path, retention_days=30) == 1
    assert maintenance.purge_media(tmp_path, retention_days=30) == 0

    assert [entry.name for entry in recent.parent.iterdir()] == [recent.name]
    assert list(old.parent.iterdir()) == []


def test_a_file_a_killed_purge_left_aside_is_put_back_when_media_are_kept_for_good(tmp_path: Path) -> None:
    stored = tmp_path / _stored_name("08" + "0" * 62)
    _file(stored.with_name(f"{maintenance.ASIDE_PREFIX}5e6f-{stored.name}"), 10, timedelta(days=400))

    assert maintenance.purge_media(tmp_path, retention_days=0) == 0

    assert [entry.name for entry in stored.parent.iterdir()] == [stored.name]
