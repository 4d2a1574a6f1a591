"""Queue ``flows``: menu flows (``WAPIPE_MODE=menu``), one step per inbound message.

The work is :func:`shared.flows.service.step`; its docstring explains how messages of one conversation
are answered in the order they were sent, exactly once, by any number of ``flows`` worker processes. A
step that finds the conversation's lock held (:class:`~shared.flows.service.Busy`) runs again after a short
countdown instead of blocking a worker, up to :data:`BUSY_RETRIES` times.

Those waits are counted apart from the retries through a PostgreSQL or Redis outage, in a header of their
own (:data:`BUSY_WAITS_HEADER`), and never as Celery's ``retries``: that count bounds and spaces the outage
retries (the standard ``OUTAGE_RETRIES``, as every stage's), and what waits for a retrying step, the later
messages of its conversation, only waits as long as those can last (shared/db/turns.py ``HORIZON``). Counted
together, a step that had waited for the lock a hundred times would meet an outage with its backoff already
at the cap, and one whose bound was the lock's would retry through an outage for hours, long after the
messages behind it had judged it dead and answered first; outage retries would shorten its waits too.

The flow pack (``WAPIPE_FLOWS``) is validated when this module is imported in menu mode, so a worker
with a broken pack fails at start with the pack's line, not at the first message.
"""

from __future__ import annotations

import math
import random
from typing import Any

from celery.exceptions import Retry

from shared.db.errors import NotFound
from shared.flows.pack import get_pack
from shared.flows.service import LOCK_SECONDS, MAX_HOLD_SECONDS, Busy, step
from shared.logging import get_logger
from shared.settings import Mode, get_settings
from workers import OUTAGE_RETRIES, celery
from workers.ordering import StageTask, in_turn

log = get_logger(__name__)

BUSY_COUNTDOWN_FIRST = 0.05
BUSY_COUNTDOWN_MAX = 1.0
# Enough waits, at the shortest countdown below (half the longest, jittered), to outlast the longest a
# live holder keeps the conversation's lock: renewed while its step runs, up to service.MAX_HOLD_SECONDS
# (the task's time limit), then lapsing a lease (service.LOCK_SECONDS) later if its worker died. Its
# outage retries are not among them (OUTAGE_RETRIES, counted by Celery).
BUSY_RETRIES = math.ceil((MAX_HOLD_SECONDS + LOCK_SECONDS) / (BUSY_COUNTDOWN_MAX / 2)) + 10
# How many times this step has waited for its conversation's lock; Celery's retry keeps custom headers,
# and so do the waits for its turn (workers/ordering.py).
BUSY_WAITS_HEADER = "wapipe_busy_waits"

if get_settings().mode is Mode.menu or get_settings().flows:
    get_pack()


@celery.task(
    name="flows.step",
    bind=True,
    acks_late=True,
    ignore_result=True,
    # PostgreSQL or Redis briefly unreachable: try again later rather than drop the answer, on the schedule
    # and within the budget of every stage, which the messages waiting for this one count on.
    **OUTAGE_RETRIES,
    # Its turn in the conversation first (workers/ordering.py), against other stages' messages (a VERIFY):
    # the lock and drain in shared/flows/service.py order the flow's own. Taken before the lock.
    base=StageTask,
    orders_own_messages=True,
)
@in_turn
def step_task(self: Any, message_id: int) -> None:
    try:
        step(message_id)
    except NotFound:
        log.warning("flows.step for an unknown message", message_id=message_id)
    except Busy:
        raise wait_for_lock(self) from None


def wait_for_lock(task: StageTask) -> Retry:
    """The ``Retry`` that runs the step again shortly, another worker holding its conversation's lock;
    raises ``MaxRetriesExceededError`` once it has waited :data:`BUSY_RETRIES` times (the task then fails
    for good: a dead letter, its sender told, workers/signals.py). Its retry count is left to outages."""
    waits = busy_waits(task.request)
    if waits >= BUSY_RETRIES:
        raise task.MaxRetriesExceededError(
            f"{task.name}[{task.request.id}]: its conversation's lock was held through {waits} waits",
            task_args=task.request.args,
            task_kwargs=task.request.kwargs,
        )
    # Short, jittered: the holder usually needs milliseconds; jitter keeps waiting tasks from colliding.
    backoff = min(BUSY_COUNTDOWN_MAX, BUSY_COUNTDOWN_FIRST * 2 ** min(waits, 5))
    countdown = backoff * random.uniform(0.5, 1)  # noqa: S311 (jitter, not a secret)
    return task.again(countdown, {BUSY_WAITS_HEADER: waits + 1})


def busy_waits(request: Any) -> int:
    """How many times the running step has waited for its conversation's lock (its outage retries not
    counted)."""
    return int((request.headers or {}).get(BUSY_WAITS_HEADER) or 0)
