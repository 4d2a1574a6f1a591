"""Queue ``flows``: menu flows (``WAPIPE_MODE=menu``), one step per inbound message.

The work is :func:`shared.flows.service.step`; its docstring explains how messages of one conversation
are answered in the order they were sent, exactly once, by any number of ``flows`` worker processes. A
step that finds the conversation's lock held retries after a short countdown instead of blocking a worker.

The flow pack (``WAPIPE_FLOWS``) is validated when this module is imported in menu mode, so a worker
with a broken pack fails at start with the pack's line, not at the first message.
"""

from __future__ import annotations

import math
import random
from typing import Any

from shared.db.errors import NotFound
from shared.flows.pack import get_pack
from shared.flows.service import LOCK_SECONDS, MAX_HOLD_SECONDS, Busy, step
from shared.logging import get_logger
from shared.settings import Mode, get_settings
from workers import OUTAGE_RETRIES, celery
from workers.ordering import StageTask, in_turn

log = get_logger(__name__)

BUSY_COUNTDOWN_MAX = 1.0
# Enough retries, at the shortest countdown below (half the longest, jittered), to outlast the longest a
# live holder keeps the conversation's lock: renewed while its step runs, up to service.MAX_HOLD_SECONDS
# (the task's time limit), then lapsing a lease (service.LOCK_SECONDS) later if its worker died.
BUSY_RETRIES = math.ceil((MAX_HOLD_SECONDS + LOCK_SECONDS) / (BUSY_COUNTDOWN_MAX / 2)) + 10

if get_settings().mode is Mode.menu or get_settings().flows:
    get_pack()


@celery.task(
    name="flows.step",
    bind=True,
    acks_late=True,
    ignore_result=True,
    # PostgreSQL or Redis briefly unreachable: try again later rather than drop the answer.
    **(OUTAGE_RETRIES | {"max_retries": BUSY_RETRIES, "retry_backoff_max": 120}),
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
        # Short, jittered: the holder usually needs milliseconds; jitter keeps waiting tasks from colliding.
        backoff = min(BUSY_COUNTDOWN_MAX, 0.05 * 2 ** min(self.request.retries, 5))
        countdown = backoff * random.uniform(0.5, 1)  # noqa: S311 (jitter, not a secret)
        raise self.retry(countdown=countdown, max_retries=BUSY_RETRIES) from None
