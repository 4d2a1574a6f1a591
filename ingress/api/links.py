"""``/api/v1/links``: link a host-application user to their WhatsApp number.

The host application asks for a code (``POST /api/v1/links``) and shows the user the message to send;
the user sends ``VERIFY 123456`` on WhatsApp (handled by the ``verify`` worker), or the host application
submits the code itself (``POST /api/v1/links/verify``). Only the WhatsApp message proves the user holds
the phone: the host was handed the code, so submitting it proves nothing, and that route is for a host
that has proved possession of the number itself (and says whose code it is, ``user_id``). Codes are the
policy of ``shared/verification.py``.
Every route needs an ``X-API-Key`` from ``WAPIPE_API_KEYS``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingress.auth import require_api_key
from ingress.errors import api_error
from ingress.json_body import NotAnObject, request_object
from ingress.state import current_settings
from shared import verification
from shared.db import links
from shared.db.pool import transaction
from shared.logging import get_logger
from shared.phone import InvalidPhone, mask_phone, normalize
from shared.verification import Outcome, PhoneTaken

log = get_logger(__name__)

bp = Blueprint("links", __name__, url_prefix="/api/v1/links")

Body = TypeVar("Body", bound=BaseModel)


class CreateLinkBody(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: uuid.UUID
    phone: str = Field(min_length=1, max_length=64)


class VerifyLinkBody(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    phone: str = Field(min_length=1, max_length=64)
    code: str = Field(pattern=r"^\s*\d{6}\s*$")
    # Optional, as callers written before it send none; without it any user's code for the phone may match.
    user_id: uuid.UUID | None = Field(
        default=None,
        description="The user the code was issued to (POST /api/v1/links): only their code is tried, so the"
        " phone can be linked to no one else. Send it.",
    )


class _Invalid(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _invalid(field: str, message: str) -> _Invalid:
    return _Invalid(api_error(422, "validation_error", f"{field}: {message}", field=field))


def _body(model: type[Body]) -> Body:
    try:
        data = request_object(request)
    except NotAnObject as exc:
        raise _invalid("body", str(exc)) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        raise _invalid(field, error["msg"]) from None


def _phone(raw: str) -> str:
    try:
        return normalize(raw, current_settings().default_region, strict=True)
    except InvalidPhone as exc:
        raise _invalid("phone", str(exc)) from None


def _user_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _invalid("user_id", "must be a UUID") from None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _whatsapp_number() -> str | None:
    """Our number the user writes to (shown by the host application), when the provider has one."""
    return current_settings().twilio_whatsapp_number


@bp.errorhandler(_Invalid)
def _on_invalid(exc: _Invalid) -> Response:
    return exc.response


def _no_store(response: Response) -> Response:
    # The body carries a live verification code: no proxy or browser may keep it.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("")
@require_api_key
def create_link() -> Any:
    body = _body(CreateLinkBody)
    phone = _phone(body.phone)
    try:
        with transaction() as conn:
            issued = verification.issue_code(conn, body.user_id, phone)
    except PhoneTaken:
        return api_error(409, "phone_taken", PhoneTaken.message)
    log.info("link code issued", user_id=str(body.user_id), phone=mask_phone(phone))
    response = jsonify(
        code=issued.code,
        expiresAt=_iso(issued.expires_at),
        whatsappNumber=_whatsapp_number(),
        message=f"Send this message to WhatsApp:\n\nVERIFY {issued.code}",
    )
    response.status_code = 201
    return _no_store(response)


_VERIFY_ERRORS: dict[Outcome, tuple[int, str, str]] = {
    Outcome.wrong_code: (400, "invalid_code", "The code is not right"),
    Outcome.expired: (410, "code_expired", "The code has expired; ask for a new one"),
    Outcome.locked: (429, "code_locked", "Too many wrong attempts; ask for a new code"),
    Outcome.no_pending: (404, "no_pending_code", "No pending code for this phone number"),
    Outcome.phone_taken: (409, "phone_taken", PhoneTaken.message),
}


@bp.post("/verify")
@require_api_key
def verify_link() -> Any:
    body = _body(VerifyLinkBody)
    phone = _phone(body.phone)
    result = verification.verify_phone(phone, body.code.strip(), body.user_id)
    if result.outcome is Outcome.bad_format:
        raise _invalid("code", "must be 6 digits")
    if result.outcome is not Outcome.linked:
        status, code, message = _VERIFY_ERRORS[result.outcome]
        if result.outcome is Outcome.wrong_code:
            message = f"{message}; {result.attempts_left} attempts left"
        return api_error(status, code, message)
    link = result.link
    assert link is not None  # check_code sets it with Outcome.linked
    log.info("phone linked via API", user_id=str(link.user_id), phone=mask_phone(link.phone))
    return jsonify(
        status="linked", userId=str(link.user_id), phone=mask_phone(link.phone), linkedAt=_iso(link.linked_at)
    )


@bp.get("/<user_id>")
@require_api_key
def get_link(user_id: str) -> Any:
    uid = _user_id(user_id)
    with transaction() as conn:
        link = links.get_link(conn, uid)
        pending = links.get_code(conn, uid) if link is None else None
    if link is not None:
        return jsonify(phone=mask_phone(link.phone), verified=True, linkedAt=_iso(link.linked_at))
    if pending is not None:
        return jsonify(phone=mask_phone(pending["phone"]), verified=False, linkedAt=None)
    return api_error(404, "not_found", "No WhatsApp number is linked to this user")


@bp.delete("/<user_id>")
@require_api_key
def delete_link(user_id: str) -> Any:
    uid = _user_id(user_id)
    with transaction() as conn:
        # Unlinking also cancels a verification in progress, so an old code can't relink the number. The
        # code goes first, in the order a verify takes them (it claims the code, then links): a verify
        # holding the code is waited for, and the link it made is then seen and removed, where looking for
        # the link first found none, answered 404 and left the verify's link in place.
        links.delete_code(conn, uid)
        removed = links.unlink(conn, uid)
    if not removed:
        return api_error(404, "not_found", "No WhatsApp number is linked to this user")
    log.info("phone unlinked", user_id=str(uid))
    return Response(status=204)
