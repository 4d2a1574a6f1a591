"""A fast fake Twilio Messages API for benchmarks, in a process of its own (asyncio, aiohttp).

    python -m tests.bench.fake_provider --port P --token T [--delay 0.15] [--status-callbacks]

``tests/fakes/twilio_api.py`` is the one tests use (threads, scriptable failures); this one only has to
keep up with thousands of sends a second without becoming the bottleneck it measures. It answers
``POST /2010-04-01/Accounts/<sid>/Messages.json`` (basic auth checked) with a Twilio-shaped 201 after
``--delay`` seconds, records when each send arrived (``time.time()``, for latency against the bench's
clock), and, with ``--status-callbacks``, posts a signed ``delivered`` status callback to the message's
``StatusCallback`` URL, as Twilio does, so receipts travel back through the ingress.

``GET /_bench/records`` returns ``[[arrived_at, to, sid], ...]``; ``POST /_bench/reset`` clears them;
``GET /_bench/rate`` returns the highest count of sends that arrived within any one-second window
(per ``To``'s sender ``From``), for pacing checks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
import uuid
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from shared.providers.twilio.signature import HEADER, sign
from tests.fakes.twilio_api import message_resource


class Fake:
    def __init__(self, account_sid: str, token: str, delay: float, callbacks: bool) -> None:
        self.account_sid = account_sid
        self.token = token
        self.delay = delay
        self.callbacks = callbacks
        self.records: list[tuple[float, str, str]] = []
        self.auth = "Basic " + base64.b64encode(f"{account_sid}:{token}".encode()).decode()
        self.session: ClientSession | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self.callback_failures = 0
        self.last_callback_error = ""

    async def create(self, request: web.Request) -> web.Response:
        arrived = time.time()
        if request.headers.get("Authorization") != self.auth:
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        form = await request.post()
        sid = "SM" + uuid.uuid4().hex
        to = str(form.get("To", ""))
        self.records.append((arrived, to, sid))
        if self.delay:
            await asyncio.sleep(self.delay)
        callback = str(form.get("StatusCallback") or "")
        if self.callbacks and callback:
            task = asyncio.create_task(self.status_callback(callback, sid, to))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
        body = message_resource(self.account_sid, sid, form)
        return web.json_response(body, status=201)

    async def status_callback(self, url: str, sid: str, to: str) -> None:
        # Twilio answers the create first; the receipt follows a moment later.
        await asyncio.sleep(0.01)
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": "delivered",
            "To": to,
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
        }
        headers = {HEADER: sign(self.token, url, params)}
        assert self.session is not None
        for _ in range(5):
            try:
                async with self.session.post(url, data=params, headers=headers) as response:
                    if response.status < 500:
                        return
            except Exception as exc:  # retried, as Twilio retries a failed callback
                self.last_callback_error = repr(exc)
            await asyncio.sleep(0.5)
        self.callback_failures += 1

    async def records_view(self, request: web.Request) -> web.Response:
        return web.json_response({"records": self.records, "callback_failures": self.callback_failures})

    async def reset(self, request: web.Request) -> web.Response:
        self.records.clear()
        return web.json_response({"ok": True})


def make_app(fake: Fake) -> web.Application:
    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json", fake.create)
    app.router.add_get("/_bench/records", fake.records_view)
    app.router.add_post("/_bench/reset", fake.reset)

    async def session(app: web.Application) -> Any:
        fake.session = ClientSession(timeout=ClientTimeout(total=10))
        yield
        await fake.session.close()

    app.cleanup_ctx.append(session)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--status-callbacks", action="store_true")
    args = parser.parse_args()
    fake = Fake(args.account_sid, args.token, args.delay, args.status_callbacks)
    web.run_app(make_app(fake), host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
