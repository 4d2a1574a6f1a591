"""Signed (and badly signed) webhook requests for all three providers, for the bad-input and security tests.

Each provider's real payloads come from ``tests/data/<provider>/``; :func:`signed` gives the path and the
headers that provider would send for a body, using the production signing code, so a test can sign a
*bad* body correctly (to reach the parser) or a good body wrongly (to hit the signature check).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import redis
from flask import Flask, request
from flask.testing import FlaskClient

from shared.providers.kapso import signature as kapso_signature
from shared.providers.meta import signature as meta_signature
from shared.providers.twilio import signature as twilio_signature
from shared.settings import Settings, load_settings
from shared.wire.twilio import MESSAGE_SID_PATTERN

DATA = Path(__file__).resolve().parents[1] / "data"
PUBLIC_URL = "https://hooks.example.com"
TWILIO_TOKEN = "sec-twilio-token-0123456789abcdef"
META_SECRET = "sec-meta-app-secret"
KAPSO_SECRET = "sec-kapso-webhook-secret"
API_KEY = "sec-api-key-for-tests"
PROVIDERS = ("twilio", "meta", "kapso")
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
QUEUES = ("inbound", "status")
KAPSO_RECEIVED = "whatsapp.message.received"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "twilio_auth_token": TWILIO_TOKEN,
        "meta_app_secret": META_SECRET,
        "kapso_webhook_secret": KAPSO_SECRET,
        "api_keys": API_KEY,
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class Request:
    path: str
    body: bytes
    content_type: str | None
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, client: FlaskClient) -> Any:
        kwargs: dict[str, Any] = {"data": self.body, "headers": self.headers}
        if self.content_type is not None:
            kwargs["content_type"] = self.content_type
        return client.post(self.path, **kwargs)


def signed(app: Flask, provider: str, body: bytes, content_type: str | None) -> Request:
    """``body`` as ``provider`` would send it, with a valid signature over exactly those bytes."""
    if provider == "meta":
        return Request(
            "/webhooks/meta",
            body,
            content_type,
            {meta_signature.HEADER: meta_signature.sign(META_SECRET, body)},
        )
    if provider == "kapso":
        headers = {
            kapso_signature.HEADER: kapso_signature.sign(KAPSO_SECRET, body),
            "X-Webhook-Event": KAPSO_RECEIVED,
        }
        return Request("/webhooks/kapso", body, content_type, headers)
    path = "/webhooks/twilio"
    if content_type is not None and content_type.split(";")[0].strip() == FORM:
        # Twilio signs the form parameters as the server decodes them: decode them the same way.
        if len(body) <= (app.config["MAX_CONTENT_LENGTH"] or len(body)):
            with app.test_request_context(path, method="POST", data=body, content_type=content_type):
                params = list(request.form.lists())
        else:  # the app refuses it unread; sign what Twilio would have signed
            params = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        return Request(
            path,
            body,
            content_type,
            {twilio_signature.HEADER: twilio_signature.sign(TWILIO_TOKEN, PUBLIC_URL + path, params)},
        )
    # Any other body: the URL carries bodySHA256 and only the URL is signed.
    path += "?" + urlencode({"bodySHA256": twilio_signature.body_sha256(body)})
    return Request(
        path,
        body,
        content_type,
        {twilio_signature.HEADER: twilio_signature.sign(TWILIO_TOKEN, PUBLIC_URL + path)},
    )


def forged(request: Request) -> Request:
    """The same request with a signature made with the wrong secret (well-formed, so only the HMAC fails)."""
    headers = dict(request.headers)
    if meta_signature.HEADER in headers:
        headers[meta_signature.HEADER] = meta_signature.sign("not-the-secret", request.body)
    if kapso_signature.HEADER in headers:
        headers[kapso_signature.HEADER] = kapso_signature.sign("not-the-secret", request.body)
    if twilio_signature.HEADER in headers:
        headers[twilio_signature.HEADER] = twilio_signature.sign("not-the-token", PUBLIC_URL + request.path)
    return Request(request.path, request.body, request.content_type, headers)


def unsigned(request: Request) -> Request:
    headers = {
        k: v
        for k, v in request.headers.items()
        if k not in (meta_signature.HEADER, kapso_signature.HEADER, twilio_signature.HEADER)
    }
    return Request(request.path, request.body, request.content_type, headers)


# --- valid payloads ---------------------------------------------------------------------------------


def twilio_sid(message_id: str) -> str:
    """``message_id`` as a Twilio Message SID (SM + 32 hex), which the ingress requires: unchanged when it
    already is one, else derived from it, so tests can keep naming messages readably. A short id is
    spelled in hex, so SIDs sort as their ids do; a longer one is hashed."""
    if re.fullmatch(MESSAGE_SID_PATTERN, message_id):
        return message_id
    raw = message_id.encode()
    if len(raw) <= 16:
        return "SM" + raw.hex().ljust(32, "0")
    return "SM" + hashlib.sha256(raw).hexdigest()[:32]


def provider_message_id(provider: str, message_id: str) -> str:
    """The id the event of :func:`valid` ``(app, provider, message_id)`` carries."""
    return twilio_sid(message_id) if provider == "twilio" else message_id


def twilio_form(
    message_id: str, text: str = "hello", phone: str = "+15551234567", profile: str = "Ana"
) -> bytes:
    form = dict(parse_qsl((DATA / "twilio" / "inbound_text.txt").read_text(), keep_blank_values=True))
    sid = twilio_sid(message_id)
    form.update(
        MessageSid=sid,
        SmsSid=sid,
        SmsMessageSid=sid,
        Body=text,
        ProfileName=profile,
        From=f"whatsapp:{phone}",
        WaId=phone.lstrip("+"),
    )
    return urlencode(form).encode()


def meta_body(
    message_id: str, text: str = "hello", phone: str = "15551234567", profile: str = "Ana"
) -> bytes:
    body = json.loads((DATA / "meta" / "text.json").read_text())
    value = body["entry"][0]["changes"][0]["value"]
    bsuid = "US." + phone.lstrip("+")  # one business-scoped user id per phone, as Meta gives
    value["messages"][0].update(id=message_id, text={"body": text}, from_user_id=bsuid, **{"from": phone})
    value["contacts"][0].update(wa_id=phone, user_id=bsuid, profile={"name": profile})
    return json.dumps(body).encode()


def kapso_body(
    message_id: str, text: str = "hello", phone: str = "+15551234567", profile: str = "Ana"
) -> bytes:
    body = json.loads((DATA / "kapso" / "message_received.json").read_text())
    body["message"].update(id=message_id, text={"body": text}, **{"from": phone.lstrip("+")})
    body["message"]["kapso"]["content"] = text
    body["conversation"].update(
        phone_number=phone, contact_name=profile, business_scoped_user_id="US." + phone.lstrip("+")
    )
    return json.dumps(body).encode()


def valid(app: Flask, provider: str, message_id: str, text: str = "hello", **who: str) -> Request:
    """A well-formed inbound text message from ``provider``, correctly signed."""
    if provider == "twilio":
        return signed(app, provider, twilio_form(message_id, text, **who), FORM)
    if provider == "meta":
        return signed(app, provider, meta_body(message_id, text, **who), JSON)
    return signed(app, provider, kapso_body(message_id, text, **who), JSON)


# --- the queues -----------------------------------------------------------------------------------------


def queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The kwargs of every Celery message waiting on ``queue``, oldest first."""
    jobs = []
    for message in reversed(client.lrange(queue, 0, -1)):
        _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(message)["body"]))
        jobs.append(kwargs)
    return jobs


def queue_lengths(client: redis.Redis) -> dict[str, int]:
    return {queue: client.llen(queue) for queue in QUEUES}
