"""``/webhooks/kapso``: Kapso's signed v2 webhooks, single or batched.

``X-Webhook-Signature`` (hex HMAC-SHA256 of the raw body) is checked first. The event name comes from the
signed body when it names one (a batch's ``type``), else from the unsigned ``X-Webhook-Event``; a
delivery naming none is a 400 (see :func:`shared.wire.kapso.parse_delivery`). A batch
(``X-Webhook-Batch: true`` / ``{"batch": true, "data": [...]}``) fans out to one canonical event per item,
all enqueued in one atomic publish with per-message dedupe keys.
``X-Idempotency-Key`` additionally marks the whole delivery as done once it is enqueued, so a redelivery
is acknowledged without even re-parsing. The header is not signed, so the mark is of the key *and* a digest
of the signed body: a captured delivery replayed under the keys of deliveries still to come marks only
that pairing, and the real deliveries (other bodies) are processed as usual. Kapso wants its 200 within
10 seconds: this is a few Redis round trips at most.
https://docs.kapso.ai/docs/platform/webhooks/overview
https://docs.kapso.ai/docs/platform/webhooks/security
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request

from ingress import json_body
from ingress.enqueue import enqueue_events
from ingress.metrics import DUPLICATES, WEBHOOKS
from ingress.state import current_publisher, current_settings
from ingress.webhook_checks import malformed, signature_refusal
from shared.logging import get_logger
from shared.providers.kapso import signature
from shared.wire.kapso import parse_delivery

log = get_logger(__name__)

bp = Blueprint("kapso", __name__, url_prefix="/webhooks/kapso")

PROVIDER = "kapso"
EVENT_HEADER = "X-Webhook-Event"
BATCH_HEADER = "X-Webhook-Batch"
IDEMPOTENCY_HEADER = "X-Idempotency-Key"
# As long as the per-message dedupe keys live (shared.queues.Publisher.DEDUPE_TTL_SECONDS).
DELIVERY_TTL_SECONDS = 7 * 24 * 3600
MAX_IDEMPOTENCY_KEY = 200


def delivery_key(idempotency_key: str, raw: bytes) -> str:
    """The Redis key marking a delivery done: Kapso's redelivery repeats both the key and the body."""
    return f"seen-delivery:{PROVIDER}:{idempotency_key}:{hashlib.sha256(raw).hexdigest()}"


@bp.post("")
def receive() -> Any:
    settings = current_settings()
    refusal = _signature_refusal()
    if refusal is not None:
        return refusal
    raw = request.get_data(cache=True)

    idempotency_key = (request.headers.get(IDEMPOTENCY_HEADER) or "").strip()[:MAX_IDEMPOTENCY_KEY]
    if idempotency_key and _delivery_seen(delivery_key(idempotency_key, raw)):
        WEBHOOKS.labels(PROVIDER, "unknown", "duplicate").inc()
        DUPLICATES.labels(PROVIDER).inc()
        return jsonify({"status": "ok", "duplicate": True})

    try:
        body = json_body.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _malformed("malformed_json", "body is not valid JSON")
    if not isinstance(body, dict):
        return _malformed("malformed_payload", "body must be a JSON object")
    event = request.headers.get(EVENT_HEADER)
    try:
        parsed = parse_delivery(
            body, event, batch_header=request.headers.get(BATCH_HEADER), region=settings.default_region
        )
    except ValueError as exc:
        return _malformed("malformed_payload", str(exc))
    if parsed.skipped:
        WEBHOOKS.labels(PROVIDER, "unknown", "malformed").inc(parsed.skipped)

    outcome = enqueue_events(PROVIDER, parsed.messages, parsed.statuses)
    if idempotency_key:
        _mark_delivery(delivery_key(idempotency_key, raw))
    # Per webhook, so debug: wapipe_webhooks_received counts every outcome.
    log.debug(
        "kapso.webhook_accepted",
        kapso_event=event,
        messages=len(parsed.messages),
        statuses=len(parsed.statuses),
        ignored=parsed.ignored,
        duplicates=outcome.duplicates,
    )
    return jsonify({"status": "ok"})


def _delivery_seen(key: str) -> bool:
    """Whether this delivery was fully enqueued before. Without Redis the publish will answer 503."""
    publisher = current_publisher()
    if publisher is None:
        return False
    try:
        return bool(publisher.redis.exists(key))
    except redis.RedisError as exc:
        log.warning("kapso.idempotency_check_failed", error_type=type(exc).__name__)
        return False  # per-message dedupe still guards the publish that follows


def _mark_delivery(key: str) -> None:
    """Set only after the publish succeeded, so a delivery that got a 503 is processed on its retry."""
    publisher = current_publisher()
    if publisher is None:
        return
    try:
        publisher.redis.set(key, "1", ex=DELIVERY_TTL_SECONDS)
    except redis.RedisError as exc:
        # The events are enqueued; a redelivery is still deduped message by message.
        log.warning("kapso.idempotency_mark_failed", error_type=type(exc).__name__)


def _signature_refusal() -> Response | None:
    secrets, variable = current_settings().signing_secrets("kapso_webhook_secret"), "KAPSO_WEBHOOK_SECRET"
    return signature_refusal(PROVIDER, secrets, variable, signature.HEADER, signature.is_valid)


def _malformed(code: str, message: str) -> Response:
    return malformed(PROVIDER, code, message)
