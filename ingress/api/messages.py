"""``/api/v1/messages``: internal services send any kind of WhatsApp message and follow its delivery.

- ``POST /api/v1/messages`` ``{to, type, text | media | interactive | template | reaction,
  idempotency_key?}`` -> ``202 {id, status}``. Everything WhatsApp would refuse is a 422 naming the field
  (:mod:`shared.wire.outbound_api`), as is a recipient that is not a valid number and a type the active
  provider cannot send; nothing is stored then. Otherwise the message is stored ``queued`` and
  ``notify.send`` enqueued after the commit: the caller never waits for the provider, whose answer (sent,
  retried, failed with its reason) shows in ``GET /api/v1/messages/{id}``.
- Idempotency: the ``Idempotency-Key`` header or the ``idempotency_key`` field. The same key with the same
  request (compared as a hash of its canonical form) answers ``200`` with the first message; with a
  different request, ``409``. A key is the caller's own: stored as ``api@<scope>:<key>``, the scope a
  short digest of the caller's API key (:func:`ingress.auth.caller_scope`), so two services never share
  one, nor meet reply keys. Keys an earlier release stored unscoped (``api:<key>``) still answer with
  their message, to whichever caller retries them after an upgrade.
- ``POST /api/whatsapp/notify`` ``{to, message}``: the text-only endpoint existing callers use, answering
  ``{"success": true, "data": {"messageId", "to"}}`` or ``{"success": false, "error": {...}}``.

Every route needs an ``X-API-Key`` from ``WAPIPE_API_KEYS``. The recipient is shown in full: every key is
trusted with every contact's messages (README, ``WAPIPE_API_KEYS``), whichever key sent one. Logs mask it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, make_response, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from ingress.api.common import iso, message_error
from ingress.api.group_store import GroupStore
from ingress.auth import caller_scope, require_api_key
from ingress.errors import api_error, handle_http_exception, handle_unexpected
from ingress.json_body import NotAnObject, request_object
from ingress.per_app import per_app
from ingress.publishing import publish, unavailable
from ingress.state import PUBLISHER_KEY, current_settings
from shared import providers
from shared.db import messages, outbound_api
from shared.db.errors import DatabaseError, NotFound
from shared.db.outbound_api import NewOutbound, Stored
from shared.db.pool import connection, transaction
from shared.logging import get_logger
from shared.phone import InvalidPhone, mask_phone, normalize
from shared.providers.base import OutboundMessage, SendError
from shared.queues import notify_jobs
from shared.settings import Settings
from shared.wire.outbound_api import IDEMPOTENCY_KEY_MAX, LegacyNotifyRequest, SendRequest, error_location

log = get_logger(__name__)

bp = Blueprint("messages", __name__)

M = TypeVar("M", bound=BaseModel)

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Not "api:" + anything: every key of that form may be a caller's unscoped key from an earlier release.
SCOPED_KEY_PREFIX = "api@"
LEGACY_KEY_PREFIX = "api:"
# A message whose notify.send could not be enqueued (Redis down) is failed with this code, so it is
# reported rather than stuck; the same idempotency key sent again queues it anew.
QUEUE_UNAVAILABLE = "queue_unavailable"
GROUP_STORE_KEY = "wapipe.group_store"
QUEUE_UNAVAILABLE_TEXT = "the queue was unreachable when it was accepted; not sent"


class _Refused(Exception):
    """A request we answer with a 4xx; ``field`` names the part of the body at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        response = jsonify({"error": error})
        response.status_code = self.status
        return response


@bp.errorhandler(_Refused)
def _on_refused(exc: _Refused) -> Response:
    return exc.response()


@dataclass(frozen=True)
class Accepted:
    id: int
    status: str
    to: str
    new: bool


# --- POST /api/v1/messages ------------------------------------------------------------------------------


@bp.post("/api/v1/messages")
@require_api_key
def create_message() -> Any:
    send = _validated(SendRequest, _json_body())
    accepted = accept(send, _idempotency_key(send.idempotency_key))
    response = jsonify(id=accepted.id, status=accepted.status)
    response.status_code = 202 if accepted.new else 200
    response.headers["Location"] = f"/api/v1/messages/{accepted.id}"
    if not accepted.new:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/api/v1/messages/<int:message_id>")
