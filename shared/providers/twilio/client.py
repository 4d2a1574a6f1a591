"""Outbound WhatsApp messages through Twilio's Programmable Messaging API, with the official SDK.

``messages.create(from_="whatsapp:+...", to="whatsapp:+...", body=..., status_callback=...)``
(https://www.twilio.com/docs/whatsapp/api#sending-a-free-form-whatsapp-message), the status callback
pointing at our ``/webhooks/twilio`` so delivery receipts come back through the ingress.

Two levels of retry (STYLE.md): tenacity retries this one HTTP call a few times within a short budget on
429 / 5xx / timeouts (honouring Retry-After when it fits the budget); past that the transient
:class:`SendError` goes back to notify.send, which retries later through Celery. 4xx answers are
permanent, with Twilio's error code and message (https://www.twilio.com/docs/api/errors).

The SDK's own extension point, a custom ``http_client`` (a ``TwilioHttpClient`` subclass), is how we
read ``Retry-After`` (the SDK's exception drops response headers) and how ``WAPIPE_TWILIO_API_URL`` points
the real SDK code at a local fake Twilio API in tests.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential_jitter
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from shared.logging import get_logger
from shared.providers.base import OutboundMessage, OutboundType, SendError, SendResult, unsupported
from shared.settings import Settings

log = get_logger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0
# The in-call retry budget: short, so a worker never sits on one message; Celery retries take over after.
RETRY_ATTEMPTS = 3
RETRY_BUDGET_SECONDS = 15.0
# Twilio error codes that mean "slow down" whatever the HTTP status: 20429 Too Many Requests,
# 63018 rate limit exceeded for the WhatsApp channel.
RATE_LIMIT_CODES = frozenset({"20429", "63018"})

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
        self._local.retry_after = _seconds(response.headers.get("Retry-After")) if response.headers else None
        return response

    @property
    def last_retry_after(self) -> float | None:
        return getattr(self._local, "retry_after", None)


def _seconds(value: Any) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP date: rare from Twilio; the backoff schedule applies instead


class TwilioSender:
    """Sends through one Twilio account; thread-safe, one per process."""

    name = "twilio"
    # What _params can send (interactive as its plain-text fallback); the notify API refuses the rest.
    supported_types = frozenset({OutboundType.text, OutboundType.interactive})

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

    def _params(self, message: OutboundMessage) -> dict[str, Any]:
        # Interactive content has no free-form Twilio equivalent (it needs a Content API template): its
        # plain-text fallback is sent instead. Other types come with issue 4.
        if message.type not in (OutboundType.text, OutboundType.interactive) or not message.text:
            raise unsupported(self.name, message)
        sender = message.from_number if (message.from_number or "").startswith("+") else None
        return {
            "from_": _whatsapp(sender or self._default_from),
            "to": _whatsapp(message.to),
            "body": message.text,
            "status_callback": self._status_callback,
        }

    def _create(self, params: dict[str, Any]) -> Any:
        try:
            return self._client.messages.create(**params)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise _error(exc, self._http.last_retry_after) from exc
        except requests.Timeout as exc:
            raise SendError(
                "timeout", f"Twilio did not answer in {REQUEST_TIMEOUT_SECONDS:g}s", permanent=False
            ) from exc
        except requests.ConnectionError as exc:
            raise SendError("connection_error", f"cannot reach Twilio: {exc}", permanent=False) from exc


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
    transient = status == 429 or status >= 500 or code in RATE_LIMIT_CODES
    return SendError(code, text, permanent=not transient, retry_after=retry_after if transient else None)


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
