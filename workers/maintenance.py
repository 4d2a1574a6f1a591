"""Stage ``maintenance``: housekeeping run by Celery beat (``celery -A workers beat``).

- close conversations idle longer than ``WAPIPE_CONVERSATION_IDLE_MINUTES`` (default 24 h, WhatsApp's
  customer-service window), so the next message starts a fresh conversation and stats stay honest; not
  one with a message whose handler may still answer it (retrying through an outage, shared/db/turns.py
  HORIZON), which would leave its user without an answer;
- release the turns still held, past shared/db/turns.py HORIZON, by inbound messages whose handler task was
  lost without failing (so nothing released them): they would stay in the turn index for ever, read by
  every later message's turn check in their conversation;
- purge verification codes past their expiry;
- delete raw webhook events older than ``WAPIPE_WEBHOOK_RETENTION_DAYS`` (default 30);
- report dead letters waiting for an operator (a warning with the count and the oldest one's age);
- remove the temporary files of media downloads whose worker was killed mid-download (``.part-*`` in
  ``WAPIPE_MEDIA_DIR``), which nothing else ever removes;
- delete stored media files not stored again for ``WAPIPE_MEDIA_RETENTION_DAYS`` (default 30, as raw webhook
  events; 0 keeps them for good), judged by the file's mtime: a file is content-addressed and may be several
  messages', and each store writes it anew (workers/media.py), so a recent message's file is never old. A
  file is renamed aside before it is deleted, so a store landing meanwhile keeps its file.

Every job is a plain function (what the tests call) that is idempotent: a second run finds nothing left to
do. Jobs that delete or update many rows work in batches, each its own short transaction. The schedule is
applied to the Celery app when this module is imported, which beat does through ``STAGE_MODULES``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from shared.db import links
from shared.db import maintenance as queries
from shared.db.pool import transaction
from shared.logging import get_logger
from shared.settings import get_settings
from workers import celery
from workers.media import PART_PREFIX

log = get_logger(__name__)

BATCH_SIZE = 1000
# How long one run keeps taking batches: a backlog left then is finished by the next runs. A time budget, not
# a count of batches: a fixed count (it was 100 x 1000 rows an hour) falls behind for good once the rows to
# delete come faster (webhook events above ~28/s), however quick each batch is. Well under the task's time
# limit (shared/queues.py TASK_TIME_LIMIT_SECONDS, 300 s), so a run always ends on its own.
RUN_BUDGET_SECONDS = 60.0
# A download writes its .part file as the bytes arrive, then renames or removes it. No download goes on
# longer than the task's hard time limit (shared/queues.py TASK_TIME_LIMIT_SECONDS, 300 s; workers/media.py
# gives one file DOWNLOAD_SECONDS plus a read's timeout), so a .part file unwritten for an hour is no live
# download's. The margin also covers the clocks of machines sharing a network folder disagreeing by minutes.
STALE_DOWNLOAD_AGE = timedelta(hours=1)
# purge_media renames a stored file to ``<prefix><random>-<its name>`` beside it before deleting it: a name
# workers/media.py never stores to, so nothing replaces the file there.
ASIDE_PREFIX = ".purging-"

BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "close-idle-conversations": {
        "task": "maintenance.close_idle_conversations",
        "schedule": timedelta(minutes=5),
    },
    "release-lost-turns": {"task": "maintenance.release_lost_turns", "schedule": timedelta(minutes=15)},
    "purge-expired-codes": {"task": "maintenance.purge_expired_codes", "schedule": timedelta(minutes=15)},
    "purge-webhook-events": {"task": "maintenance.purge_webhook_events", "schedule": timedelta(hours=1)},
    "report-dead-letters": {"task": "maintenance.report_dead_letters", "schedule": timedelta(minutes=15)},
    "remove-stale-downloads": {
        "task": "maintenance.remove_stale_downloads",
        "schedule": timedelta(hours=1),
    },
    "purge-media": {"task": "maintenance.purge_media", "schedule": timedelta(hours=1)},
    # Fails sends left 'sending' by a dead worker and re-enqueues queued messages whose job was lost.
    "sweep-outbound": {"task": "notify.sweep", "schedule": timedelta(minutes=1)},
}
celery.conf.beat_schedule = BEAT_SCHEDULE


def _in_batches(step: Any) -> tuple[int, bool]:
    """Run ``step(conn) -> rows changed`` in short transactions until a batch comes back short (done) or
    the run's time budget is spent; return the rows changed and whether it got done."""
    total = 0
    deadline = time.monotonic() + RUN_BUDGET_SECONDS
    while True:
        with transaction() as conn:
            changed = step(conn)
        total += changed
        if changed < BATCH_SIZE:
            return total, True
        if time.monotonic() >= deadline:
            return total, False


