"""What every route of the service takes and answers: the table :mod:`ingress.openapi` turns into OpenAPI.

One :class:`Operation` per ``"METHOD /path"`` (the Flask rule written the OpenAPI way, ``{name}`` for
``<converter:name>``). Request bodies are the pydantic models the routes validate with; response bodies are
the small models below, which describe what the views' ``jsonify`` calls produce (the schemathesis test
checks every answer against them, so they cannot drift silently). Path parameter schemas come from the
Flask converters, the ``X-API-Key`` requirement adds its 401 and a body its 413, so each entry lists only
what is particular to the route. A route missing here fails ``tests/unit/ingress/test_openapi_document.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ingress.api.assistant_configs import AssistantConfigBody
from ingress.api.common import BIGINT_MAX, DEFAULT_LIMIT, MAX_LIMIT
from ingress.api.conversations import STATUSES
from ingress.api.links import CreateLinkBody, VerifyLinkBody
from ingress.json_body import MAX_DEPTH, MAX_NUMBER_DIGITS
from shared.wire import kapso, meta
from shared.wire.events import Provider
from shared.wire.outbound_api import IDEMPOTENCY_KEY_MAX, LegacyNotifyRequest, SendRequest
from shared.wire.twilio import TwilioInbound, TwilioStatus

Schema = type[BaseModel] | dict[str, Any]

# --- building blocks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A query or header parameter (path parameters are described by ``Operation.path_params``)."""

    name: str
    where: Literal["query", "header"]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Body:
    schema: Schema | Mapping[str, Schema]  # one schema for every media type, or one per media type
    media: tuple[str, ...] = ("application/json",)
    description: str = ""
    example: dict[str, Any] | None = None  # shown on /docs and sent as is by the schemathesis test


@dataclass(frozen=True)
class Reply:
    """One response. ``schema=None`` with ``error=True`` means the operation's error schema."""

    description: str
    schema: Schema | None = None
    media: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)  # header name -> description
    error: bool = False


def fail(description: str) -> Reply:
    """An error response in the operation's error shape (``{"error": {"code", "message"}}``)."""
    return Reply(description, error=True)


@dataclass(frozen=True)
class Operation:
    tag: str
    summary: str
    responses: Mapping[int, Reply]
    description: str = ""
    params: tuple[Param, ...] = ()
    path_params: Mapping[str, str] = field(default_factory=dict)  # name -> description
    body: Body | None = None
    api_key: bool = False
    error_schema: type[BaseModel] | None = None  # None: ErrorBody
    examples: Mapping[str, Any] = field(default_factory=dict)  # parameter name -> an example value


# --- response bodies (documentation models: what the views' jsonify calls produce) --------------------------


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorDetail(_Out):
    code: str = Field(description="A stable snake_case word to branch on, e.g. validation_error, not_found.")
    message: str = Field(description="What went wrong, for a person; names the field or parameter at fault.")
    field: str | None = Field(
        default=None,
        description="The body field, query parameter or path parameter at fault (as the request names it),"
        " when there is one.",
    )


class ErrorBody(_Out):
    """Every 4xx and 5xx answer of the service."""

    error: ErrorDetail


class Health(_Out):
    status: Literal["ok"]


class ReadinessChecks(_Out):
    postgres: str = Field(
        description='"ok", "unreachable: <error type>" (e.g. OperationalError; never the error\'s text),'
        ' "unreachable: timed out" (logged in but no answer within 2 s, as behind PgBouncer with PostgreSQL'
        ' down), or "not configured: ...".'
    )
    redis: str = Field(
        description='"ok", "unreachable: <error type>" (e.g. ConnectionError; never the error\'s text), or'
        ' "not configured: ...".'
    )


class Readiness(_Out):
    status: Literal["ready", "degraded", "unavailable"]
    checks: ReadinessChecks


class TwilioHello(_Out):
    status: Literal["ok"]
    service: str
    provider: Literal["twilio"]


class WebhookAck(_Out):
    status: Literal["ok"]
    duplicate: bool = Field(default=False, description="Present (true) when the delivery was seen before.")


