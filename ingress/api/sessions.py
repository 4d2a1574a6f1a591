"""``/api/v1/sessions``: inspect and clear the chat sessions kept in Redis (see :mod:`shared.sessions`).

A listing shows each session's user masked (``+*******4567``), its time to live, the selected
workspace/project and where the user is in a menu flow, never the answers typed into a form. To clear one
the caller names the full phone number, which it already knows: ``DELETE /api/v1/sessions/+15551234567``.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request

from ingress.api.common import InvalidParam, handle_invalid_params, page_args
from ingress.auth import require_api_key
from ingress.errors import api_error
from ingress.state import current_publisher, current_settings
from shared.flows.service import form_note_key
from shared.logging import get_logger, mask_phone
from shared.phone import InvalidPhone, normalize
from shared.sessions import Sessions

log = get_logger(__name__)

bp = Blueprint("sessions_api", __name__, url_prefix="/api/v1/sessions")
handle_invalid_params(bp)

# Redis SCAN pages by a hint, not an exact count, and may return an empty batch mid-keyspace; a listing
# keeps scanning until it has about ``limit`` sessions or this many batches, then hands back the cursor.
_MAX_SCANS_PER_PAGE = 20
# A SCAN cursor is an unsigned 64-bit integer; Redis refuses a larger one ("invalid cursor").
_MAX_CURSOR = 2**64 - 1


def _sessions() -> Sessions | None:
    """Sessions on the Redis the app publishes to; None when the app has no Redis configured."""
    publisher = current_publisher()
    if publisher is None:
        return None
    return Sessions(publisher.redis, ttl_seconds=current_settings().session_ttl_seconds)


def _no_redis() -> Response:
    return api_error(503, "unavailable", "sessions live in Redis and WAPIPE_REDIS_URL is not set")


@bp.errorhandler(redis.RedisError)
def _redis_down(exc: redis.RedisError) -> Response:
    log.warning("sessions: redis unavailable", error_type=type(exc).__name__)
    return api_error(503, "unavailable", "the session store (Redis) is unavailable; retry shortly")


def _masked(user_key: str) -> str:
    # A phone keeps its last 4 digits; a Meta business-scoped id is shown by its last 4 characters.
    if user_key.startswith("+"):
        return mask_phone(user_key)
    return "*" * max(len(user_key) - 4, 0) + user_key[-4:]


def _summary(user_key: str, ttl: int, data: dict[str, Any]) -> dict[str, Any]:
    flow = data.get("flow") if isinstance(data.get("flow"), dict) else None
    return {
        "user": _masked(user_key),
        "ttl_seconds": ttl,
        "workspace_id": data.get("workspace_id"),
        "project_id": data.get("project_id"),
        "flow": {key: flow.get(key) for key in ("pack", "flow", "step")} if flow else None,
    }


@bp.get("")
@require_api_key
def list_sessions() -> Response:
    """Live sessions, about ``limit`` per page (Redis SCAN order); ``cursor`` continues a listing."""
    limit, cursor = page_args(request.args, max_cursor=_MAX_CURSOR)
    sessions = _sessions()
    if sessions is None:
        return _no_redis()
    found: list[dict[str, Any]] = []
    scan = cursor or 0
    for _ in range(_MAX_SCANS_PER_PAGE):
        scan, batch = sessions.inspect(limit=limit - len(found), cursor=scan)
        found += [_summary(user_key, ttl, data) for user_key, ttl, data in batch]
        if scan == 0 or len(found) >= limit:
            break
    return jsonify({"data": found, "next_cursor": str(scan) if scan else None})


@bp.delete("/<string:phone>")
@require_api_key
def delete_session(phone: str) -> Response:
    """Clear the session of the user with this phone number (any usual format), and the menu state of each
    of their conversations with its note of a form under way; 404 if there is none.

    Left there, a note would have the user's next message told that their form timed out (and not read),
    when it was ended here.
    """
    try:
        user_key = normalize(phone, current_settings().default_region, strict=False)
    except InvalidPhone as exc:
        raise InvalidParam("phone", str(exc)) from None
    sessions = _sessions()
    if sessions is None:
        return _no_redis()
    if not sessions.clear_all(user_key, beside=form_note_key):
        return api_error(404, "not_found", "no session for that phone number")
    return Response(status=204)
