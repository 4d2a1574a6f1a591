"""The console provider: outbound with no accounts, so the whole pipeline works on a laptop.

Each message is printed as one line, scrubbed as a log line is (recipient masked, and any number or secret
its text quotes), and published whole as JSON on the Redis channel :data:`CHANNEL`, which ``wapipe chat``
subscribes to to show the bot's replies as the user would read them. It is stored like any other
message (status ``sent``, a generated ``console-<uuid>`` id); it does not enforce the 24-hour window.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import TextIO

import redis

from shared.logging import mask_phone, scrub
from shared.providers.base import OutboundMessage, SendError, SendResult

CHANNEL = "wapipe:console:outbound"


class ConsoleSender:
    name = "console"

    def __init__(self, client: redis.Redis, stream: TextIO | None = None) -> None:
        self._redis = client
        self._stream = stream

    def send(self, message: OutboundMessage) -> SendResult:
        text = message.text or ""
        if not text and message.interactive is not None:
            text = message.interactive.body
        stream = self._stream or sys.stdout
        # One readable line, which lands in the process's log: the body (an API caller's text, a user's
        # words echoed back) may quote a number or a secret link, so it is scrubbed like any log line.
        shown = scrub(text)
        print(f"[console] -> {mask_phone(message.to)} ({message.type}): {shown}", file=stream, flush=True)
        event = {
            "message_id": message.id,
            "to": message.to,
            "type": str(message.type),
            "text": text,
            "payload": message.payload,
        }
        try:
            self._redis.publish(CHANNEL, json.dumps(event, ensure_ascii=False))
        except redis.RedisError as exc:
            raise SendError("console_unavailable", f"Redis publish failed: {exc}", permanent=False) from exc
        return SendResult(provider=self.name, provider_message_id=f"console-{uuid.uuid4()}")