class MetaEntry(meta.Entry):
    """One ``entry[]`` of a Meta webhook. The parser takes its changes raw, to skip an odd one alone; this
    is the shape they have."""

    changes: list[meta.Change] = Field(default_factory=list)


class MetaWebhook(meta.Webhook):
    """Meta's webhook body: entry[].changes[].value holds messages, statuses, contacts and errors."""

    entry: list[MetaEntry]


class KapsoEvent(kapso.Payload):
    """One Kapso v2 event: a Meta-compatible message with Kapso's block, and its conversation."""


class KapsoBatch(BaseModel):
    """A buffered Kapso delivery (``X-Webhook-Batch: true``)."""

    batch: Literal[True]
    data: list[KapsoEvent]


class LinkCode(_Out):
    code: str = Field(pattern=r"^\d{6}$", description="The one-time code; show it to the user.")
    expiresAt: datetime
    whatsappNumber: str | None = Field(description="Our WhatsApp number the user writes to, when known.")
    message: str = Field(description="The text the user sends on WhatsApp.")


class Linked(_Out):
    status: Literal["linked"]
    userId: uuid.UUID
    phone: str = Field(description="The linked number, masked.")
    linkedAt: datetime


class LinkState(_Out):
    phone: str = Field(description="The number, masked.")
    verified: bool = Field(description="False while a code is pending.")
    linkedAt: datetime | None


class ContactView(_Out):
    id: int
    phone: str | None
    bsuid: str | None = Field(description="Meta's business-scoped user id, when known.")
    name: str | None


class ConversationView(_Out):
    id: int
    status: Literal["open", "handoff", "closed"]
    provider: str
    business_number: str
    contact: ContactView
    started_at: datetime
    last_message_at: datetime
    closed_at: datetime | None


class ConversationPage(_Out):
    data: list[ConversationView]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last.")


class MessageError(_Out):
    code: str | None = Field(description="The provider's error code; null when it gave only a reason.")
    message: str | None


class StoredMedia(_Out):
    # Closed, so the schemathesis test fails on a stored file's server path (or anything else) showing up.
    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Hex SHA-256 of the stored bytes.")
    mime_type: str


class MediaFetchError(_Out):
    code: str = Field(description="Why the file was not stored for good, e.g. too_large, mime_not_allowed.")
    message: str


class HistoryMedia(_Out):
    """One media file of an inbound message: what the provider sent (each field only when it sent it),
    then what the download made of it. Nothing says where the server keeps the file."""

    url: str | None = Field(default=None, description="The provider's media URL (Twilio, Kapso).")
    media_id: str | None = Field(default=None, description="The provider's media id (Meta, Kapso).")
    mime_type: str | None = None
    caption: str | None = None
    filename: str | None = None
    sha256: str | None = Field(default=None, description="The digest the provider gave, when it gave one.")
    stored: StoredMedia | None = Field(
        default=None, description="Present once the file is downloaded and stored."
    )
    fetch_error: MediaFetchError | None = Field(
        default=None, description="Present when the file was refused (too large, a type not accepted, gone)."
    )


class HistoryLocation(_Out):
    """A location the user shared: the coordinates, and the place's name, address and link when the
    provider gave them (Twilio's Label is the name)."""

    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    url: str | None = None


class HistoryFlowReply(_Out):
    """A WhatsApp Flow the user submitted (Meta's and Kapso's ``nfm_reply``)."""

    name: str | None = Field(description='"flow", or "address_message" for an address form.')
    body: str | None = Field(description='What the chat showed for it, usually "Sent".')
    response: dict[str, Any] | None = Field(
        description="The Flow's answers (its response_json, parsed), with the flow_token the Flow was sent "
        "with; null when the provider's response_json was not a JSON object."
    )


class HistoryMessage(_Out):
    id: int
    direction: Literal["in", "out"]
    provider: str
    provider_message_id: str | None
    type: str
    body: str | None
    media: list[HistoryMedia] | None = Field(
        description="An inbound message's media files; null for a message without any."
    )
    location: HistoryLocation | None = Field(
        description="A shared location (type location); null for any other message, or a location whose "
        "coordinates were unusable."
    )
    flow_reply: HistoryFlowReply | None = Field(
        description="A submitted WhatsApp Flow (type interactive); null for any other message."
    )
    status: str
    error: MessageError | None
    created_at: datetime
    updated_at: datetime


