"""``/api/v1/conversations``: list conversations, read one's history, close one.

The contact's phone is the business's own customer data and is returned in full to callers holding an
API key; it is never logged. Closing is idempotent and also ends a human handoff: the contact's next
message opens a new conversation that the bot answers.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from ingress.api.common import (
    InvalidParam,
    choice_param,
    handle_invalid_params,
    iso,
    message_error,
    page,
    page_args,
)
from ingress.auth import require_api_key
from ingress.errors import api_error
from ingress.state import current_settings
from shared.db import history
from shared.db.pool import connection, transaction
from shared.logging import get_logger
from shared.phone import InvalidPhone, normalize
from shared.wire.events import FlowReply, Location, Media, Provider

log = get_logger(__name__)

bp = Blueprint("conversations_api", __name__, url_prefix="/api/v1/conversations")
handle_invalid_params(bp)

STATUSES = ("open", "handoff", "closed")
# What a caller learns of an inbound message's media: what the provider sent, then whether the file was
# stored (its size, digest and type) or why not (workers/media.py). Named field by field, so the stored
# file's path, which says where the server keeps its data and is nothing a caller can open, stays out,
# and so does anything the workers record there later.
MEDIA_FIELDS = tuple(Media.model_fields)
STORED_MEDIA_FIELDS = ("size", "sha256", "mime_type")
MEDIA_ERROR_FIELDS = ("code", "message")
LOCATION_FIELDS = tuple(Location.model_fields)
FLOW_REPLY_FIELDS = tuple(FlowReply.model_fields)


def _conversation(row: history.ConversationRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "provider": row.provider,
        "business_number": row.business_number,
        "contact": {
            "id": row.contact_id,
            "phone": row.contact_phone,
            "bsuid": row.contact_bsuid,
            "name": row.contact_name,
        },
        "started_at": iso(row.started_at),
        "last_message_at": iso(row.last_message_at),
        "closed_at": iso(row.closed_at),
    }


def _message(row: history.MessageRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "direction": row.direction,
        "provider": row.provider,
        "provider_message_id": row.provider_message_id,
        "type": row.type,
        "body": row.body,
        "media": _media(row.media),
        "location": _picked(row.location, LOCATION_FIELDS) if isinstance(row.location, dict) else None,
        "flow_reply": _flow_reply(row.flow_reply),
        "status": row.status,
        "error": message_error(row.error_code, row.error_message),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _media(entries: Any) -> list[dict[str, Any]] | None:
    if not isinstance(entries, list):
        return None
    return [_media_entry(entry) for entry in entries if isinstance(entry, dict)]


def _media_entry(entry: dict[str, Any]) -> dict[str, Any]:
    view = _picked(entry, MEDIA_FIELDS)
    for name, fields in (("stored", STORED_MEDIA_FIELDS), ("fetch_error", MEDIA_ERROR_FIELDS)):
        if isinstance(entry.get(name), dict):
            view[name] = _picked(entry[name], fields)
    return view


def _flow_reply(entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        return None
    return {name: entry.get(name) for name in FLOW_REPLY_FIELDS}


def _picked(entry: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: entry[name] for name in fields if name in entry}


def _phone_filter(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        # Not strict: stored numbers came from providers, which only guarantee a possible number.
        return normalize(raw, current_settings().default_region, strict=False)
    except InvalidPhone as exc:
        raise InvalidParam("phone", str(exc)) from None


@bp.get("")
@require_api_key
def list_conversations() -> Response:
    """Conversations newest first; filters ``status``, ``provider``, ``phone``; ``limit`` / ``cursor``."""
    limit, cursor = page_args(request.args)
    status = choice_param(request.args, "status", STATUSES)
    provider = choice_param(request.args, "provider", [p.value for p in Provider])
    phone = _phone_filter(request.args.get("phone"))
    with connection() as conn:
        rows = history.list_conversations(
            conn, status=status, provider=provider, phone=phone, before=cursor, limit=limit + 1
        )
    return jsonify(page(rows, limit, _conversation, key=lambda row: row.id))


@bp.get("/<int:conversation_id>/messages")
@require_api_key
def list_messages(conversation_id: int) -> Response:
    """The conversation's messages in both directions, oldest first, with their delivery status."""
    limit, cursor = page_args(request.args)
    with connection() as conn:
        if not history.conversation_exists(conn, conversation_id):
            return api_error(404, "not_found", f"no conversation {conversation_id}")
        rows = history.list_messages(conn, conversation_id, after=cursor or 0, limit=limit + 1)
    body = page(rows, limit, _message, key=lambda row: row.id)
    return jsonify({"conversation_id": conversation_id, **body})


@bp.post("/<int:conversation_id>/close")
@require_api_key
def close(conversation_id: int) -> Response:
    """Close the conversation (open or handoff); closing a closed one answers the same, unchanged."""
    with transaction() as conn:
        row = history.close_conversation(conn, conversation_id)
    if row is None:
        return api_error(404, "not_found", f"no conversation {conversation_id}")
    log.info("conversation closed through the API", conversation_id=conversation_id)
    return jsonify(
        {
            "id": row["id"],
            "status": row["status"],
            "provider": row["provider"],
            "business_number": row["business_number"],
            "contact_id": row["contact_id"],
            "started_at": iso(row["started_at"]),
            "last_message_at": iso(row["last_message_at"]),
            "closed_at": iso(row["closed_at"]),
        }
    )