def close_idle_conversations(idle_minutes: int | None = None) -> int:
    """Close every live conversation without a message for ``idle_minutes``; return how many closed."""
    minutes = idle_minutes or get_settings().conversation_idle_minutes
    closed, done = _in_batches(lambda conn: queries.close_idle_conversations(conn, minutes, BATCH_SIZE))
    log.info("idle conversations closed", closed=closed, idle_minutes=minutes)
    if not done:
        log.warning("idle conversations left for the next run", budget_seconds=RUN_BUDGET_SECONDS)
    return closed


def release_lost_turns() -> int:
    """Release the turns of inbound messages dispatched longer than turns.HORIZON ago and never answered
    (their handler task was lost); return how many."""
    released, done = _in_batches(lambda conn: queries.release_lost_turns(conn, BATCH_SIZE))
    if released:
        # A count only (no ids, no phones): a lost handler is worth a look, its messages are not logged.
        log.warning("lost turns released", released=released)
    else:
        log.info("lost turns released", released=released)
    if not done:
        log.warning("lost turns left for the next run", budget_seconds=RUN_BUDGET_SECONDS)
    return released


def purge_expired_codes() -> int:
    """Delete verification codes past their expiry (after the verify stage's short grace period)."""
    with transaction() as conn:
        purged = links.delete_expired_codes(conn)
    log.info("expired verification codes purged", purged=purged)
    return purged


def purge_webhook_events(retention_days: int | None = None) -> int:
    """Delete raw webhook events older than the retention, in batches; return how many."""
    days = retention_days or get_settings().webhook_retention_days
    purged, done = _in_batches(lambda conn: queries.purge_webhook_events(conn, days, BATCH_SIZE))
    log.info("old webhook events purged", purged=purged, retention_days=days)
    if not done:
        with transaction() as conn:
            left = queries.count_expired_webhook_events(conn, days)
        log.warning(
            "old webhook events left for the next run",
            left=left,
            retention_days=days,
            budget_seconds=RUN_BUDGET_SECONDS,
        )
    return purged


def report_dead_letters() -> queries.DeadLetterSummary:
    """Warn when dead letters wait for an operator (``wapipe dlq list``); return the count and age."""
    with transaction() as conn:
        summary = queries.pending_dead_letters(conn)
    if summary.count:
        log.warning(
            "dead letters waiting for replay",
            count=summary.count,
            oldest_age_seconds=round(summary.oldest_age_seconds or 0),
            hint="wapipe dlq list",
        )
    return summary


def remove_stale_downloads(folder: Path | None = None, max_age: timedelta = STALE_DOWNLOAD_AGE) -> int:
    """Remove the media downloads' temporary files in ``folder`` (``WAPIPE_MEDIA_DIR``) not written for
    ``max_age``: left by workers killed mid-download, they would fill the disk over the months. Return how
    many were removed."""
    folder = folder or get_settings().media_path
    cutoff = time.time() - max_age.total_seconds()
    removed = freed = 0
    for path, size in _stale_downloads(folder, cutoff):
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # removed meanwhile, by another run
        removed += 1
        freed += size
    log.info("stale media downloads removed", removed=removed, freed_bytes=freed)
    return removed


