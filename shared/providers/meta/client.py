"""Outbound through Meta's Graph API: ``POST {META_GRAPH_URL}/{phone_number_id}/messages``, bearer token.

One pooled :class:`httpx.Client` per sender (per process), explicit timeouts;
:meth:`CloudApiSender.send_async` is the notify worker's batch path, the same call on its event loop's
shared aiohttp session (shared/providers/aio.py). Graph errors become
:class:`SendError`: throughput limits (HTTP 429, 130429, 131056, 80007) and server trouble are transient,
honouring ``Retry-After``, but a gateway's 502 or 504 is :class:`OutcomeUnknown` (the server behind it had
the request); re-engagement (131047), opted out (131050), invalid recipients and bad parameters
are permanent, so the notify stage fails them at once with the reason; a refused token or permission, or
a locked or policy-blocked business account (131031, 368), or a business number deleted or out of the
token's reach (33, 100 with subcode 33), is :class:`AccountRefused`, which notify keeps
as a dead letter to replay once the account is fixed.

- messages: https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages
- error codes: https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from shared.logging import get_logger
from shared.providers.aio import provider_call
from shared.providers.base import (
    ACCOUNT_STATUSES,
    RETRIED_4XX_STATUSES,
    AccountRefused,
    OutboundMessage,
    OutboundType,
    OutcomeUnknown,
    SendError,
    SendResult,
    gateway_outcome,
    retry_after_seconds,
)
from shared.settings import Settings
from shared.wire.events import our_id_tag

# WhatsApp's limits, defined once beside the notify API's request, which checks them too.
from shared.wire.outbound_api import (
    BUTTON_TITLE_MAX,
    BUTTONS_MAX,
    INTERACTIVE_BODY_MAX,
    ROW_TITLE_MAX,
    ROWS_MAX,
    TEXT_MAX,
)

log = get_logger(__name__)

# Throughput and pacing: back off and retry (https://developers.facebook.com/docs/whatsapp/cloud-api/overview).
THROTTLED = frozenset({4, 80007, 130429, 131056})
# Meta's own temporary failures.
TEMPORARY = frozenset({1, 2, 131000, 131016, 133004})
# Our token or the app's permissions refused, or the business account locked: the account's problem, not
# the message's (https://developers.facebook.com/docs/graph-api/guides/error-handling: 0 AuthException, 3
# a capability or permission the app lacks, 10 and 200-299 permissions, 190 access token expired or
# invalid; WhatsApp's 33, the business phone number deleted, 131031, the WhatsApp Business Account
# restricted for a policy or a wrong two-step PIN, and 368, temporarily blocked for policy violations,
# refuse every send until lifted). Checked before the HTTP status: Meta sends 3 with a 500, which is no
# server trouble to retry for a day.
ACCOUNT = frozenset({0, 3, 10, 33, 190, *range(200, 300), 368, 131031})
# Graph's 100 is mostly a bad parameter of this message, but with subcode 33 it says the node the call
# names, our phone number id, "does not exist, cannot be loaded due to missing permissions": the token lost
# the number (a revoked asset, a number moved to another account), so every send from it fails alike.
# https://developers.facebook.com/docs/graph-api/guides/error-handling
UNREACHABLE_NODE = (100, 33)
# Permanent for this message whatever we do: recipient or content problems.
PERMANENT = frozenset(
    {100, 131008, 131009, 131021, 131026, 131030, 131047, 131050, 131051,
     131052, 131053, 132000, 132001, 132005, 132007, 132012, 132015, 132016, 133010, 131062}
)  # fmt: skip

# WhatsApp refuses a template parameter holding a line break or tab, or more than 4 spaces in a row, whatever
# the approved template says (error 132018, "Param text cannot have new-line/tab characters or more than 4
# consecutive spaces"): checked before storing, so the caller gets a 422 rather than a failed message.
_PARAMETER_REFUSED = re.compile(r"[\r\n\t]| {5,}")

_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Headers describing the body as it came over the wire, not as aiohttp hands it over (decompressed).
_DECODED_BY_AIOHTTP = frozenset({"content-encoding", "content-length"})


class CloudApiSender:
    """A :class:`shared.providers.base.Sender` for any endpoint speaking the Cloud API's messages call."""

    name = "meta"

    def __init__(
        self,
        *,
        base_url: str,
        phone_number_id: str,
        headers: dict[str, str],
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        self._phone_number_id = phone_number_id
        self._graph_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._client = client or _pooled_client(timeout, headers)

    @classmethod
    def check(cls, message: OutboundMessage, settings: Settings) -> None:
        """Raise :class:`TemplateParameterRefused` if WhatsApp would refuse ``message``'s template
        parameters; no call is made. The notify API asks before storing (a 422 naming the field)."""
        if message.type is OutboundType.template and message.template is not None:
            _check_parameters(message.template.variables)

    def close(self) -> None:
        self._client.close()

    def send(self, message: OutboundMessage) -> SendResult:
        body = build_payload(message)
        # Inbound Meta messages record our phone_number_id as the business number: answer from it.
        sender_id = message.from_number if (message.from_number or "").isdigit() else self._phone_number_id
        response = self._post(f"{self._graph_url}/{sender_id}/messages", body)
        return self._result(message, response)

    async def send_async(self, message: OutboundMessage, session: aiohttp.ClientSession) -> SendResult:
        """One messages call on the event loop, with the loop's pooled session; no retries in the call
        (the notify worker paces and retries every attempt)."""
        body = build_payload(message)
        sender_id = message.from_number if (message.from_number or "").isdigit() else self._phone_number_id
        with provider_call("Graph API"):
            async with session.post(
                f"{self._graph_url}/{sender_id}/messages", json=body, headers=self._headers
            ) as answer:
                response = _as_httpx_response(answer.status, answer.headers, await answer.read())
            return self._result(message, response)

    def _result(self, message: OutboundMessage, response: httpx.Response) -> SendResult:
        if response.status_code >= 400:
            raise graph_send_error(response)
        try:
            wamid = response.json()["messages"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            wamid = None
        if not isinstance(wamid, str) or not wamid:
            # It took the request: the message may exist without our knowing its id.
            raise OutcomeUnknown("Graph API answered without a message id")
        log.info("meta.sent", message_id=message.id, type=str(message.type))
        return SendResult(provider=self.name, provider_message_id=wamid)

    def mark_read(
        self, provider_message_id: str, *, typing: bool = True, from_number: str | None = None
    ) -> None:
        """Mark an inbound message read (blue ticks) and, with ``typing``, show the typing indicator until
        we reply or 25 seconds pass; raise :class:`SendError` when the Graph API refuses.
        https://developers.facebook.com/docs/whatsapp/cloud-api/typing-indicators
        """
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": provider_message_id,
        }
        if typing:
            body["typing_indicator"] = {"type": "text"}
        sender_id = from_number if (from_number or "").isdigit() else self._phone_number_id
        response = self._post(f"{self._graph_url}/{sender_id}/messages", body)
        if response.status_code >= 400:
            raise graph_send_error(response)

    @retry(
        # Only failures where the request surely never reached Meta, so a retry cannot double-send.
        retry=retry_if_exception(lambda exc: isinstance(exc, _CONNECT_ERRORS)),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.2, max=2),
        reraise=True,
    )
    def _post_once(self, url: str, body: dict[str, Any]) -> httpx.Response:
        return self._client.post(url, json=body)

    def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return self._post_once(url, body)
        except _CONNECT_ERRORS as exc:  # still none after the retries: nothing was sent
            raise SendError(
                "unreachable", f"Graph API unreachable: {type(exc).__name__}", permanent=False
            ) from None
        except httpx.HTTPError as exc:  # a read timeout, a dropped connection: Meta may have it
            raise OutcomeUnknown(
                f"Graph API may have the message, but its answer was lost ({type(exc).__name__})"
            ) from None