@require_api_key
def get_message(message_id: int) -> Any:
    try:
        with transaction() as conn:
            record = messages.get_outbound(conn, message_id)
            events = messages.timeline(conn, message_id)
    except NotFound:
        return api_error(404, "not_found", f"no outbound message {message_id}")
    return jsonify(
        id=record.id,
        to=record.phone,
        type=record.type,
        status=record.status,
        error=message_error(record.error_code, record.error_message),
        createdAt=iso(record.created_at),
        timeline=[
            {"status": event["status"], "at": iso(event["at"]), "errorCode": event["error_code"]}
            for event in events
        ],
    )


# --- POST /api/whatsapp/notify (kept for existing callers) -----------------------------------------------


@bp.post("/api/whatsapp/notify")
def legacy_notify() -> Response:
    """The old shape around the same pipeline: every answer, errors included, carries ``success``."""
    try:
        response = make_response(_legacy_notify())
    except _Refused as exc:
        response = exc.response()
    except HTTPException as exc:  # 503 from publish, 413 from a huge body
        response = handle_http_exception(exc)
    except Exception as exc:  # the database away (503) or a bug (500): this answer carries success too
        response = handle_unexpected(exc)
    body = response.get_json(silent=True)
    if response.status_code >= 400 and isinstance(body, dict) and "error" in body:
        response.set_data(json.dumps({"success": False, "error": body["error"]}))
    return response


@require_api_key
def _legacy_notify() -> Any:
    legacy = _validated(LegacyNotifyRequest, _json_body())
    send = SendRequest(to=legacy.to, type="text", text=legacy.message)
    accepted = accept(send, _idempotency_key(None))
    return jsonify(success=True, data={"messageId": accepted.id, "to": accepted.to})


# --- the pipeline both endpoints share ------------------------------------------------------------------


def accept(send: SendRequest, key: str | None) -> Accepted:
    """Validate what depends on configuration, store the message once, enqueue ``notify.send``."""
    settings = current_settings()
    to = _recipient(send.to, settings.default_region)
    message_type, body, payload = _checked_content(send, to, settings)
    request_hash = send.request_hash(to)
    stored_key = f"{SCOPED_KEY_PREFIX}{caller_scope()}:{key or uuid.uuid4().hex}"

    filed = _group_store().accept(
        NewOutbound(
            phone=to,
            idempotency_key=stored_key,
            provider=settings.active_provider.value,
            type=message_type,
            body=body,
            payload=payload,
            request_hash=request_hash,
            legacy_key=LEGACY_KEY_PREFIX + key if key is not None else None,
        )
    )
    stored, status = filed.stored, filed.stored.status
    if not stored.new:
        if stored.request_hash != request_hash:
            raise _Refused(
                409,
                "idempotency_conflict",
                "idempotency_key: already used for a different request; use a new key for a new message",
                "idempotency_key",
            )
        if stored.status == "failed" and stored.error_code == QUEUE_UNAVAILABLE:
            with transaction() as conn:
                # Only while it still is failed for want of the broker: the read above is a snapshot.
                requeued = messages.requeue_failed(conn, stored.id, only_code=QUEUE_UNAVAILABLE)
            if requeued:
                status = "queued"
                _enqueue(stored.id)

    # The row is committed and, when it needed one, its job published with it (202 only when both hold;
    # ingress/api/group_store.py): a new message, or a replay still queued, whose first job may be the
    # one that was lost.
    if filed.unqueued is not None:
        _unqueued(stored, filed.unqueued, keyed=key is not None)
    # Per request, so debug (the caller has the id; GET shows the timeline).
    log.debug(
        "api message accepted", message_id=stored.id, to=mask_phone(to), type=message_type, new=stored.new
    )
    return Accepted(stored.id, status, to, stored.new)


def _group_store() -> GroupStore:
    """The process's :class:`GroupStore` (one per app, made on first use in each gunicorn worker)."""
    return per_app(GROUP_STORE_KEY, lambda: GroupStore(current_app.extensions.get(PUBLISHER_KEY)))


def _recipient(raw: str, region: str) -> str:
    """The E.164 recipient, or a 422 naming ``to``."""
    try:
        return normalize(raw, region, strict=True)
    except InvalidPhone as exc:
        raise _Refused(422, "invalid_phone", f"to: {exc}", "to") from None


