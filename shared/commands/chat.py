"""``wapipe chat --from +15551234567``: talk to the running service as a WhatsApp user would.

Each line typed is POSTed to the ingress as a correctly signed provider webhook (Twilio's form post by
default, ``--provider meta`` for a Meta Cloud API text message), and the bot's replies to that number are
printed as the console provider sends them (Redis channel ``wapipe:console:outbound``). With piped
stdin it sends every line, then waits a few seconds for the last replies.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import redis

from shared import embedded
from shared.commands.arguments import add_data_dir
from shared.phone import InvalidPhone, normalize

HELP = "Chat with the running service from the terminal, as a WhatsApp user: signed webhooks in, replies out."
CHANNEL = "wapipe:console:outbound"
# Twilio's WhatsApp sandbox number, a neutral default for the business side of the chat.
DEFAULT_BUSINESS_NUMBER = "+14155238886"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from", dest="sender", required=True, help="your WhatsApp number, e.g. +15551234567"
    )
    parser.add_argument("--to", default=None, help="the business number (default $TWILIO_WHATSAPP_NUMBER)")
    parser.add_argument("--provider", choices=["twilio", "meta"], default="twilio")
    parser.add_argument("--url", default=None, help="ingress URL (default: the running `wapipe up`'s)")
    parser.add_argument("--name", default="Chat User", help="your WhatsApp profile name")
    add_data_dir(parser)
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to wait for replies after EOF")


def _endpoints(url_arg: str | None) -> tuple[str, str]:
    """(where to POST, the public URL the ingress signs against).

    Twilio signs the URL it was configured with, which the ingress rebuilds from WAPIPE_PUBLIC_URL; a
    running `wapipe up` records both its local and its public URL in the data folder.
    """
    from shared.commands.up import running_up

    up = running_up(embedded.resolve_data_dir()) or {}
    env_public = os.environ.get("WAPIPE_PUBLIC_URL")
    target = url_arg or str(up.get("url") or env_public or "http://127.0.0.1:8000")
    public = env_public or str(up.get("public_url") or target)
    return target.rstrip("/"), public.rstrip("/")


def twilio_auth_token() -> str:
    """The token `wapipe up` gave the ingress: $TWILIO_AUTH_TOKEN, else the data folder's dev one."""
    token = os.environ.get("TWILIO_AUTH_TOKEN")
    if token:
        return token
    stored = embedded.read_secrets(embedded.resolve_data_dir()).get("twilio_auth_token")
    if not stored:
        raise SystemExit("wapipe chat: TWILIO_AUTH_TOKEN is not set and no `wapipe up` dev token was found")
    return str(stored)


