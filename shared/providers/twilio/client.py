"""Outbound WhatsApp messages through Twilio's Programmable Messaging API, with the official SDK.

``messages.create(from_="whatsapp:+...", to="whatsapp:+...", body=..., status_callback=...)``
(https://www.twilio.com/docs/whatsapp/api#sending-a-free-form-whatsapp-message), the status callback
pointing at our ``/webhooks/twilio`` so delivery receipts come back through the ingress.

Two levels of retry (STYLE.md): tenacity retries this one HTTP call a few times within a short budget on
429 / 500 / 503 and on a connection that was never made (honouring Retry-After when it fits the budget);
past that the transient :class:`SendError` goes back to notify.send, which retries later through Celery.
What may have reached Twilio is never retried: a read timeout, a connection dropped after the request went
out, a gateway's 502 or 504 (the server behind it had the request,
:func:`shared.providers.base.gateway_outcome`): the outcome is unknown. 4xx answers are
permanent, with Twilio's error code and message (https://www.twilio.com/docs/api/errors); refused
credentials (401, 403, 20003) or From number (63007, 21212, 21606) are :class:`AccountRefused`, kept as a
dead letter to replay once fixed.

The SDK's own extension point, a custom ``http_client`` (a ``TwilioHttpClient`` subclass), is how we
read ``Retry-After`` (the SDK's exception drops response headers) and how ``WAPIPE_TWILIO_API_URL`` points
the real SDK code at a local fake Twilio API in tests.

:meth:`TwilioSender.send_async` is the notify worker's batch path (shared/providers/aio.py): the same
documented request the SDK makes (a form POST to ``/2010-04-01/Accounts/{AccountSid}/Messages.json`` with
basic auth, https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource) on the
loop's shared aiohttp session. Measured per send against a fake Twilio API: the sync SDK in a thread pool
~2.4 ms of CPU, the SDK's own async client ~0.8 ms, this ~0.6 ms. It makes exactly one call: transient
failures go back to notify, which paces (and so counts) every attempt.

How each outbound type maps (:func:`content_params`; the notify API calls :meth:`TwilioSender.check` first, so
what Twilio cannot send is a 422 naming the field, never a stored message that fails later):

- text: ``Body``.
- media: one ``MediaUrl`` (WhatsApp takes one attachment per message; Twilio ignores the rest) with the
  caption as ``Body`` (https://www.twilio.com/docs/whatsapp/guidance-whatsapp-media-messages). Twilio cannot
  set a document's caption or file name: the recipient sees the file name from the URL's last path
  segment. So a document caption is refused, and a ``filename`` is accepted only when it is that name
  (nothing is lost by not sending it); otherwise it is refused, saying to rename the URL or leave it out.
  A ``.webp`` image arrives as a sticker; Twilio checks the URL's ``Content-Type`` itself.
- template: ``ContentSid`` + ``ContentVariables`` (a JSON object: ``{"1": ...}`` for positional variables,
  the names for named ones; https://www.twilio.com/docs/content/send-templates-created-with-the-content-template-builder).
  Twilio knows WhatsApp-approved templates only by their Content SID ``HX...``: the request's
  ``template.content_sid``, else ``WAPIPE_TWILIO_CONTENT_SIDS`` by ``name:language`` then by ``name``.
  Without either the template is refused, naming the setting to fill in.
- interactive (reply buttons, lists): Twilio has no ad hoc interactive messages; they exist only as
  pre-created Content templates (``twilio/quick-reply``, ``twilio/list-picker``). Ad hoc ones go as their
  plain-text fallback, the stored body with the options numbered, which is what the flows parse anyway.
  A caller who created such a Content template sends it as ``type: template`` with its ``content_sid``.
- reaction: Twilio's WhatsApp API cannot send reactions; the notify API refuses them (``supported_types``).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import aiohttp
import requests
import urllib3
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential_jitter
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from shared.logging import get_logger
from shared.providers.aio import provider_call
from shared.providers.base import (
    ACCOUNT_STATUSES,
    RETRIED_4XX_STATUSES,
    AccountRefused,
    Media,
    OutboundMessage,
    OutboundType,
    OutcomeUnknown,
    SendError,
    SendResult,
    Template,
    gateway_outcome,
    retry_after_seconds,
    unsupported,
)
from shared.providers.twilio.signature import RETRY_FRAGMENT
from shared.settings import Settings
from shared.wire.twilio import OUR_ID_PARAM

log = get_logger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0
# The in-call retry budget: short, so a worker never sits on one message; Celery retries take over after.
RETRY_ATTEMPTS = 3
RETRY_BUDGET_SECONDS = 15.0
# Twilio error codes that mean "slow down" whatever the HTTP status: 20429 Too Many Requests,
# 63018 rate limit exceeded for the WhatsApp channel, 21611 the From number's queue of messages is full
# (https://www.twilio.com/docs/api/errors/21611: sent once the queue drains, so the message waits too).
RATE_LIMIT_CODES = frozenset({"20429", "63018", "21611"})
# Our credentials refused (20003 Authenticate, with a 401), or the account's access (a 403,
# ACCOUNT_STATUSES), or our From number (https://www.twilio.com/docs/api/errors: 63007 no WhatsApp sender
# for it, 21212 not a valid From, 21606 not a number of the account that can send): the account's
# problem, not the message's; every send fails alike until the configuration is fixed.
ACCOUNT_CODES = frozenset({"20003", "63007", "21212", "21606"})
API_URL = "https://api.twilio.com"
# The SDK's ``messages.create`` arguments -> Twilio's form fields (a list value repeats the field).
FORM_FIELDS = {
    "from_": "From",
    "to": "To",
    "body": "Body",
    "media_url": "MediaUrl",
    "content_sid": "ContentSid",
    "content_variables": "ContentVariables",
    "status_callback": "StatusCallback",
}
# Content variables (https://www.twilio.com/docs/content/using-variables-with-content-api): at most 100 per
# message, keys without spaces of at most 16 characters, values of at most 1,600 characters.
CONTENT_VARIABLES_MAX = 100
CONTENT_VARIABLE_KEY = re.compile(r"^[A-Za-z0-9_]{1,16}$")
CONTENT_VARIABLE_VALUE_MAX = 1600
MEDIA_GUIDE = "https://www.twilio.com/docs/whatsapp/guidance-whatsapp-media-messages"

# The SDK logs every request and response at INFO; keep that out of our logs unless something is wrong.
_sdk_logger = logging.getLogger("wapipe.twilio.http")
_sdk_logger.setLevel(logging.WARNING)


class _HttpClient(TwilioHttpClient):
    """The SDK's HTTP client, pointed at ``base_url`` when set, remembering each thread's Retry-After."""

    def __init__(self, base_url: str | None, timeout: float) -> None:
        super().__init__(timeout=timeout, logger=_sdk_logger)
        self._base = urlsplit(base_url) if base_url else None
        self._local = threading.local()

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        if self._base is not None:
            parts = urlsplit(url)
            url = urlunsplit((self._base.scheme, self._base.netloc, parts.path, parts.query, ""))
        self._local.retry_after = None
        response = super().request(method, url, *args, **kwargs)
        self._local.retry_after = (
            retry_after_seconds(response.headers.get("Retry-After")) if response.headers else None
        )
        return response

    @property
    def last_retry_after(self) -> float | None:
        return getattr(self._local, "retry_after", None)


class TwilioSender:
    """Sends through one Twilio account; thread-safe, one per process."""

    name = "twilio"
    # Twilio's Messages API refuses a longer Body for good (error 21617), whatever WhatsApp itself takes.
    text_max = 1600
    # What content_params can send (interactive as its plain-text fallback); the notify API refuses the rest.
    supported_types = frozenset(
        {OutboundType.text, OutboundType.media, OutboundType.interactive, OutboundType.template}
    )

    def __init__(self, settings: Settings) -> None:
        if not (
            settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_whatsapp_number
        ):
            raise ValueError("TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_WHATSAPP_NUMBER are required")
        self._http = _HttpClient(settings.twilio_api_url, REQUEST_TIMEOUT_SECONDS)
        self._client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            http_client=self._http,
            environment={},  # never pick up TWILIO_EDGE / TWILIO_REGION behind our back
        )
        self._default_from = settings.twilio_whatsapp_number
        self._status_callback = f"{settings.public_url}/webhooks/twilio"
        base = (settings.twilio_api_url or API_URL).rstrip("/")
        self._messages_url = f"{base}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json"
        credentials = f"{settings.twilio_account_sid}:{settings.twilio_auth_token.get_secret_value()}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        self._content_sids = dict(settings.twilio_content_sids)

    @classmethod
    def check(cls, message: OutboundMessage, settings: Settings) -> None:
        """Raise :class:`Unsendable` if Twilio cannot send ``message`` as given; no call is made.

        The notify API asks before storing (a 422 naming the field); ``send`` fails the same way.
        """
        content_params(message, settings.twilio_content_sids)

    def send(self, message: OutboundMessage) -> SendResult:
        params = self._params(message)
        retrying = Retrying(
            stop=stop_after_attempt(RETRY_ATTEMPTS) | stop_after_delay(RETRY_BUDGET_SECONDS),
            wait=_wait,
            retry=retry_if_exception(_retry_now),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                created = self._create(params)
        return SendResult(provider=self.name, provider_message_id=created.sid, status="sent")

    async def send_async(self, message: OutboundMessage, session: aiohttp.ClientSession) -> SendResult:
        """One create call on the event loop, with the loop's pooled session; no retries in the call."""
        form = [
            (FORM_FIELDS[name], item)
            for name, value in self._params(message).items()
            for item in (value if isinstance(value, list) else [value])
        ]
        with provider_call("Twilio"):
            async with session.post(
                self._messages_url, data=form, headers={"Authorization": self._authorization}
            ) as response:
                status, raw = response.status, await response.read()
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            return self._created(status, _json_object(raw), retry_after)

    def _created(self, status: int, body: dict[str, Any], retry_after: float | None) -> SendResult:
        """The create call's answer: the message's sid, or the error it is."""
        if status in (200, 201) and isinstance(body.get("sid"), str) and body["sid"]:
            return SendResult(provider=self.name, provider_message_id=str(body["sid"]), status="sent")
        if status < 400:  # it took the request: the message may exist without our knowing its sid
            raise OutcomeUnknown(f"Twilio answered {status} without a message sid")
        error = _classify(status, str(body.get("code") or status), str(body.get("message") or ""))
        raise _with_retry_after(error, retry_after)

    def _params(self, message: OutboundMessage) -> dict[str, Any]:
        content = content_params(message, self._content_sids)
        sender = message.from_number if (message.from_number or "").startswith("+") else None
        return {
            "from_": _whatsapp(sender or self._default_from),
            "to": _whatsapp(message.to),
            **content,
            # Our message id in the callback's URL (signed by Twilio with it): should the answer to this
            # call be lost, its receipts still name the message (workers/status.py). The fragment asks
            # Twilio to retry a receipt the ingress could not take (RETRY_FRAGMENT).
            "status_callback": (
                f"{self._status_callback}?{urlencode({OUR_ID_PARAM: message.id})}{RETRY_FRAGMENT}"
            ),
        }

    def _create(self, params: dict[str, Any]) -> Any:
        try:
            return self._client.messages.create(**params)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise _error(exc, self._http.last_retry_after) from exc
        except (requests.ConnectTimeout, requests.ConnectionError) as exc:
            if isinstance(exc, requests.ConnectTimeout) or _no_connection(exc):
                raise SendError("connection_error", f"cannot reach Twilio: {exc}", permanent=False) from exc
            raise OutcomeUnknown(f"Twilio may have the message, but its answer was lost: {exc}") from exc
        except requests.Timeout as exc:  # read timeout: Twilio had the request
            raise OutcomeUnknown(
                f"Twilio did not answer in {REQUEST_TIMEOUT_SECONDS:g}s; it may have the message"
            ) from exc


