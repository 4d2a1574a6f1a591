"""Per-process and per-task wiring: our logging in every worker, task ids bound to every log line, and
what a task that gives up for good leaves behind.

A task fails for good on an unexpected error or once its retries are spent (workers/__init__.py,
``OUTAGE_RETRIES``; a ``flows.step`` also once its waits for its conversation's lock are, workers/flows.py);
Celery then acknowledges its message, so it is gone. A handler stage's task
(:class:`workers.ordering.StageTask`: verify, commands, flows, ai, persist) and a webhook event's task
(``inbound.route``, ``status.apply``) are kept as a dead letter, which ``wapipe dlq replay`` publishes again
with the same kwargs. A handler's sender is also told, once, to try again (``shared.replies.apologise``):
not when the message has its reply already, and under a key of its own, so a replayed handler still
stores and sends its real reply under ``reply:<id>``, and gives no second apology if it gives up again.
The handler's turn in its conversation is released first, as before (``StageTask.on_failure``).
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from celery import Task, signals

from shared import replies
from shared.db import dead_letters
from shared.db.pool import transaction
from shared.logging import configure_logging, get_logger, redact_verify_codes, scrub
from shared.settings import get_settings
from workers.ordering import StageTask, message_id_of

log = get_logger(__name__)

APOLOGY = replies.APOLOGY  # what the sender of a message its handler gave up on is told


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


@signals.worker_process_init.connect
@signals.worker_ready.connect
def freeze_startup_heap(**_: Any) -> None:
    """Move every object alive once the worker is up (modules, settings, templates: ~140,000, nearly all
    kept for the process's life) out of the garbage collector's sight.

    A full collection walks them all: ~70 ms on these machines, a pause of every thread of the process,
    that a notify batch pays in late sends and a burst after it. Frozen, they are never walked again;
    what tasks allocate is collected as before. Prefork children freeze after the fork
    (``worker_process_init``), a thread pool's process once it is ready (``worker_ready``).
    https://docs.python.org/3/library/gc.html#gc.freeze
    """
    gc.freeze()


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


@signals.task_failure.connect
def _record_give_up(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    # Sent after the task's own on_failure (celery/app/trace.py), so a handler's turn is already released.
    handler = isinstance(sender, StageTask)
    if sender is None or not (handler or getattr(sender, "dead_letter_on_failure", False)):
        return  # Celery's own tasks, notify's (it files its own letters), beat's
    record_give_up(sender, task_id, exception, args or (), kwargs or {}, apologise=handler)


def record_give_up(
    task: Task,
    task_id: str | None,
    exc: BaseException | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    apologise: bool,
) -> None:
    """Keep a task that failed for good as a dead letter and, with ``apologise``, tell its message's
    sender to try again. Never raises: the database may be what failed, and the worker must go on."""
    message_id = message_id_of(args, kwargs)
    error_type = type(exc).__name__
    ids = {"task": task.name, "task_id": task_id, "message_id": message_id, "error_type": error_type}
    try:
        with transaction() as conn:
            letter = dead_letters.add(
                conn,
                task_name=task.name,
                message_id=message_id,
                # What a replay publishes: a VERIFY's code redacted (codes are stored hashed only). A
                # route replayed without it stores the message as a VERIFY no more, so its sender is
                # asked for the code again; one it stored before giving up keeps the code until checked.
                payload=redact_verify_codes(_kwargs_of(task, args, kwargs)),
                # The operator reads this in `wapipe dlq list`: no phone number or secret in it.
                error=scrub(f"{error_type}: {exc}"),
                attempts=(task.request.retries or 0) + 1,
            )
    except Exception as failure:  # most likely the outage that made the task give up
        log.error("task gave up; its dead letter could not be stored", **ids, cause=type(failure).__name__)
    else:
        log.error("task gave up; kept as a dead letter", **ids, dead_letter_id=letter.id)
    if not apologise or message_id is None:
        return
    try:
        replies.apologise(message_id)
    except Exception as failure:  # as above; a reply stored but not published is sent by notify.sweep
        log.error("could not queue the apology of a task that gave up", **ids, cause=type(failure).__name__)


def _kwargs_of(task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The task's arguments as kwargs, which is how a replay publishes them (shared/commands/dlq.py).
    Our jobs carry kwargs only (shared.queues.Job); positional ones are named from the task's signature."""
    if not args:
        return dict(kwargs)
    try:
        return dict(inspect.signature(task.run).bind_partial(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return dict(kwargs)
