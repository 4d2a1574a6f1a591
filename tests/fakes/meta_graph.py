"""A fake Meta Graph API on 127.0.0.1: records what it receives, answers like the Cloud API.

``POST /{version}/{phone_number_id}/messages`` with ``Authorization: Bearer <token>`` answers Meta's success
body (``messages[0].id`` = a fresh ``wamid``) unless a scripted response is queued with :meth:`respond`.
A wrong token gets Meta's OAuth error (code 190, HTTP 401), as the real API does.
https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any


@dataclass
class Scripted:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def graph_error(code: int, message: str, *, status: int = 400, details: str = "") -> dict[str, Any]:
    """The body of a Graph API error (https://developers.facebook.com/docs/graph-api/guides/error-handling)."""
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AbCdEf",
    }
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}


class FakeGraph:
    """Start with ``with FakeGraph(token) as graph:``; ``graph.url`` is the base to put in META_GRAPH_URL."""

    def __init__(self, token: str, version: str = "v21.0", *, api_key: bool = False) -> None:
        self.token = token
        self.api_key = api_key  # Kapso's proxy: the token travels as X-API-Key instead of a bearer
        self.version = version
        self.received: list[Received] = []
        self._script: deque[Scripted] = deque()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                status, payload, headers = fake._answer(self.path, dict(self.headers), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{self.version}"

    def respond(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """Queue the answer to the next request (one per call; later requests fall back to success)."""
        with self._lock:
            self._script.append(Scripted(status, body, headers or {}))

    def _answer(
        self, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.received.append(Received("POST", path, headers, body))
            scripted = self._script.popleft() if self._script else None
        authorized = (
            headers.get("X-API-Key") == self.token
            if self.api_key
            else headers.get("Authorization") == f"Bearer {self.token}"
        )
        if not authorized:
            return 401, graph_error(190, "Invalid OAuth access token.", status=401), {}
        if scripted is not None:
            return scripted.status, scripted.body, scripted.headers
        if not path.endswith("/messages") or not isinstance(body, dict):
            return 400, graph_error(100, "Invalid parameter"), {}
        to = str(body.get("to", ""))
        return (
            200,
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": f"wamid.FAKE{uuid.uuid4().hex.upper()}"}],
            },
            {},
        )

    def __enter__(self) -> FakeGraph:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