def _checked_content(
    send: SendRequest, to: str, settings: Settings
) -> tuple[str, str | None, dict[str, Any]]:
    """``(type, body, payload)`` for the row, once the active provider has said it can send them."""
    kind = send.outbound_type
    if not providers.supports(kind.value, settings):
        raise _Refused(
            422,
            "unsupported_type",
            f"type: the active provider ({settings.active_provider}) cannot send {kind} messages",
            "type",
        )
    message_type, body, payload = send.stored()
    try:
        providers.check(
            OutboundMessage.from_record(
                id=0, to=to, type=message_type, body=body, payload=payload, from_number=None
            ),
            settings,
        )
    except SendError as exc:
        field = getattr(exc, "field", None) or "type"
        raise _Refused(422, exc.code, f"{field}: {exc.message}", field) from None
    return message_type, body, payload


def _enqueue(message_id: int) -> None:
    """After the commit, so notify.send finds the row. A second job for one message is harmless. When
    Redis refuses it the caller gets a 503 and the row, which has the caller's key, stays queued
    (:func:`_unqueued`)."""
    publish(notify_jobs([message_id]))


def _unqueued(stored: Stored, reason: str, *, keyed: bool) -> None:
    """The row is committed but its job may not be on the broker: a 503, or, for a message a notify batch
    has claimed meanwhile, nothing (it is being sent: the caller gets it as accepted).

    A new message the caller gave no key is marked failed with ``queue_unavailable``: the caller can only
    send it again as a new message, so this one must not also go out. Unless a notify batch claimed the
    committed row first, which happens when the publish reached Redis and only its answer was lost: then
    a 503 ("never sent, send it again") would have the caller send it twice, so it is accepted as it is.
    One with the caller's key stays ``queued``, to be sent
    once: the caller's retry with the key publishes its job again and is answered with the message, and
    notify.sweep re-enqueues queued messages overdue by ``OVERDUE_SECONDS`` should no retry come (the
    notify claim makes a second job harmless). Failing it instead would race that retry, which can find
    the row queued, publish its job and answer 200 before the mark lands: a message the caller was told
    is queued, failed for good. The same holds when the process dies between the commit and the publish;
    and a keyless one whose mark fails (PostgreSQL gone as well) is accepted as it is, left for the sweep.
    """
    if stored.new and not keyed:
        try:
            marked = _mark_unqueued(stored.id)
        except DatabaseError:
            # PostgreSQL went away too: the row stays queued, and notify.sweep sends it once Redis and
            # PostgreSQL are back. A 503 ("send it again") would have the caller send it twice.
            log.warning(
                "api message left queued for the sweep: not published, not failed", message_id=stored.id
            )
            return
        if not marked:
            log.info("api message claimed for sending although its publish failed", message_id=stored.id)
            return
    unavailable(notify_jobs([stored.id]), reason)


def _mark_unqueued(message_id: int) -> bool:
    """Whether the message was still queued, and is now failed with ``queue_unavailable``."""
    with connection() as conn:
        return outbound_api.fail_unqueued(conn, message_id, QUEUE_UNAVAILABLE, QUEUE_UNAVAILABLE_TEXT)


def _json_body() -> dict[str, Any]:
    try:
        return request_object(request)
    except NotAnObject as exc:
        raise _Refused(422, "validation_error", f"body: {exc}", "body") from None


def _idempotency_key(field: str | None) -> str | None:
    header = request.headers.get(IDEMPOTENCY_HEADER)
    if header is not None:
        header = header.strip()
        if not header or len(header) > IDEMPOTENCY_KEY_MAX or "\x00" in header:
            raise _Refused(
                422,
                "validation_error",
                f"{IDEMPOTENCY_HEADER}: 1 to {IDEMPOTENCY_KEY_MAX} characters, none of them NUL",
                "idempotency_key",
            )
        if field is not None and field != header:
            raise _Refused(
                422,
                "validation_error",
                f"idempotency_key: differs from the {IDEMPOTENCY_HEADER} header; send one of them",
                "idempotency_key",
            )
    return header or field


def _validated(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A union (template variables: a list or an object) reports "not a list" for the branch that did
        # not apply; the other branch's error is the one that says what is wrong.
        specific = [e for e in errors if e["type"] not in ("list_type", "dict_type")] or errors
        first = specific[0]
        field = error_location(first["loc"], first.get("ctx")) or "body"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        elif first["type"] == "missing":
            message = "required"
        raise _Refused(422, "validation_error", f"{field}: {message}", field) from None
