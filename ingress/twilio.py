"""``/webhooks/twilio``: Twilio's WhatsApp inbound messages and status callbacks.

The order matters: the signature is checked before anything is read as an event (a forged request
costs one HMAC and is counted), then the payload becomes one canonical event, which is published with
its dedupe key (one Redis round trip; a Twilio retry of a ``MessageSid`` already enqueued is
acknowledged without a second job), and Twilio gets an empty TwiML answer: replies go out later through
the ``notify`` worker, never in this response.
https://www.twilio.com/docs/usage/webhooks/webhooks-security
https://www.twilio.com/docs/messaging/twiml
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" codec error handler used below
from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException

from ingress.enqueue import route_job, status_job
from ingress.errors import api_error
from ingress.metrics import DUPLICATES, SIGNATURE_FAILURES, WEBHOOKS
from ingress.publishing import publish
from ingress.state import SETTINGS_KEY, current_settings
from shared.logging import get_logger
from shared.providers.twilio.signature import HEADER, SETTINGS_HEADER, Verifier
from shared.wire.events import InboundMessage
from shared.wire.twilio import MalformedWebhook, parse

log = get_logger(__name__)

bp = Blueprint("twilio", __name__, url_prefix="/webhooks/twilio")

PROVIDER = "twilio"
VERIFIER_KEY = "wapipe.twilio.verifier"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
FORM = "application/x-www-form-urlencoded"


@bp.record_once
def _prepare_verifier(state: BlueprintSetupState) -> None:
    settings = state.app.extensions[SETTINGS_KEY]
    token = settings.twilio_auth_token
    state.app.extensions[VERIFIER_KEY] = (
        Verifier(token.get_secret_value(), settings.public_url) if token else None
    )


@bp.get("")
def hello() -> Any:
    return jsonify({"status": "ok", "service": "whatsapp-webhook", "provider": PROVIDER})


@bp.post("")
def receive() -> Any:
    settings = current_settings()
    # A form body is parsed once, here: its fields are both what Twilio signed and the event.
    form = form_pairs(request.get_data()) if request.mimetype == FORM else None
    if not settings.insecure_skip_signatures:
        refusal = _signature_refusal(form)
        if refusal is not None:
            SIGNATURE_FAILURES.labels(PROVIDER).inc()
            WEBHOOKS.labels(PROVIDER, "unknown", "forbidden").inc()
            return refusal

    try:
        event = parse(_params(form), region=settings.default_region)
    except MalformedWebhook as exc:
        WEBHOOKS.labels(PROVIDER, "unknown", "malformed").inc()
        log.info("twilio.malformed_webhook", reason=str(exc))
        return api_error(400, "malformed_payload", str(exc))

    if isinstance(event, InboundMessage):
        kind, job = "message", route_job(event)
    else:
        kind, job = "status", status_job(event)
    try:
        [enqueued] = publish([job])
    except HTTPException:
        WEBHOOKS.labels(PROVIDER, kind, "unavailable").inc()
        raise
    if enqueued:
        WEBHOOKS.labels(PROVIDER, kind, "enqueued").inc()
    else:
        WEBHOOKS.labels(PROVIDER, kind, "duplicate").inc()
        DUPLICATES.labels(PROVIDER).inc()
    return Response(EMPTY_TWIML, mimetype="text/xml")


def _signature_refusal(form: list[tuple[str, str]] | None) -> Response | None:
    """None when the request carries Twilio's signature for our public URL; else the 403 to send."""
    verifier: Verifier | None = current_app.extensions[VERIFIER_KEY]
    if verifier is None:
        return api_error(
            403, "signature_unverifiable", "TWILIO_AUTH_TOKEN is not set: signatures cannot be verified"
        )
    signature = request.headers.get(HEADER)
    if not signature:
        return api_error(403, "signature_missing", f"missing {HEADER} header")
    query = request.query_string.decode("utf-8", "replace")
    # The URL Twilio called, as WAPIPE_PUBLIC_URL + path, never the Host header (proxies rewrite it).
    path_and_query = request.path + ("?" + query if query else "")
    algorithm = request.headers.get(SETTINGS_HEADER)
    if form is not None:
        valid = verifier.is_valid_form(path_and_query, form, signature, algorithm)
    else:
        valid = verifier.is_valid_body(path_and_query, query, request.get_data(), signature, algorithm)
    if not valid:
        log.warning("twilio.signature_invalid", path=request.path)
        return api_error(403, "signature_invalid", f"{HEADER} does not match this request")
    return None


def _params(form: list[tuple[str, str]] | None) -> Mapping[str, Any]:
    """The webhook's parameters: form fields (first value each), or a flat JSON object."""
    if form is not None:
        params: dict[str, str] = {}
        for key, value in form:
            params.setdefault(key, value)
        return params
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise MalformedWebhook("body is neither form-encoded parameters nor a JSON object")
    return {str(key): value for key, value in data.items() if isinstance(value, str | int | float)}


def form_pairs(body: bytes) -> list[tuple[str, str]]:
    """A form-encoded body's fields, in order, exactly as ``request.form`` would hold them.

    werkzeug parses such a body with ``parse_qsl(body.decode(), keep_blank_values=True,
    errors="werkzeug.url_quote")`` and answers an empty form when the body is not UTF-8; this does the
    same (tests/unit/ingress/test_twilio_form.py holds them equal) without the request's form machinery
    (stream wrapper, MultiDict), and unquotes only the fields that need it.
    """
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return []
    pairs = []
    for field in text.split("&"):
        if field:
            name, _, value = field.partition("=")
            pairs.append((_unquote_plus(name), _unquote_plus(value)))
    return pairs


def _unquote_plus(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    if "%" in text:
        # Percent-escapes that are not UTF-8 stay as their %XX text, as werkzeug keeps them.
        text = unquote(text, "utf-8", "werkzeug.url_quote")
    return text
