"""The Celery app: ``celery -A workers worker -Q notify`` (or ``wapipe worker -Q notify``).

One module per stage, named like its queue. Importing this package reads the settings (so a bad one fails
at start, naming the variable) but connects to nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
import redis
from celery import Celery

from shared.db.errors import Unavailable
from shared.queues import (
    OUTAGE_BACKOFF_MAX_SECONDS,
    OUTAGE_BACKOFF_SECONDS,
    OUTAGE_MAX_RETRIES,
    celery_config,
)
from shared.settings import SettingsError, get_settings
from workers.base import WapipeTask
from workers.ordering import StageTask, in_turn


def _missing(variable: str) -> str:
    raise SettingsError(f"{variable} is not set (and no running `wapipe up` found through WAPIPE_DATA_DIR)")


# Every task, the stages' and beat's alike: a retry that cannot be published puts the message back.
celery = Celery("wapipe", task_cls=WapipeTask)
# No broker URL is a configuration error for a worker; `wapipe worker` fills it in from a running
# `wapipe up`'s data folder first (shared/embedded/), so only a bare `celery -A workers` can get here.
celery.config_from_object(celery_config(get_settings().redis_url or _missing("WAPIPE_REDIS_URL")))

STAGE_MODULES = (
    "workers.signals",
    "workers.inbound",
    "workers.notify",
    "workers.status",
    "workers.maintenance",
    "workers.verify",
    "workers.commands",
    "workers.flows",
    "workers.ai",
    "workers.persist",
    "workers.media",
)
celery.conf.imports = STAGE_MODULES


# Retries while PostgreSQL or Redis is unreachable (a failover, a restart), for the webhook events and the
# handler stages alike: countdowns of 2, 4, 8 ... s, capped at 300 s, each drawn at random below its cap
# (full jitter), so 20 retries last up to about 68 minutes, 34 expected. An outage of a few minutes must
# delay a provider's event or a reply, never drop it; the task that gives up after that is a dead letter
# (workers/signals.py). The numbers are shared/queues.py's: a message's turn outlasts these retries.
OUTAGE_RETRIES: dict[str, Any] = {
    "autoretry_for": (Unavailable, psycopg.OperationalError, redis.RedisError),
    "retry_backoff": OUTAGE_BACKOFF_SECONDS,
    "retry_backoff_max": OUTAGE_BACKOFF_MAX_SECONDS,
    "retry_jitter": True,
    "max_retries": OUTAGE_MAX_RETRIES,
}


def event_task(name: str, **options: Any) -> Any:
    """Register a task that takes a canonical webhook event (``inbound.route``, ``status.apply``): acked
    late, no result, retried through outages (:data:`OUTAGE_RETRIES`), and kept as a dead letter when it
    gives up for good: the provider's event was acknowledged, so it must not vanish. ``options``: more
    task options (a ``base`` class)."""
    return celery.task(
        name=name,
        bind=True,
        acks_late=True,
        ignore_result=True,
        dead_letter_on_failure=True,
        **OUTAGE_RETRIES,
        **options,
    )


def stage_task(name: str, *, ordered: bool = True, **options: Any) -> Any:
    """Register a handler stage's task: named ``<queue>.<verb>``, acknowledged only once it has run (a
    killed worker's task is redelivered), no result stored, retried while PostgreSQL or Redis (where replies
    are enqueued and sessions live) is unreachable (:data:`OUTAGE_RETRIES`). ``options`` override any of
    these. A task that gives up for good is kept as a dead letter and its sender told to try again
    (workers/signals.py).

    The task's first argument is an inbound message id, and it runs only on that message's turn in its
    conversation (workers/ordering.py): earlier messages are answered first. ``ordered=False`` is for a
    later hop of a handler whose message already had its turn (persist.save_proposal), or a stage that
    takes its turn itself from a read it makes anyway (commands.handle). Either way a task that fails for
    good releases its message's turn.
    """
    settings: dict[str, Any] = {
        "name": name,
        "bind": True,
        "acks_late": True,
        "ignore_result": True,
        **OUTAGE_RETRIES,
        "base": StageTask,
    }
    register = celery.task(**(settings | options))
    if not ordered:
        return register
    return lambda run: register(in_turn(run))


app = celery