class MessagePage(_Out):
    conversation_id: int
    data: list[HistoryMessage]
    next_cursor: str | None


class ClosedConversation(_Out):
    id: int
    status: Literal["closed"]
    provider: str
    business_number: str
    contact_id: int
    started_at: datetime
    last_message_at: datetime
    closed_at: datetime | None


class Figures(_Out):
    conversations: int
    active_conversations: int
    answered_conversations: int
    avg_first_response_seconds: float | None
    messages_in: int
    messages_out: int
    active_users_24h: int
    active_users_7d: int


class ProviderFigures(Figures):
    provider: str


class NumberFigures(Figures):
    provider: str
    business_number: str | None


class Stats(_Out):
    generated_at: datetime
    overall: Figures
    by_provider: list[ProviderFigures]
    by_number: list[NumberFigures]


class FlowPosition(_Out):
    pack: str | None
    flow: str | None
    step: str | int | None


class SessionView(_Out):
    user: str = Field(description="The user, masked: a phone keeps its last 4 digits.")
    ttl_seconds: int
    workspace_id: str | int | None
    project_id: str | int | None
    flow: FlowPosition | None


class SessionPage(_Out):
    data: list[SessionView]
    next_cursor: str | None


class AssistantConfigView(_Out):
    business_number: str
    system_prompt: str
    model: str | None = Field(description="null: the deployment's default model.")
    max_tokens: int
    temperature: float
    updated_at: datetime


class MessageAccepted(_Out):
    id: int
    status: str = Field(description="queued for a new message; the first one's status on a replay.")


class TimelineEvent(_Out):
    status: str
    at: datetime
    errorCode: str | None


class OutboundMessageView(_Out):
    id: int
    to: str | None
    type: str
    status: str
    error: MessageError | None
    createdAt: datetime
    timeline: list[TimelineEvent]


class LegacyData(_Out):
    messageId: int
    to: str


class LegacyAccepted(_Out):
    success: Literal[True]
    data: LegacyData


class LegacyError(_Out):
    """``POST /api/whatsapp/notify``'s errors keep the old ``success`` flag."""

    success: Literal[False]
    error: ErrorDetail


# --- parameters used by several routes ----------------------------------------------------------------------