class Unsendable(SendError):
    """Twilio cannot send this message as given: permanent. ``field`` names the part of the notify API
    request at fault (``media.filename``, ``template.content_sid``...) for the API's 422."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("unsupported_content", message, permanent=True)
        self.field = field


def content_params(message: OutboundMessage, content_sids: Mapping[str, str]) -> dict[str, Any]:
    """The SDK's ``messages.create`` arguments that carry the content (everything but from, to, callback)."""
    kind = message.type
    if kind in (OutboundType.text, OutboundType.interactive):
        # Interactive: the plain-text fallback with numbered options (see the module docstring).
        if not (message.text or "").strip():
            raise Unsendable("text", f"a {kind} message needs its plain text for Twilio")
        if len(message.text) > TwilioSender.text_max:
            limit, length = TwilioSender.text_max, len(message.text)
            raise Unsendable("text", f"Twilio sends at most {limit} characters; this text has {length}")
        return {"body": message.text}
    if kind is OutboundType.media and message.media is not None:
        return _media_params(message.media)
    if kind is OutboundType.template and message.template is not None:
        return _template_params(message.template, content_sids)
    if kind in (OutboundType.media, OutboundType.template):
        raise Unsendable(str(kind), f"a {kind} message without its {kind} content")
    raise unsupported(TwilioSender.name, message)


