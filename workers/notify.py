"""``notify.send``: send one stored outbound message through the configured provider, once.

Load the message; return at once unless it is ``queued`` (already sent, failed, or being sent); refuse
opted-out contacts; take the pacing slots (per recipient, then the sender number's token bucket); claim
it (``queued -> sending``, one attempt more); make the provider call; record ``sent`` with the provider's
id. Transient errors go back to ``queued`` and the task retries later with exponential backoff and
jitter; after ``WAPIPE_SEND_MAX_ATTEMPTS`` the message fails and becomes a dead letter. Permanent errors
fail at once with the provider's code and message.

Sending twice is the harm we guard hardest against (a doubled WhatsApp message cannot be recalled), so
delivery toward the provider is at-most-once when the outcome is unknown:

- Two deliveries of the task at once: only one UPDATE moves the row out of ``queued``; the other finds
  it ``sending`` and retries after the lease, by when the first has recorded its outcome.
- A worker killed during the provider call (or unable to record its result) leaves the row
  ``sending``. Neither Twilio nor Meta accepts an idempotency key on send, so we cannot ask whether it
  went out. Once the lease (far longer than the call's whole retry budget) has passed, the redelivered
  task marks it failed with ``outcome_unknown`` and files a dead letter: an operator checks the
  provider's log and replays it with ``wapipe dlq replay`` if it was really lost. Resending blindly
  would risk a duplicate on every crash; this risks a late message only on a crash mid-call.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Any

import psycopg
import redis
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from shared.db import dead_letters, messages
from shared.db.errors import NotFound, Unavailable
from shared.db.pool import transaction
from shared.logging import get_logger
from shared.policy import check_window
from shared.providers import get_sender
from shared.providers.base import OutboundMessage, Sender, SendError
from shared.queues import MAX_COUNTDOWN_SECONDS, get_publisher
from shared.ratelimit import RateLimiter
from shared.settings import Settings, get_settings
from workers import celery

log = get_logger(__name__)

TASK = "notify.send"
# Longer than a provider call can take with its in-call retries (see providers/twilio/client.py), so a
# row still 'sending' after this long was left by a worker that died.
SEND_LEASE_SECONDS = 120


class RetryLater(Exception):
    """Try the task again in ``countdown`` seconds (pacing, transient provider error, send in flight)."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(f"retry in {countdown:.1f}s: {reason}")
        self.countdown = countdown
        self.reason = reason


def backoff_seconds(attempt: int, base: float, retry_after: float | None = None) -> float:
    """Exponential backoff with equal jitter, capped by the broker's limit; never before Retry-After."""
    ceiling = min(float(MAX_COUNTDOWN_SECONDS), base * 2 ** max(0, attempt - 1))
    countdown = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security
    return min(float(MAX_COUNTDOWN_SECONDS), max(countdown, retry_after or 0.0))


def send(message_id: int, *, settings: Settings | None = None, sender: Sender | None = None) -> str:
    """Send the outbound message; return what happened (sent, failed, dead, skipped, missing).

    Raises :class:`RetryLater` when it should be tried again later.
    """
    settings = settings or get_settings()
    try:
        with transaction() as conn:
            record = messages.get_outbound(conn, message_id)
    except NotFound:
        log.warning("outbound message not found", message_id=message_id)
        return "missing"
    if record.status == messages.SENDING:
        return _in_flight(message_id, record.attempts)
    if record.status != "queued":
        log.info("outbound message already handled", message_id=message_id, status=record.status)
        return "skipped"
    if not record.phone:
        return _fail(message_id, "no_recipient", "the contact has no phone number to send to")
    if record.opted_out and not record.bypass_opt_out:
        return _fail(message_id, "opted_out", "the recipient opted out (STOP); send START to opt back in")

    sender = sender or _process_sender(settings)
    # WhatsApp's 24-hour window (shared/policy.py): a free-form message it would refuse fails here, final.
    refusal = check_window(
        provider=sender.name, message_type=record.type, last_inbound_at=record.last_inbound_at
    )
    if refusal is not None:
        return _fail(message_id, refusal.code, refusal.message)
    from_number = record.business_number if record.conversation_provider == sender.name else None
    wait = RateLimiter(get_publisher().redis).acquire_send_slot(
        sender=from_number or _default_sender(settings, sender.name),
        rate_per_second=settings.send_rate,
        recipient=record.phone,
        message_id=message_id,
        recipient_per_minute=settings.recipient_rate_per_minute,
    )
    if wait > 0:
        raise RetryLater(wait + random.uniform(0, 0.5), "pacing")  # noqa: S311

    with transaction() as conn:
        claimed = messages.claim_for_sending(conn, message_id)
    if claimed is None:
        return "skipped"  # another delivery of this task got there first
    message = OutboundMessage.from_record(
        id=claimed.id,
        to=record.phone,
        type=claimed.type,
        body=claimed.body,
        payload=claimed.payload,
        from_number=from_number,
    )
    try:
        result = sender.send(message)
    except SendError as error:
        return _after_error(message_id, claimed.attempts, error, settings)
    except Exception:
        # A failure of our own code, not an answer from the provider: treat it as transient.
        log.exception("unexpected error while sending", message_id=message_id)
        return _after_error(
            message_id,
            claimed.attempts,
            SendError("internal_error", "unexpected error", permanent=False),
            settings,
        )
    _record_sent(message_id, result.provider, result.provider_message_id)
    log.info("message sent", message_id=message_id, provider=result.provider, attempts=claimed.attempts)
    return "sent"


