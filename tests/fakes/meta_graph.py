"""A fake Meta Graph API on 127.0.0.1: records what it receives, answers like the Cloud API.

``POST /{version}/{phone_number_id}/messages`` with ``Authorization: Bearer <token>`` answers Meta's success
body (``messages[0].id`` = a fresh ``wamid``) unless a scripted response is queued with :meth:`respond`.
A wrong token gets Meta's OAuth error (code 190, HTTP 401), as the real API does.
https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages

Media (:meth:`FakeGraph.add_media`): ``GET /{version}/{media_id}`` answers the media's metadata with a
download ``url`` on this server, and ``GET`` that URL answers the bytes; both need the token, as Meta's do.
https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media#download-media
"""

from __future__ import annotations

import hashlib
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
        self._media: dict[str, tuple[bytes, str, int | None]] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, headers, data = fake._get(self.path, dict(self.headers))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

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

    def add_media(
        self, media_id: str, data: bytes, mime_type: str, *, declared_size: int | None = None
    ) -> None:
        """Serve a media file under ``media_id``; ``declared_size`` overrides the ``file_size`` announced."""
        with self._lock:
            self._media[media_id] = (data, mime_type, declared_size)

    def _get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.received.append(Received("GET", path, headers, None))
        if headers.get("Authorization") != f"Bearer {self.token}" and headers.get("X-API-Key") != self.token:
            body = json.dumps(graph_error(190, "Invalid OAuth access token.", status=401)).encode()
            return 401, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body
        host, port = self._server.server_address[:2]
        media_id = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            media = self._media.get(media_id)
        if media is None:
            body = json.dumps(graph_error(100, "Invalid parameter")).encode()
            return 404, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body
        data, mime_type, declared = media
        if path.startswith("/media-download/"):
            return 200, {"Content-Type": mime_type, "Content-Length": str(len(data))}, data
        info = {
            "messaging_product": "whatsapp",
            "url": f"http://{host}:{port}/media-download/{media_id}",
            "mime_type": mime_type,
            "sha256": hashlib.sha256(data).hexdigest(),
            "file_size": declared if declared is not None else len(data),
            "id": media_id,
        }
        body = json.dumps(info).encode()
        return 200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body

    def __enter__(self) -> FakeGraph:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