def _media_params(media: Media) -> dict[str, Any]:
    if not media.url.startswith("https://"):
        raise Unsendable("media.url", "must be an https:// URL Twilio can fetch")
    if media.caption and media.kind in ("document", "audio", "sticker"):
        raise Unsendable(
            "media.caption",
            f"Twilio sends no caption with a WhatsApp {media.kind} ({MEDIA_GUIDE}); send the text as its "
            "own message",
        )
    if media.filename and media.kind == "document":
        shown = _url_filename(media.url)
        if media.filename != shown:
            raise Unsendable(
                "media.filename",
                f"Twilio cannot name a WhatsApp document ({MEDIA_GUIDE}): the recipient sees the URL's file "
                f"name {shown!r}; end the URL's path with {media.filename!r} or leave filename out",
            )
    params: dict[str, Any] = {"media_url": [media.url]}
    if media.caption:
        params["body"] = media.caption
    return params


def _url_filename(url: str) -> str:
    return PurePosixPath(unquote(urlsplit(url).path)).name


def _template_params(template: Template, content_sids: Mapping[str, str]) -> dict[str, Any]:
    sid = (
        template.content_sid
        or content_sids.get(f"{template.name}:{template.language}")
        or content_sids.get(template.name)
    )
    if sid is None:
        raise Unsendable(
            "template.content_sid",
            f"Twilio sends WhatsApp templates by Content SID: give template.content_sid (HX...) or map "
            f"{template.name}:{template.language}=HX... in WAPIPE_TWILIO_CONTENT_SIDS",
        )
    params: dict[str, Any] = {"content_sid": sid}
    variables = _content_variables(template.variables)
    if variables:
        params["content_variables"] = json.dumps(variables, ensure_ascii=False, separators=(",", ":"))
    return params