class MetaSender(CloudApiSender):
    """Meta's own Graph API, authenticated with the system user's bearer token."""

    name = "meta"

    def __init__(
        self, settings: Settings, *, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        if not settings.meta_access_token or not settings.meta_phone_number_id:
            raise SendError(
                "not_configured", "META_ACCESS_TOKEN and META_PHONE_NUMBER_ID are required", permanent=True
            )
        super().__init__(
            base_url=settings.meta_graph_url,
            phone_number_id=settings.meta_phone_number_id,
            headers={"Authorization": f"Bearer {settings.meta_access_token.get_secret_value()}"},
            timeout=timeout,
            client=client,
        )


def _pooled_client(timeout: float, headers: dict[str, str]) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=5.0),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        headers=headers,
    )


def _as_httpx_response(status: int, headers: Mapping[str, str], body: bytes) -> httpx.Response:
    """An aiohttp answer as the httpx response the Graph API's error classification reads.

    aiohttp has already decompressed a gzip or deflate body but keeps its ``Content-Encoding`` (and the
    compressed ``Content-Length``): an httpx response given both would decompress the body again and fail,
    on a 2xx that sent the message as much as on a 429 whose Retry-After must be kept.
    """
    kept = [(name, value) for name, value in headers.items() if name.lower() not in _DECODED_BY_AIOHTTP]
    return httpx.Response(status, headers=kept, content=body)


