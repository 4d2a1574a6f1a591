"""Per-process and per-task wiring: our logging in every worker, task ids bound to every log line."""

from __future__ import annotations

from typing import Any

import structlog
from celery import signals

from shared.logging import configure_logging
from shared.settings import get_settings


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting this signal stops Celery from installing its own handlers; ours mask phones and secrets.
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@signals.worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    # A forked child must not reuse the parent's sockets; pools are made again on first use.
    from shared.db.pool import close_pool

    close_pool()


@signals.task_prerun.connect
def _bind_task(
    task_id: str | None = None, task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any
) -> None:
    structlog.contextvars.clear_contextvars()
    bound: dict[str, Any] = {"task_id": task_id, "task": getattr(task, "name", None)}
    for key in ("message_id", "conversation_id"):
        if kwargs and key in kwargs:
            bound[key] = kwargs[key]
    structlog.contextvars.bind_contextvars(**bound)


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()