def _stale_downloads(folder: Path, cutoff: float) -> Iterator[tuple[Path, int]]:
    """Each .part file directly in ``folder`` (where workers/media.py makes them) last written before
    ``cutoff``, with its size."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return  # no media downloaded yet
    for entry in entries:
        if not entry.name.startswith(PART_PREFIX):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # renamed into place or removed since the listing
        if stat.st_mtime < cutoff:
            yield Path(entry.path), stat.st_size


def purge_media(folder: Path | None = None, retention_days: int | None = None) -> int:
    """Delete the stored media files in ``folder`` (``WAPIPE_MEDIA_DIR``) last stored more than
    ``retention_days`` (``WAPIPE_MEDIA_RETENTION_DAYS``) ago; return how many. The messages keep their
    record of the file (its size and digest) and what the provider sent. A retention of 0 keeps every file."""
    folder = folder or get_settings().media_path
    days = get_settings().media_retention_days if retention_days is None else retention_days
    # With 0 no file is old, and each a killed run left aside is put back, not forgotten there.
    cutoff = time.time() - timedelta(days=days).total_seconds() if days else float("-inf")
    deadline = time.monotonic() + RUN_BUDGET_SECONDS
    deleted = freed = 0
    done = True
    for path, aside in _stored_media(folder):
        if time.monotonic() >= deadline:
            done = False
            break
        if aside is None:
            try:
                if path.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                # A message storing the same bytes may replace the file at any moment (os.replace in
                # workers/media.py), also between that read and an unlink of the name, which would then
                # delete the file just stored for it. Renamed aside, the file can no longer be replaced: its
                # age, read again, is the age of what is deleted.
                aside = path.with_name(f"{ASIDE_PREFIX}{secrets.token_hex(8)}-{path.name}")
                path.rename(aside)
            except FileNotFoundError:
                continue  # deleted meanwhile, by another run
        size = _settle(aside, path, cutoff)
        if size is not None:
            deleted += 1
            freed += size
    log.info("old media deleted", deleted=deleted, freed_bytes=freed, retention_days=days)
    if not done:
        log.warning("old media left for the next run", budget_seconds=RUN_BUDGET_SECONDS)
    return deleted


def _settle(aside: Path, path: Path, cutoff: float) -> int | None:
    """Delete ``aside``, the stored file ``path`` renamed aside, if it was last stored before ``cutoff``
    and return its size; else (stored again before it was renamed) put it back."""
    try:
        stat = aside.stat(follow_symlinks=False)
        if stat.st_mtime < cutoff:
            aside.unlink()
            return stat.st_size
        # Whatever was stored at ``path`` since has the same bytes (the name is their digest) and is as
        # recent, so replacing it loses nothing.
        os.replace(aside, path)
    except FileNotFoundError:
        pass  # settled meanwhile, by another run
    return None


def _stored_media(folder: Path) -> Iterator[tuple[Path, Path | None]]:
    """Each stored file of ``folder``: ``<sha256[:2]>/<sha256><ext>`` as workers/media.py names them, with
    None; and each a purge renamed aside and left there (its worker killed), as its stored path and where
    it is."""
    try:
        shards = [entry for entry in os.scandir(folder) if _is_shard(entry)]
    except FileNotFoundError:
        return  # no media downloaded yet
    for shard in shards:
        try:
            entries = list(os.scandir(shard.path))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.startswith(shard.name):
                yield Path(entry.path), None
            elif entry.name.startswith(ASIDE_PREFIX):
                stored_name = entry.name.removeprefix(ASIDE_PREFIX).partition("-")[2]
                yield Path(shard.path, stored_name), Path(entry.path)


def _is_shard(entry: os.DirEntry[str]) -> bool:
    name = entry.name
    return (
        len(name) == 2 and all(c in "0123456789abcdef" for c in name) and entry.is_dir(follow_symlinks=False)
    )


@celery.task(name="maintenance.close_idle_conversations", bind=True, acks_late=True, ignore_result=True)
def close_idle_conversations_task(self: Any) -> None:
    close_idle_conversations()


@celery.task(name="maintenance.release_lost_turns", bind=True, acks_late=True, ignore_result=True)
def release_lost_turns_task(self: Any) -> None:
    release_lost_turns()


@celery.task(name="maintenance.purge_expired_codes", bind=True, acks_late=True, ignore_result=True)
def purge_expired_codes_task(self: Any) -> None:
    purge_expired_codes()


@celery.task(name="maintenance.purge_webhook_events", bind=True, acks_late=True, ignore_result=True)
def purge_webhook_events_task(self: Any) -> None:
    purge_webhook_events()


@celery.task(name="maintenance.report_dead_letters", bind=True, acks_late=True, ignore_result=True)
def report_dead_letters_task(self: Any) -> None:
    report_dead_letters()


@celery.task(name="maintenance.remove_stale_downloads", bind=True, acks_late=True, ignore_result=True)
def remove_stale_downloads_task(self: Any) -> None:
    remove_stale_downloads()


@celery.task(name="maintenance.purge_media", bind=True, acks_late=True, ignore_result=True)
def purge_media_task(self: Any) -> None:
    purge_media()