def graph_send_error(response: httpx.Response) -> SendError:
    """Classify a Graph API error response; one not shaped like Graph's (a proxy's ``{"error": "..."}``, a
    list, an HTML page) is classified by its HTTP status alone."""
    unknown = gateway_outcome(response.status_code, "Graph API")
    if unknown is not None:
        return unknown
    error = _graph_error_object(response)
    code = _graph_code(error.get("code"))
    error_data = error.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    text = str(details or error.get("message") or f"HTTP {response.status_code}")
    label = str(code) if code is not None else f"http_{response.status_code}"
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    if response.status_code == 429 or code in THROTTLED:
        return SendError(label, text, permanent=False, retry_after=retry_after)
    if code in ACCOUNT:
        return AccountRefused(label, text)
    if code in TEMPORARY or response.status_code >= 500 or response.status_code in RETRIED_4XX_STATUSES:
        return SendError(label, text, permanent=False, retry_after=retry_after)
    if response.status_code in ACCOUNT_STATUSES:
        return AccountRefused(label, text)
    if (code, _graph_code(error.get("error_subcode"))) == UNREACHABLE_NODE:
        return AccountRefused(label, text)
    if code in PERMANENT or response.status_code in (400, 404):
        return SendError(label, text, permanent=True)
    return SendError(label, text, permanent=response.status_code < 500)


def _graph_error_object(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of a Graph error body, or what can be taken from another shape: a bare string
    error is its message; anything else is nothing."""
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return {"message": error}
    return error if isinstance(error, dict) else {}


def _graph_code(value: Any) -> int | None:
    """Graph's numeric error code; a proxy may write it as a string of digits, and anything else is none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def build_payload(message: OutboundMessage) -> dict[str, Any]:
    """The Cloud API request body for ``message``; limits are checked here, before any call.

    It names our message in ``biz_opaque_callback_data``, which Meta echoes in the message's status
    webhooks: should the answer to this call be lost, its receipts still name the message, which then
    settles as sent or delivered instead of outcome unknown (workers/status.py)."""
    base: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.to,
        "biz_opaque_callback_data": our_id_tag(message.id),
    }
    kind = message.type
    if kind is OutboundType.text:
        text = message.text or ""
        if not text.strip():
            raise SendError("empty_text", "a text message needs a body", permanent=True)
        if len(text) > TEXT_MAX:
            raise SendError(
                "text_too_long", f"text is {len(text)} characters; WhatsApp allows {TEXT_MAX}", permanent=True
            )
        return base | {"type": "text", "text": {"body": text, "preview_url": "http" in text}}
    if kind is OutboundType.media and message.media is not None:
        media = message.media
        obj: dict[str, Any] = {"link": media.url}
        if media.caption and media.kind not in ("audio", "sticker"):
            obj["caption"] = media.caption
        if media.filename and media.kind == "document":
            obj["filename"] = media.filename
        return base | {"type": media.kind, media.kind: obj}
    if kind is OutboundType.interactive and message.interactive is not None:
        return base | {"type": "interactive", "interactive": _interactive(message)}
    if kind is OutboundType.template and message.template is not None:
        return base | {"type": "template", "template": _template(message)}
    if kind is OutboundType.reaction and message.reaction is not None:
        reaction = message.reaction
        return base | {
            "type": "reaction",
            "reaction": {"message_id": reaction.message_id, "emoji": reaction.emoji},
        }
    raise SendError("invalid_message", f"a {kind} message without its {kind} content", permanent=True)


