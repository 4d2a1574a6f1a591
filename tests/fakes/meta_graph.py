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
import uuid
from dataclasses import dataclass
from typing import Any

from tests.fakes.http_server import FakeServer, Incoming, Reply, Scripted, json_reply


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any


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


class FakeGraph(FakeServer):
    """Start with ``with FakeGraph(token) as graph:``; ``graph.url`` is the base to put in META_GRAPH_URL."""

    def __init__(self, token: str, version: str = "v21.0", *, api_key: bool = False) -> None:
        super().__init__()
        self.token = token
        self.api_key = api_key  # Kapso's proxy: the token travels as X-API-Key instead of a bearer
        self.version = version
        self.received: list[Received] = []
        self._media: dict[str, tuple[bytes, str, int | None]] = {}

    @property
    def url(self) -> str:
        return f"{self.origin}/{self.version}"

    def respond(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """Queue the answer to the next request (one per call; later requests fall back to success).

        ``body`` is any JSON value: a proxy in front of the Graph API may answer one not shaped like Graph's.
        """
        with self._lock:
            self._script.append(Scripted(status, body, headers or {}))

    def add_media(
        self, media_id: str, data: bytes, mime_type: str, *, declared_size: int | None = None
    ) -> None:
        """Serve a media file under ``media_id``; ``declared_size`` overrides the ``file_size`` announced."""
        with self._lock:
            self._media[media_id] = (data, mime_type, declared_size)

    def answer(self, request: Incoming) -> Reply:
        if request.method == "GET":
            return self._get(request.path, request.headers)
        return self._post(request.path, request.headers, request.json())

    def _post(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        with self._lock:
            self.received.append(Received("POST", path, headers, body))
        scripted: Scripted | None = self._scripted()
        authorized = (
            headers.get("X-API-Key") == self.token
            if self.api_key
            else headers.get("Authorization") == f"Bearer {self.token}"
        )
        if not authorized:
            return json_reply(401, graph_error(190, "Invalid OAuth access token.", status=401))
        if scripted is not None:
            return json_reply(scripted.status, scripted.body, scripted.headers)
        if not path.endswith("/messages") or not isinstance(body, dict):
            return json_reply(400, graph_error(100, "Invalid parameter"))
        to = str(body.get("to", ""))
        return json_reply(
            200,
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": f"wamid.FAKE{uuid.uuid4().hex.upper()}"}],
            },
        )

    def _get(self, path: str, headers: dict[str, str]) -> Reply:
        with self._lock:
            self.received.append(Received("GET", path, headers, None))
        if headers.get("Authorization") != f"Bearer {self.token}" and headers.get("X-API-Key") != self.token:
            return json_reply(401, graph_error(190, "Invalid OAuth access token.", status=401))
        media_id = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            media = self._media.get(media_id)
        if media is None:
            return json_reply(404, graph_error(100, "Invalid parameter"))
        data, mime_type, declared = media
        if path.startswith("/media-download/"):
            return Reply(200, data, {"Content-Type": mime_type, "Content-Length": str(len(data))})
        return json_reply(
            200,
            {
                "messaging_product": "whatsapp",
                "url": f"{self.origin}/media-download/{media_id}",
                "mime_type": mime_type,
                "sha256": hashlib.sha256(data).hexdigest(),
                "file_size": declared if declared is not None else len(data),
                "id": media_id,
            },
        )