def twilio_request(
    public_url: str, token: str, sender: str, business: str, name: str, text: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Form fields and headers of a Twilio WhatsApp inbound webhook, signed as Twilio signs it.

    https://www.twilio.com/docs/messaging/guides/webhook-request
    """
    from twilio.request_validator import RequestValidator

    form = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "SmsMessageSid": "",
        "AccountSid": os.environ.get("TWILIO_ACCOUNT_SID") or "AC" + "0" * 32,
        "From": f"whatsapp:{sender}",
        "To": f"whatsapp:{business}",
        "Body": text,
        "NumMedia": "0",
        "NumSegments": "1",
        "ProfileName": name,
        "WaId": sender.lstrip("+"),
        "MessageType": "text",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    form["SmsMessageSid"] = form["MessageSid"]
    signature = RequestValidator(token).compute_signature(public_url + "/webhooks/twilio", form)
    return form, {"X-Twilio-Signature": signature}


def meta_request(sender: str, business: str, name: str, text: str) -> tuple[bytes, dict[str, str]]:
    """Raw body and headers of a Meta Cloud API text-message webhook, signed with META_APP_SECRET.

    https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/payload-examples#text-messages
    """
    secret = os.environ.get("META_APP_SECRET")
    if not secret:
        raise SystemExit("wapipe chat: --provider meta needs META_APP_SECRET (the ingress checks it)")
    wa_id = sender.lstrip("+")
    value = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": business.lstrip("+"),
            "phone_number_id": os.environ.get("META_PHONE_NUMBER_ID") or "wapipe-dev",
        },
        "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
        "messages": [
            {
                "from": wa_id,
                "id": "wamid." + uuid.uuid4().hex,
                "timestamp": str(int(time.time())),
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "0", "changes": [{"field": "messages", "value": value}]}],
    }
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}


def subscribe(redis_url: str) -> redis.client.PubSub | None:
    """The console provider's channel, subscribed to; None (said on stderr) when Redis cannot be reached.

    Subscribed here, before the chat starts, rather than in the thread that listens: a failure there ended
    that thread in a traceback, and the chat went on without a word about its replies.
    """
    pubsub = redis.Redis.from_url(redis_url, socket_connect_timeout=5).pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(CHANNEL)
    except redis.RedisError as exc:
        # The error's type only: its text names the server's address.
        print(
            f"wapipe chat: Redis could not be reached ({type(exc).__name__}); replies will not be shown",
            file=sys.stderr,
        )
        return None
    return pubsub


def listen(pubsub: redis.client.PubSub, number: str, show: Callable[[str], None]) -> None:
    """Print each console-provider message addressed to ``number`` (runs in a daemon thread)."""
    try:
        for message in pubsub.listen():
            try:
                event: dict[str, Any] = json.loads(message["data"])
            except (TypeError, ValueError):
                continue
            if event.get("to") == number:
                show(str(event.get("text") or ""))
    except redis.RedisError as exc:
        print(
            f"\nwapipe chat: lost Redis ({type(exc).__name__}); replies will no longer be shown",
            file=sys.stderr,
            flush=True,
        )


def run(args: argparse.Namespace) -> int:
    from shared.settings import get_settings

    settings = get_settings()
    try:
        # Possible, not necessarily assigned: the point is to play any user, +1 555 numbers included.
        sender = normalize(args.sender, settings.default_region, strict=False)
        business = normalize(
            args.to or settings.twilio_whatsapp_number or DEFAULT_BUSINESS_NUMBER,
            settings.default_region,
            strict=False,
        )
    except InvalidPhone as exc:
        print(f"wapipe chat: {exc}", file=sys.stderr)
        return 2
    target, public = _endpoints(args.url)
    token = twilio_auth_token() if args.provider == "twilio" else ""
    interactive = sys.stdin.isatty()
    last_activity = [time.monotonic()]
    lock = threading.Lock()

    def show(text: str) -> None:
        with lock:
            last_activity[0] = time.monotonic()
            prefix = "\r" if interactive else ""
            print(f"{prefix}bot> " + text.replace("\n", "\n     "), flush=True)
            if interactive:
                print("you> ", end="", flush=True)

    if not settings.redis_url:
        print(
            "wapipe chat: no Redis URL (is `wapipe up` running?); replies will not be shown", file=sys.stderr
        )
    elif (pubsub := subscribe(settings.redis_url)) is not None:  # None: it said why
        threading.Thread(target=listen, args=(pubsub, sender, show), daemon=True).start()
    if interactive:
        print(f"Chatting with {target} as {sender} ({args.provider}). Ctrl-D to quit.")
    with httpx.Client(timeout=10) as client:
        while True:
            if interactive:
                print("you> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            text = line.rstrip("\n")
            if not text.strip():
                continue
            try:
                if args.provider == "twilio":
                    form, headers = twilio_request(public, token, sender, business, args.name, text)
                    response = client.post(target + "/webhooks/twilio", data=form, headers=headers)
                else:
                    body, headers = meta_request(sender, business, args.name, text)
                    response = client.post(target + "/webhooks/meta", content=body, headers=headers)
            except httpx.HTTPError as exc:
                print(f"wapipe chat: could not reach {target}: {exc}", file=sys.stderr)
                return 1
            if response.status_code >= 300:
                print(
                    f"wapipe chat: ingress answered {response.status_code}: {response.text[:300]}",
                    file=sys.stderr,
                )
            with lock:
                last_activity[0] = time.monotonic()
    if interactive:
        print()
    # Replies arrive after the webhook is acknowledged: wait until none came for --wait seconds.
    while time.monotonic() - last_activity[0] < args.wait:
        time.sleep(0.1)
    return 0
