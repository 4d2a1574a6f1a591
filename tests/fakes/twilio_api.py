"""A fake Twilio REST API on 127.0.0.1: the real ``twilio`` SDK talks to it through ``WAPIPE_TWILIO_API_URL``.

It speaks enough of ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``
(https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource): a form body,
HTTP basic auth with the account SID and auth token, and a ``201`` JSON answer shaped like Twilio's with a
fresh ``SM...`` sid and status ``queued``. Tests script failures first with :meth:`FakeTwilioAPI.respond`
(for example ``respond(500)`` then the next request succeeds, or ``respond(429, retry_after=1)``, or
``respond(400, code=21211, message="Invalid 'To' Phone Number")``); scripted answers are used in order,
one per request, and the default answer follows.

Everything received is recorded (:attr:`received`); :meth:`created` lists only the messages answered 201,
i.e. what Twilio would really have sent. Use it as a context manager, or call :meth:`start`/:meth:`stop`::

    with FakeTwilioAPI() as fake:
        env = {"WAPIPE_TWILIO_API_URL": fake.url, **fake.credentials_env()}
"""

from __future__ import annotations

import base64
import bisect
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.http_server import FakeServer, Incoming, Reply, Scripted, json_reply, retry_after_header

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "fake-twilio-auth-token"
WHATSAPP_NUMBER = "+14155238886"  # Twilio's WhatsApp sandbox number


@dataclass
class Received:
    """One request as the fake saw it; ``form`` keeps the last value of each form field, ``fields`` every
    value in order (``MediaUrl`` may repeat). :attr:`media_urls`, :attr:`content_sid` and
    :attr:`content_variables` read the typed-content parameters
    (https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource)."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]
    status: int  # what the fake answered
    sid: str | None = None  # the created message's sid, for 201 answers
    fields: dict[str, list[str]] = field(default_factory=dict)
    # time.monotonic() when its connection came in (tests/fakes/http_server.py Incoming.arrived): what a
    # provider's rate limiter would count.
    arrived: float = 0.0

    @property
    def media_urls(self) -> list[str]:
        return self.fields.get("MediaUrl", [])

    @property
    def content_sid(self) -> str | None:
        return self.form.get("ContentSid")

    @property
    def content_variables(self) -> Any:
        """``ContentVariables`` parsed: Twilio requires a JSON string (error 21656 otherwise)."""
        raw = self.form.get("ContentVariables")
        return json.loads(raw) if raw is not None else None


def busiest_second(times: Iterable[float]) -> int:
    """The most requests in any closed one-second window [t, t + 1]: what pacing is judged by."""
    ordered = sorted(times)
    return max((bisect.bisect_right(ordered, at + 1.0) - i for i, at in enumerate(ordered)), default=0)


def twilio_error(status: int, code: int | None = None, message: str = "") -> dict[str, Any]:
    """Twilio's error body (https://www.twilio.com/docs/usage/twilios-response#response-formats-exceptions)."""
    code = code or {400: 21211, 401: 20003, 404: 20404, 429: 20429}.get(status, 20500)
    return {
        "code": code,
        "message": message or f"fake error {code}",
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def message_resource(
    account_sid: str, sid: str, form: Mapping[str, Any], num_media: int = 0
) -> dict[str, Any]:
    """The Message resource Twilio answers a create with (201), for the form that created it."""
    return {
        "sid": sid,
        "account_sid": account_sid,
        "from": form.get("From"),
        "to": form.get("To"),
        "body": form.get("Body"),
        "status": "queued",
        "num_segments": "1",
        "num_media": str(num_media),
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "price": None,
        "error_code": None,
        "error_message": None,
        "uri": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json",
        "date_created": None,
        "date_sent": None,
        "date_updated": None,
        "messaging_service_sid": None,
        "subresource_uris": {},
    }


class FakeTwilioAPI(FakeServer):
    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.received: list[Received] = []

    def credentials_env(self, number: str = WHATSAPP_NUMBER) -> dict[str, str]:
        """Environment for a process (worker) that should send through this fake with the real SDK."""
        return {
            "WAPIPE_PROVIDER": "twilio",
            "WAPIPE_TWILIO_API_URL": self.url,
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_WHATSAPP_NUMBER": number,
        }

    # --- scripting and inspection -------------------------------------------------------------------

    def respond(
        self,
        status: int,
        *,
        code: int | None = None,
        message: str = "",
        retry_after: float | str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests with this error (Twilio's error JSON, Retry-After if given)."""
        headers = retry_after_header(retry_after)
        with self._lock:
            for _ in range(times):
                self._script.append(Scripted(status, twilio_error(status, code, message), headers))

    def created(self) -> list[Received]:
        """The messages the fake accepted (201): what Twilio would really have sent."""
        with self._lock:
            return [r for r in self.received if r.status == 201]

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def arrival_times(self, statuses: Iterable[int] | None = None) -> list[float]:
        """When each request (answered with one of ``statuses``, default any) arrived, in order."""
        wanted = set(statuses) if statuses is not None else None
        return sorted(r.arrived for r in self.requests() if wanted is None or r.status in wanted)

    # --- the HTTP side ------------------------------------------------------------------------------

    def answer(self, request: Incoming) -> Reply:
        headers = request.lower_headers()
        status, body, extra = self._handle(
            request.method, request.path, headers, request.raw, request.arrived
        )
        return json_reply(status, body, extra)

    def _handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, arrived: float = 0.0
    ) -> tuple[int, dict, dict]:
        fields = parse_qs(raw.decode("utf-8"))
        form = {key: values[-1] for key, values in fields.items()}
        expected_path = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        if method != "POST" or path.split("?", 1)[0] != expected_path:
            answer = Scripted(404, twilio_error(404, 20404, f"The requested resource {path} was not found"))
        elif not self._authorized(headers.get("authorization", "")):
            answer = Scripted(401, twilio_error(401, 20003, "Authenticate"))
        else:
            answer = self._scripted()
            if answer is None:
                answer = Scripted(201, self._message(form, len(fields.get("MediaUrl", []))))
        with self._lock:
            self.received.append(
                Received(method, path, headers, form, answer.status, answer.body.get("sid"), fields, arrived)
            )
        return answer.status, answer.body, answer.headers

    def _authorized(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == self.account_sid and password == self.auth_token

    def _message(self, form: dict[str, str], num_media: int = 0) -> dict[str, Any]:
        return message_resource(self.account_sid, "SM" + uuid.uuid4().hex, form, num_media)
