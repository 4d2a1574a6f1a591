"""What every fake provider server in this folder shares: a real HTTP server on 127.0.0.1 (a free port) in a
background thread, started and stopped as a context manager or by :meth:`FakeServer.start` /
:meth:`FakeServer.stop`, a lock for what its handler threads record, and a queue of scripted answers.

A fake subclasses :class:`FakeServer`, names the HTTP methods it speaks in ``methods`` and answers each
request in :meth:`FakeServer.answer` (an :class:`Incoming` in, a :class:`Reply` out); its routes, bodies,
credentials and what it records are its own. The real client code (the ``twilio`` and ``openai`` SDKs, our
httpx clients) runs against it over real HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass(frozen=True)
class Incoming:
    """One request as it arrived; ``headers`` keep the names as the client sent them."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    # time.monotonic() when the connection's thread started (one request per connection), before the
    # request was read: what a provider's rate limiter would count, as near as this process can see it.
    arrived: float = 0.0

    def lower_headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def json(self, default: Any = None) -> Any:
        """The body parsed as JSON, or ``default`` when it is empty or not JSON."""
        if not self.raw:
            return default
        try:
            return json.loads(self.raw)
        except ValueError:
            return default


@dataclass(frozen=True)
class Reply:
    """An answer as sent: only the headers given (no ``Content-Length`` unless it is among them). A body
    given as parts is sent part by part as they come, for a server that is slow to send."""

    status: int
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Scripted:
    """A JSON answer queued ahead of a fake's usual one."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    data = json.dumps(payload).encode()
    return Reply(
        status,
        data,
        {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})},
    )


def retry_after_header(seconds: float | str | None) -> dict[str, str]:
    """The ``Retry-After`` header for a scripted error, none when ``seconds`` is None; a string is sent
    as it is (a huge number written out, ``inf``, an HTTP date)."""
    if seconds is None:
        return {}
    return {"Retry-After": seconds if isinstance(seconds, str) else f"{seconds:g}"}


class _QuietServer(ThreadingHTTPServer):
    """A server that lets a client hang up without a traceback.

    A client that gives up on a slow fake (the timeout tests) is expected, and printing its
    BrokenPipeError is worse than noise: on Python 3.11 formatting a traceback calls ``ast.parse``, whose
    recursion-depth bookkeeping is shared by every thread (CPython gh-106905), so a handler thread doing it
    while hypothesis parses a lambda in the test's thread makes ``ast.parse`` raise SystemError there.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeServer:
    """The server side of a fake; ``origin`` is ``http://127.0.0.1:<port>``."""

    methods: tuple[str, ...] = ("GET", "POST")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: deque[Any] = deque()  # scripted answers, first in first used
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.origin

    def answer(self, request: Incoming) -> Reply:
        raise NotImplementedError

    def _scripted(self) -> Any:
        """The next scripted answer, or None when none is queued."""
        with self._lock:
            return self._script.popleft() if self._script else None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        # Ahead of the workers for the CPU, as a real provider on machines of its own is: its arrival times
        # are what pacing is judged by, and a fake starved of CPU accepts a backlog of requests at once and
        # stamps them as arriving together (a 1-s window read 60 sends at a rate of 50 in a loaded run).
        # Linux nice values are per thread, and the handler threads this one starts inherit it.
        with contextlib.suppress(OSError):  # raising a priority needs root; without it, as before
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
        self._server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one request per connection, and a body sent without Content-Length ends at the close
            protocol_version = "HTTP/1.0"

            def setup(self) -> None:
                self.arrived = time.monotonic()
                super().setup()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                reply = fake.answer(Incoming(self.command, self.path, dict(self.headers), raw, self.arrived))
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                for part in [reply.body] if isinstance(reply.body, bytes) else reply.body:
                    self.wfile.write(part)
                    self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        for method in self.methods:
            setattr(Handler, f"do_{method}", Handler._serve)
        return Handler
