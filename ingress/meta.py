"""``/webhooks/meta``: the WhatsApp Cloud API's verification handshake and its signed event POSTs.

GET answers Meta's subscription check: ``hub.mode=subscribe`` with our ``META_VERIFY_TOKEN`` echoes
``hub.challenge``. POST checks ``X-Hub-Signature-256`` over the raw bytes before reading anything, walks
every entry/change/value into canonical events and enqueues them all in one atomic publish; Meta gets its
200 only once they are on the broker (it retries anything else).
https://developers.facebook.com/docs/graph-api/webhooks/getting-started
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/overview
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import ValidationError

from ingress import json_body
from ingress.enqueue import enqueue_events
from ingress.errors import api_error
from ingress.metrics import WEBHOOKS
from ingress.state import current_settings
from ingress.webhook_checks import malformed, signature_refusal
from shared.logging import get_logger
from shared.providers.meta import signature
from shared.wire.meta import parse_webhook

log = get_logger(__name__)

bp = Blueprint("meta", __name__, url_prefix="/webhooks/meta")

PROVIDER = "meta"


@bp.get("")
def verify_subscription() -> Any:
    settings = current_settings()
    expected = settings.meta_verify_token.get_secret_value() if settings.meta_verify_token else ""
    mode = request.args.get("hub.mode", "")
    token = request.args.get("hub.verify_token", "")
    challenge = request.args.get("hub.challenge", "")
    # Constant-time, and an unset META_VERIFY_TOKEN never matches (not even an empty token).
    token_ok = bool(expected) and hmac.compare_digest(token.encode(), expected.encode())
    if mode != "subscribe" or not token_ok:
        log.warning("meta.verification_refused", mode=mode[:32])
        return api_error(403, "verification_failed", "hub.mode or hub.verify_token does not match")
    log.info("meta.verification_ok")
    return Response(challenge, status=200, mimetype="text/plain")


@bp.post("")
def receive() -> Any:
    settings = current_settings()
    refusal = _signature_refusal()
    if refusal is not None:
        return refusal
    raw = request.get_data(cache=True)

    try:
        body = json_body.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _malformed("malformed_json", "body is not valid JSON")
    if not isinstance(body, dict):
        return _malformed("malformed_payload", "body must be a JSON object")
    if not isinstance(body.get("entry"), list):
        return _malformed("malformed_payload", "body has no entry list")
    try:
        parsed = parse_webhook(body, region=settings.default_region)
    except ValidationError as exc:
        return _malformed("malformed_payload", f"not a WhatsApp webhook ({exc.error_count()} problems)")

    for reported in parsed.errors:
        # Value-level errors (rate limits, account problems) concern our number, not a message: an
        # operator needs to see them; nothing is enqueued for them.
        WEBHOOKS.labels(PROVIDER, "error", "logged").inc()
        log.warning(
            "meta.reported_error",
            business_number=reported.business_number,
            error_code=reported.error.code,
            title=reported.error.title,
            details=reported.error.details,
        )
    if parsed.skipped:
        WEBHOOKS.labels(PROVIDER, "unknown", "malformed").inc(parsed.skipped)

    outcome = enqueue_events(PROVIDER, parsed.messages, parsed.statuses)
    # Per webhook, so debug: wapipe_webhooks_received counts every outcome.
    log.debug(
        "meta.webhook_accepted",
        messages=len(parsed.messages),
        statuses=len(parsed.statuses),
        duplicates=outcome.duplicates,
    )
    return jsonify({"status": "ok"})


def _signature_refusal() -> Response | None:
    secrets, variable = current_settings().signing_secrets("meta_app_secret"), "META_APP_SECRET"
    return signature_refusal(PROVIDER, secrets, variable, signature.HEADER, signature.is_valid)


def _malformed(code: str, message: str) -> Response:
    return malformed(PROVIDER, code, message)