def _content_variables(variables: list[str] | dict[str, str]) -> dict[str, str]:
    """Positional variables are Twilio's ``{{1}}``, ``{{2}}``...; named ones keep their names."""
    if isinstance(variables, dict):
        named = dict(variables)
    else:
        named = {str(position): value for position, value in enumerate(variables, start=1)}
    if len(named) > CONTENT_VARIABLES_MAX:
        raise Unsendable(
            "template.variables", f"Twilio takes at most {CONTENT_VARIABLES_MAX} variables; got {len(named)}"
        )
    for key, value in named.items():
        if not CONTENT_VARIABLE_KEY.fullmatch(key):
            raise Unsendable(
                "template.variables",
                f"variable name {key!r}: Twilio's are letters, digits or _, at most 16 characters",
            )
        if len(value) > CONTENT_VARIABLE_VALUE_MAX:
            raise Unsendable(
                "template.variables",
                f"variable {key!r} is {len(value)} characters; Twilio allows {CONTENT_VARIABLE_VALUE_MAX}",
            )
    return named


def _json_object(raw: bytes) -> dict[str, Any]:
    """Twilio's JSON answer as an object; empty when it is none (not JSON, not UTF-8, not an object), which
    leaves its HTTP status to say what happened."""
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:  # UnicodeDecodeError included
        return {}
    return body if isinstance(body, dict) else {}


def _whatsapp(number: str) -> str:
    return number if number.startswith("whatsapp:") else f"whatsapp:{number}"


def _error(exc: TwilioRestException | TwilioServiceException, retry_after: float | None) -> SendError:
    status = int(exc.status or 0)
    code = str(exc.code or status)
    if isinstance(exc, TwilioServiceException):
        text = exc.detail or exc.title
    else:
        # The SDK prefixes Twilio's own message with "Unable to create record: ".
        text = str(exc.msg).split(": ", 1)[-1] if exc.msg else f"HTTP {status}"
    return _with_retry_after(_classify(status, code, text), retry_after)


def _classify(status: int, code: str, text: str) -> SendError:
    """A gateway's 502 or 504 is an unknown outcome; 408, 429, other 5xx and Twilio's rate-limit codes are
    transient; refused credentials are the account's (:class:`AccountRefused`); every other error answer
    is permanent."""
    unknown = gateway_outcome(status, "Twilio")
    if unknown is not None:
        return unknown
    transient = status in (429, *RETRIED_4XX_STATUSES) or status >= 500 or code in RATE_LIMIT_CODES
    if not transient and (code in ACCOUNT_CODES or status in ACCOUNT_STATUSES):
        return AccountRefused(code, text or f"HTTP {status}")
    return SendError(code, text or f"HTTP {status}", permanent=not transient)


def _with_retry_after(error: SendError, retry_after: float | None) -> SendError:
    if not error.permanent:
        error.retry_after = retry_after
    return error


def _no_connection(exc: requests.ConnectionError) -> bool:
    """requests' ConnectionError also covers a connection lost after the request was sent; this is only
    the case where none was made (refused, unresolvable)."""
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _retry_now(exc: BaseException) -> bool:
    """Retry inside the call only transient errors whose Retry-After (if any) fits the short budget."""
    if not isinstance(exc, SendError) or exc.permanent:
        return False
    return exc.retry_after is None or exc.retry_after <= RETRY_BUDGET_SECONDS / RETRY_ATTEMPTS


_backoff = wait_exponential_jitter(multiplier=0.5, max=4.0, jitter=0.5)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    retry_after = exc.retry_after if isinstance(exc, SendError) else None
    return max(retry_after or 0.0, _backoff(state))
