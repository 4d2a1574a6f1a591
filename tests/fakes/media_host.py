"""A fake media host on 127.0.0.1 (Twilio's ``MediaUrl``s, a CDN, Kapso's ``media_url``s): serves files at
paths, records every request with its headers, and can answer without a ``Content-Length`` (the body
ends when the connection closes), send it slowly, gzip it (when the client accepts gzip, or whatever it
said), or redirect elsewhere, so size limits, the download deadline and credential handling are tested
against real HTTP."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from tests.fakes.http_server import FakeServer, Incoming, Reply


@dataclass
class Served:
    data: bytes
    content_type: str
    declare_length: bool = True
    redirect_to: str | None = None
    auth: str | None = None  # the Authorization header required, if any
    trickle: float | None = None  # seconds to wait before each kilobyte, for a server slow to send
    status: int = 200  # another status sent with the body (a redirect without a Location)
    # Sent gzipped (Content-Encoding: gzip): "accepted" when the request's Accept-Encoding allows it, as web
    # servers do; "always" whatever it said, as a server that ignores it does.
    gzip: Literal["accepted", "always"] | None = None
    gzipped: bytes = b""

    def __post_init__(self) -> None:
        if self.gzip is not None:
            self.gzipped = gzip.compress(self.data)


@dataclass
class Request:
    path: str
    headers: dict[str, str]


class MediaHost(FakeServer):
    """``with MediaHost() as host: host.serve("/m/1", data, "image/png"); url = host.url + "/m/1"``."""

    methods = ("GET",)

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self._files: dict[str, Served] = {}

    def serve(self, path: str, data: bytes = b"", content_type: str = "image/jpeg", **options: Any) -> str:
        """Serve ``data`` at ``path``; return its full URL."""
        with self._lock:
            self._files[path] = Served(data, content_type, **options)
        return self.url + path

    def answer(self, request: Incoming) -> Reply:
        with self._lock:
            self.requests.append(Request(request.path, request.headers))
            served = self._files.get(request.path)
        if served is None:
            return Reply(404)
        if served.auth is not None and request.headers.get("Authorization") != served.auth:
            return Reply(401)
        if served.redirect_to is not None:
            return Reply(307, headers={"Location": served.redirect_to})
        headers = {"Content-Type": served.content_type}
        data = served.data
        if served.gzip == "always" or (served.gzip == "accepted" and _accepts_gzip(request)):
            headers["Content-Encoding"] = "gzip"
            data = served.gzipped
        if served.declare_length:
            headers["Content-Length"] = str(len(data))
        body = data if served.trickle is None else _slowly(data, served.trickle)
        return Reply(served.status, body, headers)


def _accepts_gzip(request: Incoming) -> bool:
    accepted = request.lower_headers().get("accept-encoding", "")
    codings = {part.split(";")[0].strip().lower() for part in accepted.split(",")}
    return bool(codings & {"gzip", "*"})


def _slowly(data: bytes, pause: float) -> Iterator[bytes]:
    for start in range(0, len(data), 1024):
        time.sleep(pause)
        yield data[start : start + 1024]