LIMIT = Param(
    "limit",
    "query",
    f"Page size (default {DEFAULT_LIMIT}).",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
)
CURSOR = Param(
    "cursor",
    "query",
    "next_cursor of the previous page.",
    {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX},
)
SCAN_CURSOR = Param(
    "cursor",
    "query",
    "next_cursor of the previous page.",
    {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    "The same key with the same request answers the first message again (200); with another, 409."
    " Keys are scoped to the caller's X-API-Key: another key's caller may use the same one freely.",
    {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX},
)

INVALID_PARAM = fail(
    "validation_error: a query or path parameter is malformed; the message and error.field name it."
)
# Each way a body can fail to be a JSON object, as ingress.json_body.request_object tells them apart.
NO_JSON_OBJECT = (
    "the body is no JSON object (its message says which: Content-Type must be application/json, not valid"
    f" JSON, nested deeper than {MAX_DEPTH} levels, a number longer than {MAX_NUMBER_DIGITS} digits, or"
    " must be a JSON object)"
)
INVALID_BODY = fail(f"validation_error: {NO_JSON_OBJECT}, or a field breaks a limit; the message names it.")
NOT_FOUND = fail("not_found: nothing with that id.")
QUEUE_DOWN = fail(
    "queue_unavailable: Redis cannot be reached; nothing was acknowledged. Retry after Retry-After."
)
# The notify API's: the message was stored before its job could not be published.
MESSAGE_QUEUE_DOWN = fail(
    "queue_unavailable: Redis cannot be reached. Without an idempotency key the message is stored as"
    " failed and never sent: send it again. With one it stays queued and is sent once the queue is back:"
    " retry with the same key after Retry-After to get it. database_unavailable: PostgreSQL cannot be"
    " reached; database_timeout: it did not answer within its statement timeout. Nothing was stored."
)
RETRY_AFTER = {"Retry-After": "Seconds to wait before retrying."}
SIGNATURE_REFUSED = fail(
    "signature_missing / signature_invalid / signature_unverifiable (the secret is not configured)."
)
MALFORMED = fail("malformed_json / malformed_payload: not a webhook this endpoint understands.")

WEBHOOK_NOTE = (
    "Called by the provider, not by API clients. The signature is checked over the raw body before "
    "anything is read; the events are acknowledged only once they are on the queue (a 503 makes the "
    "provider retry), and a redelivery is acknowledged without a second job."
)

TAGS: dict[str, str] = {
    "health": "Liveness, readiness and Prometheus metrics.",
    "webhooks": "Signed provider webhooks (Twilio, Meta WhatsApp Cloud API, Kapso).",
    "messages": "Send WhatsApp messages and follow their delivery.",
    "links": "Link a host-application user to a WhatsApp number with a one-time code.",
    "conversations": "Conversations and their history.",
    "stats": "Activity figures.",
    "sessions": "Chat sessions kept in Redis.",
    "assistant": "The AI assistant's configuration per business number.",
    "docs": "This document.",
}

# --- the table ----------------------------------------------------------------------------------------------

OPERATIONS: dict[str, Operation] = {
    # health
    "GET /healthz": Operation(
        "health",
        "Liveness",
        {200: Reply("The process serves requests.", Health)},
        description="No I/O: a slow database never gets a healthy web process restarted.",
    ),
    "GET /readyz": Operation(
        "health",
        "Readiness",
        {
            200: Reply(
                "Redis responds, so webhooks are taken: status ready when PostgreSQL responds too, degraded"
                " (with the PostgreSQL check's result) when it does not.",
                Readiness,
            ),
            503: Reply("Redis does not respond; checks says so, with the error's type only.", Readiness),
        },
        description=(
            "Each web process checks at most once a second, and a probe that arrives while a check runs (up"
            " to 2 s on PostgreSQL plus 2 s on Redis) gets the previous result: an answer may be a few"
            " seconds old."
        ),
    ),
    "GET /metrics": Operation(
        "health",
        "Prometheus metrics",
        {
            200: Reply(
                "Prometheus text exposition, summed over every web worker.", {"type": "string"}, "text/plain"
            )
        },
    ),
    # webhooks
    "GET /webhooks/twilio": Operation(
        "webhooks",
        "Twilio webhook reachability check",
        {200: Reply("The endpoint is up.", TwilioHello)},
    ),
    "POST /webhooks/twilio": Operation(
        "webhooks",
        "Twilio inbound message or status callback",
        {
            200: Reply("Enqueued (or a duplicate): an empty TwiML answer.", {"type": "string"}, "text/xml"),
            400: fail("malformed_payload: neither a message nor a status callback (or an unreadable form)."),
            403: SIGNATURE_REFUSED,
            503: Reply(QUEUE_DOWN.description, headers=RETRY_AFTER, error=True),
        },
        description=WEBHOOK_NOTE
        + " X-Twilio-Signature is Twilio's HMAC-SHA1 over WAPIPE_PUBLIC_URL + path and the sorted form"
        " fields (https://www.twilio.com/docs/usage/webhooks/webhooks-security).",
        params=(
            Param("X-Twilio-Signature", "header", "Twilio's request signature.", required=True),
            Param(
                "X-Twilio-Webhooks-Signature-Settings",
                "header",
                "Twilio's signature algorithm settings, when it sends them.",
            ),
        ),
        body=Body(
            {"anyOf": [TwilioInbound, TwilioStatus]},
            ("application/x-www-form-urlencoded", "application/json"),
            "Twilio's webhook parameters: an inbound message or a status callback. At most 128 KB (413"
            " beyond, unparsed): Twilio's are a few kilobytes.",
        ),
    ),
    "GET /webhooks/meta": Operation(
        "webhooks",
        "Meta webhook verification handshake",
        {
            200: Reply("hub.challenge, echoed.", {"type": "string"}, "text/plain"),
            403: fail("verification_failed: hub.mode is not subscribe or the token does not match."),
        },
        description="https://developers.facebook.com/docs/graph-api/webhooks/getting-started",
        params=(
            Param("hub.mode", "query", "subscribe", required=True),
            Param("hub.verify_token", "query", "Must equal META_VERIFY_TOKEN.", required=True),
            Param("hub.challenge", "query", "Echoed back on success.", required=True),
        ),
    ),
    "POST /webhooks/meta": Operation(
        "webhooks",
        "Meta WhatsApp Cloud API events",
        {
            200: Reply("Every message and status of the delivery is enqueued.", WebhookAck),
            400: MALFORMED,
            403: SIGNATURE_REFUSED,
            503: Reply(QUEUE_DOWN.description, headers=RETRY_AFTER, error=True),
        },
        description=WEBHOOK_NOTE
        + " X-Hub-Signature-256 is sha256=<hex HMAC of the raw body with META_APP_SECRET> (or, during a"
        " rotation, WAPIPE_META_SECONDARY_APP_SECRET).",
        params=(Param("X-Hub-Signature-256", "header", "sha256=<hex HMAC-SHA256>.", required=True),),
        body=Body(
            MetaWebhook, description="https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks"
        ),
    ),
    "POST /webhooks/kapso": Operation(
        "webhooks",
        "Kapso v2 events, single or batched",
        {
            200: Reply("Enqueued, or a delivery already seen (duplicate: true).", WebhookAck),
            400: MALFORMED,
            403: SIGNATURE_REFUSED,
            503: Reply(QUEUE_DOWN.description, headers=RETRY_AFTER, error=True),
        },
        description=WEBHOOK_NOTE + " https://docs.kapso.ai/docs/platform/webhooks/overview",
        params=(
            Param("X-Webhook-Signature", "header", "Hex HMAC-SHA256 of the raw body.", required=True),
            Param("X-Webhook-Event", "header", "The event, e.g. whatsapp.message.received."),
            Param("X-Webhook-Batch", "header", "true for a buffered delivery."),
            Param(
                "X-Idempotency-Key",
                "header",
                "Marks the whole delivery together with a digest of its signed body: a redelivery (same"
                " key, same body) is acknowledged without re-parsing; another body under the same key is"
                " processed (the header is not signed).",
            ),
        ),
        body=Body({"anyOf": [KapsoEvent, KapsoBatch]}),
    ),
    # messages
    "POST /api/v1/messages": Operation(
        "messages",
        "Send a WhatsApp message",
        {
            200: Reply(
                "A replay: the same idempotency key with the same request; the first message.",
                MessageAccepted,
                headers={"Location": "The message's URL.", "Idempotent-Replayed": "true"},
            ),
            202: Reply(
                "Stored as queued; notify.send is enqueued. Follow it at Location.",
                MessageAccepted,
                headers={"Location": "The message's URL."},
            ),
            409: fail("idempotency_conflict: the key was used for a different request."),
            422: fail(
                f"validation_error (a field breaks WhatsApp's limits, or {NO_JSON_OBJECT}: error.field is"
                " body), invalid_phone,"
                " unsupported_type (the active provider cannot send it), unsupported_content (Twilio cannot"
                " carry a field as given) or invalid_parameter (a template parameter WhatsApp refuses);"
                " error.field names the field for each."
            ),
            503: Reply(MESSAGE_QUEUE_DOWN.description, headers=RETRY_AFTER, error=True),
        },
        description="Text, media, interactive buttons or list, template or reaction; everything WhatsApp"
        " would refuse is refused here first. The caller never waits for the provider.",
        params=(IDEMPOTENCY_KEY,),
        body=Body(
            SendRequest,
            example={"to": "+14155550123", "type": "text", "text": "Ticket #42 is assigned to you"},
        ),
        api_key=True,
    ),
    "GET /api/v1/messages/{message_id}": Operation(
        "messages",
        "An outbound message and its delivery timeline",
        {200: Reply("The message.", OutboundMessageView), 404: NOT_FOUND},
        path_params={"message_id": "The id POST /api/v1/messages answered."},
        api_key=True,
        examples={"message_id": 1},
    ),
    "POST /api/whatsapp/notify": Operation(
        "messages",
        "Send a text message (legacy shape)",
        {
            200: Reply("Stored and queued.", LegacyAccepted),
            409: fail("idempotency_conflict: the Idempotency-Key was used for a different request."),
            422: fail(f"validation_error (a field, or {NO_JSON_OBJECT}) or invalid_phone."),
            503: Reply(MESSAGE_QUEUE_DOWN.description, headers=RETRY_AFTER, error=True),
        },
        description="Kept for existing callers; every answer carries success.",
        params=(IDEMPOTENCY_KEY,),
        body=Body(LegacyNotifyRequest, example={"to": "+14155550123", "message": "Your order has shipped"}),
        api_key=True,
        error_schema=LegacyError,
    ),
    # links
    "POST /api/v1/links": Operation(
        "links",
        "Issue a linking code",
        {
            201: Reply(
                "The code and the message the user sends.", LinkCode, headers={"Cache-Control": "no-store"}
            ),
            409: fail("phone_taken: the number is linked to another user."),
            422: INVALID_BODY,
        },
        body=Body(
            CreateLinkBody,
            example={"user_id": "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f", "phone": "+14155550123"},
        ),
        api_key=True,
    ),
    "POST /api/v1/links/verify": Operation(
        "links",
        "Submit a linking code",
        {
            200: Reply("Linked.", Linked),
            400: fail("invalid_code: the code is not right (the message says how many attempts are left)."),
            404: fail("no_pending_code: no code was issued for this number."),
            409: fail("phone_taken: the number is linked to another user."),
            410: fail("code_expired."),
            422: INVALID_BODY,
            429: fail("code_locked: too many wrong attempts."),
        },
        description="For a host that has proved the user holds the number itself: the code was handed to"
        " the caller by POST /api/v1/links, so submitting it proves nothing about the phone. The proof of"
        " possession is the user sending VERIFY <code> from that number on WhatsApp, which needs no call"
        " here. Send user_id, so the code can link the number to the user it was issued to and no one"
        " else; without it, any user's pending code for the number may match.",
        body=Body(
            VerifyLinkBody,
            example={
                "phone": "+14155550123",
                "code": "123456",
                "user_id": "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
            },
        ),
        api_key=True,
    ),
    "GET /api/v1/links/{user_id}": Operation(
        "links",
        "A user's linked (or pending) number",
        {200: Reply("Linked or pending.", LinkState), 404: NOT_FOUND, 422: INVALID_PARAM},
        description="A link answers only for the WhatsApp account that verified it. It ends, and the user"
        " verifies again, when a message shows the number is another account's now (a recycled number:"
        " another Meta business-scoped user id) or the account moved to another number.",
        path_params={"user_id": "The host application's user UUID."},
        api_key=True,
    ),
    "DELETE /api/v1/links/{user_id}": Operation(
        "links",
        "Unlink a user's number",
        {204: Reply("Unlinked; a pending code is cancelled too."), 404: NOT_FOUND, 422: INVALID_PARAM},
        path_params={"user_id": "The host application's user UUID."},
        api_key=True,
    ),
    # conversations
    "GET /api/v1/conversations": Operation(
        "conversations",
        "List conversations, newest first",
        {200: Reply("One page.", ConversationPage), 422: INVALID_PARAM},
        params=(
            LIMIT,
            CURSOR,
            Param("status", "query", "Only this status.", {"type": "string", "enum": list(STATUSES)}),
            Param(
                "provider",
                "query",
                "Only this provider.",
                {"type": "string", "enum": [p.value for p in Provider]},
            ),
            Param("phone", "query", "Only this contact's number (any usual format)."),
        ),
        api_key=True,
        description="Pages by conversation id, newest first; a conversation keeps its place when new"
        " messages arrive. Following next_cursor from a first page shows each conversation there when that"
        " page was read once (while it still matches the filters). An id is taken when a conversation is"
        " stored, not when its transaction commits, so one can become visible after a newer one was listed:"
        " a later traversal shows it at or near the top. A client keeping a copy in step therefore does not"
        " stop at the first conversation it already has: it reads on until started_at is a few minutes"
        " older than the newest started_at of its previous read (started_at is when the short transaction"
        " storing it began).",
    ),
    "GET /api/v1/conversations/{conversation_id}/messages": Operation(
        "conversations",
        "A conversation's history, oldest first",
        {200: Reply("One page.", MessagePage), 404: NOT_FOUND, 422: INVALID_PARAM},
        params=(LIMIT, CURSOR),
        path_params={"conversation_id": "The conversation's id."},
        api_key=True,
        examples={"conversation_id": 1},
        description="Pages by message id. An id is taken when a message is stored, not when its"
        " transaction commits, so at the live end a message can appear just after a later one: a client"
        " following a conversation as it happens reads again from a cursor a few messages back.",
    ),
    "POST /api/v1/conversations/{conversation_id}/close": Operation(
        "conversations",
        "Close a conversation (ends a human handoff)",
        {200: Reply("Closed (closing a closed one answers the same).", ClosedConversation), 404: NOT_FOUND},
        path_params={"conversation_id": "The conversation's id."},
        api_key=True,
        examples={"conversation_id": 1},
    ),
    # stats
    "GET /api/v1/stats": Operation(
        "stats",
        "Activity figures overall, per provider and per business number",
        {
            200: Reply(
                "The figures, computed at most every 30 s by each server process: generated_at says when.",
                Stats,
            )
        },
        api_key=True,
    ),
    # sessions
    "GET /api/v1/sessions": Operation(
        "sessions",
        "List live chat sessions (masked)",
        {
            200: Reply("About limit sessions.", SessionPage),
            422: INVALID_PARAM,
            503: fail("unavailable: Redis cannot be reached or is not configured."),
        },
        params=(LIMIT, SCAN_CURSOR),
        api_key=True,
    ),
    "DELETE /api/v1/sessions/{phone}": Operation(
        "sessions",
        "Clear a user's chat session",
        {
            204: Reply(
                "Cleared: the user's session and, for each of their conversations, the menu state and the"
                " note of a form under way (their next message is not told the form timed out)."
            ),
            404: fail("not_found: no session for that number."),
            422: INVALID_PARAM,
            503: fail("unavailable: Redis cannot be reached or is not configured."),
        },
        path_params={"phone": "The user's full number, any usual format."},
        api_key=True,
        examples={"phone": "+14155550123"},
    ),
    # assistant configs
    "GET /api/v1/assistant-configs/{number}": Operation(
        "assistant",
        "The assistant config of a business number",
        {
            200: Reply("The stored config.", AssistantConfigView),
            404: fail("not_found: none stored; the deployment's defaults apply."),
            422: INVALID_PARAM,
        },
        path_params={"number": "Our E.164 number (leading +) or Meta's phone_number_id."},
        api_key=True,
        examples={"number": "+14155238886"},
    ),
    "PUT /api/v1/assistant-configs/{number}": Operation(
        "assistant",
        "Replace the assistant config of a business number",
        {200: Reply("The stored config.", AssistantConfigView), 422: INVALID_BODY},
        path_params={"number": "Our E.164 number (leading +) or Meta's phone_number_id."},
        body=Body(
            AssistantConfigBody,
            example={"system_prompt": "You are the helpdesk of ACME. Answer briefly.", "max_tokens": 300},
        ),
        api_key=True,
        examples={"number": "+14155238886"},
    ),
    # this document
    "GET /openapi.json": Operation(
        "docs", "This OpenAPI document", {200: Reply("OpenAPI 3.1.", {"type": "object"})}
    ),
    "GET /docs": Operation(
        "docs", "This document as a page", {200: Reply("HTML.", {"type": "string"}, "text/html")}
    ),
}
