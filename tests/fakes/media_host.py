"""A fake media host on 127.0.0.1 (Twilio's ``MediaUrl``s, a CDN, Kapso's ``media_url``s): serves files at
paths, records every request with its headers, and can answer without a ``Content-Length`` (the body
ends when the connection closes) or redirect elsewhere, so size limits and credential handling are tested
against real HTTP."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Served:
    data: bytes
    content_type: str
    declare_length: bool = True
    redirect_to: str | None = None
    auth: str | None = None  # the Authorization header required, if any


@dataclass
class Request:
    path: str
    headers: dict[str, str]


class MediaHost:
    """``with MediaHost() as host: host.serve("/m/1", data, "image/png"); url = host.url + "/m/1"``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._files: dict[str, Served] = {}
        self._lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # a body without Content-Length ends at the close

            def do_GET(self) -> None:
                with host._lock:
                    host.requests.append(Request(self.path, dict(self.headers)))
                    served = host._files.get(self.path)
                if served is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                if served.auth is not None and self.headers.get("Authorization") != served.auth:
                    self.send_response(401)
                    self.end_headers()
                    return
                if served.redirect_to is not None:
                    self.send_response(307)
                    self.send_header("Location", served.redirect_to)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", served.content_type)
                if served.declare_length:
                    self.send_header("Content-Length", str(len(served.data)))
                self.end_headers()
                self.wfile.write(served.data)

            def log_message(self, *_args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, path: str, data: bytes = b"", content_type: str = "image/jpeg", **options: Any) -> str:
        """Serve ``data`` at ``path``; return its full URL."""
        with self._lock:
            self._files[path] = Served(data, content_type, **options)
        return self.url + path

    def __enter__(self) -> MediaHost:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