def _in_flight(message_id: int, attempts: int) -> str:
    with transaction() as conn:
        age = messages.seconds_since_update(conn, message_id)
    if age < SEND_LEASE_SECONDS:
        raise RetryLater(SEND_LEASE_SECONDS - age + 1, "another delivery is sending it")
    error = SendError(
        "outcome_unknown",
        "a worker stopped during the provider call; check the provider's log before replaying",
        permanent=True,
    )
    with transaction() as conn:
        if messages.mark_failed(conn, message_id, error.code, error.message):
            dead_letters.add(
                conn,
                task_name=TASK,
                message_id=message_id,
                payload={"message_id": message_id},
                error=str(error),
                attempts=attempts,
            )
    log.error("send outcome unknown; dead-lettered", message_id=message_id)
    return "dead"


def _after_error(message_id: int, attempts: int, error: SendError, settings: Settings) -> str:
    if error.permanent:
        log.warning("send failed permanently", message_id=message_id, code=error.code)
        return _fail(message_id, error.code, error.message)
    if attempts >= settings.send_max_attempts:
        with transaction() as conn:
            if messages.mark_failed(conn, message_id, error.code, error.message):
                dead_letters.add(
                    conn,
                    task_name=TASK,
                    message_id=message_id,
                    payload={"message_id": message_id},
                    error=str(error),
                    attempts=attempts,
                )
        log.error("send retries exhausted; dead-lettered", message_id=message_id, code=error.code)
        return "dead"
    with transaction() as conn:
        messages.release_for_retry(conn, message_id, error.code, error.message)
    countdown = backoff_seconds(attempts, settings.send_retry_base_seconds, error.retry_after)
    log.warning(
        "send failed, will retry", message_id=message_id, code=error.code, countdown=round(countdown, 1)
    )
    raise RetryLater(countdown, error.code)


def _fail(message_id: int, code: str, text: str) -> str:
    with transaction() as conn:
        messages.mark_failed(conn, message_id, code, text)
    return "failed"


# The provider has the message: recording that must not be lost to a brief database hiccup, or the row
# would stay 'sending' and end as "outcome unknown".
@retry(
    retry=retry_if_exception_type(Unavailable),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.5, max=5),
    reraise=True,
)
def _record_sent(message_id: int, provider: str, provider_message_id: str) -> None:
    with transaction() as conn:
        messages.mark_sent(conn, message_id, provider, provider_message_id)


def _default_sender(settings: Settings, provider: str) -> str:
    return {
        "twilio": settings.twilio_whatsapp_number,
        "meta": settings.meta_phone_number_id,
    }.get(provider) or provider


_sender_lock = threading.Lock()
_senders: dict[int, Sender] = {}


def _process_sender(settings: Settings) -> Sender:
    """One sender per process (HTTP connections are reused), made again in a forked child."""
    with _sender_lock:
        pid = os.getpid()
        if pid not in _senders:
            _senders.clear()
            _senders[pid] = get_sender(settings)
        return _senders[pid]


@celery.task(
    name=TASK,
    bind=True,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(Unavailable, psycopg.OperationalError, redis.RedisError),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    # Unbounded here on purpose: the attempt budget that matters is the provider attempts counted on the
    # message row (WAPIPE_SEND_MAX_ATTEMPTS); pacing waits and database outages just wait their turn.
    max_retries=None,
)
def send_task(self: Any, message_id: int) -> None:
    try:
        send(message_id)
    except RetryLater as later:
        # Attempts are counted on the message row, not by Celery: pacing waits cost no attempt.
        raise self.retry(countdown=later.countdown) from later
