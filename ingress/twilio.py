"""``/webhooks/twilio``: Twilio's WhatsApp inbound messages and status callbacks.

The order matters: a request without a signature, or with a body larger than any Twilio sends, is refused
before its body is read, and a form of more fields than Twilio sends before it is parsed; the signature
is checked before anything is read as an event (a forged request costs the parse of a form of at most
128 KB and 256 fields, ~12 ms of CPU at worst, and two HMACs, and is counted); then the payload becomes one
canonical event, which is published with its dedupe key (one Redis round trip; a Twilio retry of a
``MessageSid`` already enqueued is acknowledged without a second job), and Twilio gets an empty TwiML
answer: replies go out later through the ``notify`` worker, never in this response. Twilio retries a 503
(Redis unreachable) or a timeout only as the webhook URL's fragment asks, within 15 s
(:data:`shared.providers.twilio.signature.RETRY_FRAGMENT`, deploy/README.md).
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
from ingress.webhook_checks import unsigned_refusal
from shared.logging import get_logger
from shared.providers.twilio.signature import HEADER, SETTINGS_HEADER, Verifier
from shared.wire.events import InboundMessage
from shared.wire.twilio import OUR_ID_PARAM, MalformedWebhook, OtherChannel, parse

log = get_logger(__name__)

bp = Blueprint("twilio", __name__, url_prefix="/webhooks/twilio")

PROVIDER = "twilio"
VERIFIER_KEY = "wapipe.twilio.verifier"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
FORM = "application/x-www-form-urlencoded"
# Twilio's bodies are a few kilobytes: a message's text (up to 4,096 characters, at worst 12 bytes each once
# UTF-8 and percent-encoded), up to 10 media URLs and some 40 other fields. A larger one is not Twilio's
# and is refused unparsed: a 3 MB form of empty fields costs 0.3 s of CPU and 140 MB to parse.
MAX_BODY_BYTES = 128 * 1024
# Twilio's largest webhook has some 70 fields: a WhatsApp message's ids, addresses, text, location, button,
# quoted message and ad referral (about 40), the sender's and recipient's geography (8), and a URL and a
# type per media item, at most 10 (https://www.twilio.com/docs/messaging/guides/webhook-request); a status
# callback has fewer than 30. A form of more is not Twilio's and is refused unparsed: 25,000 tiny fields
# within MAX_BODY_BYTES cost ~55 ms of CPU to parse and sort for the signature, before the 403.
MAX_FIELDS = 256


@bp.record_once
def _prepare_verifier(state: BlueprintSetupState) -> None:
    settings = state.app.extensions[SETTINGS_KEY]
    tokens = settings.signing_secrets("twilio_auth_token")
    state.app.extensions[VERIFIER_KEY] = Verifier(tokens, settings.public_url) if tokens else None


@bp.get("")
def hello() -> Any:
    return jsonify({"status": "ok", "service": "whatsapp-webhook", "provider": PROVIDER})


@bp.post("")
def receive() -> Any:
    settings = current_settings()
    checked = not settings.insecure_skip_signatures
    # A request that cannot be Twilio's is refused before its body is read, let alone parsed: the form
    # must be parsed to check its signature.
    refusal = (_unsigned_refusal() if checked else None) or _size_refusal()
    if refusal is not None:
        return refusal
    # A form body is parsed once, here: its fields are both what Twilio signed and the event.
    form = form_pairs(request.get_data()) if request.mimetype == FORM else None
    if checked:
        refusal = _signature_refusal(form)
        if refusal is not None:
            return _forbidden(refusal)

    try:
        event = parse(
            _params(form), region=settings.default_region, our_message_id=request.args.get(OUR_ID_PARAM)
        )
    except MalformedWebhook as exc:
        WEBHOOKS.labels(PROVIDER, "unknown", "malformed").inc()
        log.info("twilio.malformed_webhook", reason=str(exc))
        return api_error(400, "malformed_payload", str(exc))
    except OtherChannel as exc:
        # Acknowledged, so Twilio neither retries it nor reports an error, and left unanswered: a reply would
        # go by WhatsApp to someone who wrote by SMS.
        WEBHOOKS.labels(PROVIDER, "message", "other_channel").inc()
        log.info("twilio.other_channel_ignored", channel=exc.channel[:16])
        return Response(EMPTY_TWIML, mimetype="text/xml")

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


def _unsigned_refusal() -> Response | None:
    """The 403 for a request that carries no signature, or one we cannot check; None otherwise."""
    verifiable = current_app.extensions[VERIFIER_KEY] is not None
    refusal = unsigned_refusal(verifiable, "TWILIO_AUTH_TOKEN", HEADER)
    return _forbidden(refusal) if refusal is not None else None


def _size_refusal() -> Response | None:
    """The 413 for a body larger than any Twilio sends (:data:`MAX_BODY_BYTES`), or a form of more fields
    (:data:`MAX_FIELDS`); None otherwise. The declared length is checked before anything is read; a
    chunked body is read (up to WAPIPE_MAX_BODY_BYTES) but not parsed, and so is a form's: its fields
    are counted by their separators."""
    size = request.content_length
    if size is None and request.headers.get("Transfer-Encoding"):
        size = len(request.get_data())
    if size is not None and size > MAX_BODY_BYTES:
        message = f"a Twilio webhook's body is at most {MAX_BODY_BYTES} bytes"
    elif request.mimetype == FORM and request.get_data().count(b"&") >= MAX_FIELDS:
        message = f"a Twilio webhook has at most {MAX_FIELDS} fields"
    else:
        return None
    WEBHOOKS.labels(PROVIDER, "unknown", "too_large").inc()
    return api_error(413, "request_entity_too_large", message)


def _forbidden(refusal: Response) -> Response:
    SIGNATURE_FAILURES.labels(PROVIDER).inc()
    WEBHOOKS.labels(PROVIDER, "unknown", "forbidden").inc()
    return refusal


def _signature_refusal(form: list[tuple[str, str]] | None) -> Response | None:
    """None when the request carries Twilio's signature for our public URL; else the 403 to send (its
    presence, and a verifier, are checked first: :func:`_unsigned_refusal`)."""
    verifier: Verifier = current_app.extensions[VERIFIER_KEY]
    signature = request.headers[HEADER]
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
