"""``status.apply``: a delivery receipt moves its message's status forward, never back.

``queued < sent < delivered < read``; ``failed`` and ``undelivered`` are final and keep the provider's
error code. Every receipt is appended to the message's timeline (``message_events``) whatever its order,
so a ``read`` that overtook ``delivered`` leaves the status at ``read`` and both in the timeline.

A receipt can arrive before our own row knows the provider's id (the provider answers the send, the
callback races our UPDATE): an unknown id is retried a few times with a growing countdown, then logged and
dropped, since receipts for messages we never sent (another system on the same number) are normal too.
Those looks are counted in a header of their own (:data:`UNKNOWN_ID_RETRIES_HEADER`) and republished
without Celery's ``retries`` (:meth:`workers.base.WapipeTask.again`), which bounds the same task's retries
through a database or Redis outage (``OUTAGE_RETRIES``): sharing it, a receipt after a long outage would get
fewer looks, or fail for good at the outage's ``max_retries``, and its message's status would never move.
"""

from __future__ import annotations

from typing import Any

from shared.db import messages, sending
from shared.db.pool import autocommit_connection
from shared.logging import get_logger
from shared.wire.events import StatusUpdate
from workers import event_task

log = get_logger(__name__)

# 2 + 4 + 8 + 16 + 32 s: about a minute for our own row to record the provider id.
UNKNOWN_MESSAGE_RETRIES = 5
# How many times this receipt has looked again for its provider id; Celery's retry keeps custom headers.
UNKNOWN_ID_RETRIES_HEADER = "wapipe_unknown_id_retries"


def apply(event: dict[str, Any]) -> messages.StatusApplied | None:
    """Apply the receipt; None when no message has its provider id."""
    update = StatusUpdate.model_validate(event)
    with autocommit_connection() as conn:  # one statement: find, move forward, append to the timeline
        return sending.apply_status(
            conn,
            provider=update.provider.value,
            provider_message_id=update.provider_message_id,
            status=update.status,
            error_code=update.error_code,
            error_message=update.error_message,
            at=update.at,
            our_message_id=update.our_message_id,
        )


@event_task("status.apply")
def apply_task(self: Any, event: dict[str, Any]) -> None:
    applied = apply(event)
    if applied is not None:
        if applied.adopted:
            # A send we had failed as outcome unknown (or still had in flight): the provider has it.
            log.warning(
                "status settled a send whose outcome was unknown",
                message_id=applied.message_id,
                status=event.get("status"),
            )
        log.info(
            "status applied",
            message_id=applied.message_id,
            status=event.get("status"),
            changed=applied.changed,
        )
        return
    looked = unknown_id_retries(self.request)
    if looked < UNKNOWN_MESSAGE_RETRIES:
        log.info("status for an unknown provider id; looking again", looked=looked)
        # Republished with its retry count kept: a look is not an outage retry (see the module docstring).
        raise self.again(2 ** (looked + 1), {UNKNOWN_ID_RETRIES_HEADER: looked + 1})
    log.warning(
        "status for an unknown message dropped", provider=event.get("provider"), status=event.get("status")
    )


def unknown_id_retries(request: Any) -> int:
    """How many times the running receipt's task has been retried for an unknown provider id (its outage
    retries not counted)."""
    return int((request.headers or {}).get(UNKNOWN_ID_RETRIES_HEADER) or 0)
