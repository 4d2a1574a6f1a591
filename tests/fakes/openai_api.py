"""A fake OpenAI-compatible API on 127.0.0.1: the real ``openai`` SDK talks to it through ``base_url``.

It answers ``POST /v1/chat/completions``
(https://platform.openai.com/docs/api-reference/chat/create) with a chat completion whose message content
is :attr:`FakeOpenAI.content` (by default a valid proposal). Tests script answers first, used in order,
one per request: :meth:`reply` (a 200 with the given content, e.g. malformed JSON) or :meth:`fail` (an
error status, optionally with ``Retry-After``). Every request is recorded (:attr:`received`) so a test can
check the model, the JSON schema and the prompt that were sent::

    with FakeOpenAI() as fake:
        settings = load_settings(openai_api_key="k", openai_base_url=fake.url)
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VALID_PROPOSAL: dict[str, Any] = {
    "summary": "2 items, 8h total, due 2026-01-30",
    "items": [
        {
            "type": "feature",
            "title": "Add login page",
            "description": "Login page for the web app",
            "estimatedHours": 4,
            "dueDate": "2026-01-30",
            "priority": "medium",
        },
        {
            "type": "feature",
            "title": "Add user dashboard",
            "description": "Dashboard after login",
            "estimatedHours": 4,
            "dueDate": "2026-01-30",
            "priority": "medium",
        },
    ],
    "totalEstimatedHours": 8,
    "confidence": 0.9,
}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclass
class Scripted:
    status: int
    content: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class FakeOpenAI:
    """The fake server; ``url`` is the base URL to give the SDK (``.../v1``)."""

    def __init__(self) -> None:
        self.content: str = json.dumps(VALID_PROPOSAL)
        self.received: list[Received] = []
        self._script: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def reply(self, content: str) -> None:
        """The next request gets a 200 whose message content is ``content`` (valid or not)."""
        self._script.append(Scripted(200, content))

    def fail(self, status: int, retry_after: float | None = None) -> None:
        """The next request gets ``status`` with an OpenAI-shaped error body."""
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        self._script.append(Scripted(status, None, headers))

    def completions(self) -> list[Received]:
        return [r for r in self.received if r.path.endswith("/chat/completions")]

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self) -> Scripted:
        with self._lock:
            return self._script.popleft() if self._script else Scripted(200, self.content)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {}
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}}, {})
                    fake.received.append(
                        Received(
                            "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body, 404
                        )
                    )
                    return
                answer = fake._next()
                fake.received.append(
                    Received(
                        "POST",
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        answer.status,
                    )
                )
                if answer.status != 200:
                    error = {
                        "error": {
                            "message": f"fake error {answer.status}",
                            "type": "server_error",
                            "code": None,
                        }
                    }
                    self._send(answer.status, error, answer.headers)
                    return
                completion = {
                    "id": f"chatcmpl-fake{len(fake.received)}",
                    "object": "chat.completion",
                    "created": 1769500000,
                    "model": body.get("model", "unknown"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer.content, "refusal": None},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                }
                self._send(200, completion, answer.headers)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