def _interactive(message: OutboundMessage) -> dict[str, Any]:
    spec = message.interactive
    assert spec is not None
    if len(spec.body) > INTERACTIVE_BODY_MAX:
        raise SendError(
            "body_too_long", f"interactive body over {INTERACTIVE_BODY_MAX} characters", permanent=True
        )
    out: dict[str, Any] = {"body": {"text": spec.body}}
    if spec.header:
        out["header"] = {"type": "text", "text": spec.header}
    if spec.footer:
        out["footer"] = {"text": spec.footer}
    if spec.kind == "buttons":
        if not 1 <= len(spec.buttons) <= BUTTONS_MAX:
            raise SendError("too_many_buttons", f"reply buttons must be 1 to {BUTTONS_MAX}", permanent=True)
        for button in spec.buttons:
            if len(button.title) > BUTTON_TITLE_MAX:
                raise SendError(
                    "button_title_too_long",
                    f"button title {button.title!r} is over {BUTTON_TITLE_MAX} characters",
                    permanent=True,
                )
        out |= {
            "type": "button",
            "action": {
                "buttons": [{"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in spec.buttons]
            },
        }
        return out
    rows = [row for section in spec.sections for row in section.rows]
    if not 1 <= len(rows) <= ROWS_MAX:
        raise SendError("too_many_rows", f"a list needs 1 to {ROWS_MAX} rows", permanent=True)
    for row in rows:
        if len(row.title) > ROW_TITLE_MAX:
            raise SendError(
                "row_title_too_long",
                f"row title {row.title!r} is over {ROW_TITLE_MAX} characters",
                permanent=True,
            )
    sections = []
    for section in spec.sections:
        entry: dict[str, Any] = {
            "rows": [
                {"id": r.id, "title": r.title} | ({"description": r.description} if r.description else {})
                for r in section.rows
            ]
        }
        if section.title:
            entry["title"] = section.title
        sections.append(entry)
    out |= {"type": "list", "action": {"button": spec.button_text or "Options", "sections": sections}}
    return out


class TemplateParameterRefused(SendError):
    """A template parameter WhatsApp refuses: permanent. ``field`` names it in the notify API request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("invalid_parameter", message, permanent=True)
        self.field = field


def _check_parameters(variables: list[str] | dict[str, str]) -> None:
    problem = "WhatsApp refuses a template parameter with a new line, a tab or more than 4 spaces in a row"
    if isinstance(variables, dict):
        for name, value in variables.items():
            if _PARAMETER_REFUSED.search(value):
                raise TemplateParameterRefused("template.variables", f"variable {name!r}: {problem}")
        return
    for position, value in enumerate(variables):
        if _PARAMETER_REFUSED.search(value):
            raise TemplateParameterRefused(f"template.variables[{position}]", problem)


def _template(message: OutboundMessage) -> dict[str, Any]:
    spec = message.template
    assert spec is not None
    _check_parameters(spec.variables)
    out: dict[str, Any] = {"name": spec.name, "language": {"code": spec.language}}
    if isinstance(spec.variables, dict):
        parameters = [
            {"type": "text", "parameter_name": name, "text": value} for name, value in spec.variables.items()
        ]
    else:
        parameters = [{"type": "text", "text": value} for value in spec.variables]
    if parameters:
        out["components"] = [{"type": "body", "parameters": parameters}]
    return out
