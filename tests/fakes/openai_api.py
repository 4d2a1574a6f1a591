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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http_server import FakeServer, Incoming, Reply, json_reply, retry_after_header

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
    raw: Reply | None = None  # sent as is: a body that is not a chat completion
    code: str | None = None  # an error's code, as OpenAI names it (insufficient_quota, ...)
    finish_reason: str = "stop"  # "length": the answer was cut at max_tokens


class FakeOpenAI(FakeServer):
    """The fake server; ``url`` is the base URL to give the SDK (``.../v1``)."""

    methods = ("POST",)

    def __init__(self) -> None:
        super().__init__()
        self.content: str = json.dumps(VALID_PROPOSAL)
        self.received: list[Received] = []
        # Called in the server's thread while a chat completion request waits for its answer: what a
        # test looks at "during the model call" (it should record, not raise).
        self.while_answering: Callable[[], None] | None = None
        # Request parameters the model refuses, each with the error code it refuses them with (see
        # :meth:`refuse`); checked before any scripted answer, which a refused request does not use.
        self.refused: dict[str, str] = {}
        # Request parameters the server does not know, each with the status it answers them with (see
        # :meth:`refuse_unknown`); checked like :attr:`refused`.
        self.unknown: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    def reply(self, content: str, finish_reason: str = "stop") -> None:
        """The next request gets a 200 whose message content is ``content`` (valid or not), ended for
        ``finish_reason``."""
        self._script.append(Scripted(200, content, finish_reason=finish_reason))

    def fail(self, status: int, retry_after: float | str | None = None, code: str | None = None) -> None:
        """The next request gets ``status`` with an OpenAI-shaped error body (its ``code``, if given)."""
        self._script.append(Scripted(status, None, retry_after_header(retry_after), code=code))

    def refuse(self, parameter: str, code: str = "unsupported_parameter") -> None:
        """From now on a request that sends ``parameter`` gets the 400 OpenAI answers a model that does not
        take it with (https://platform.openai.com/docs/guides/error-codes): a reasoning model refuses
        ``max_tokens`` (``unsupported_parameter``) and a ``temperature`` (``unsupported_parameter``, or
        ``unsupported_value`` for one other than the default)."""
        self.refused[parameter] = code

    def refuse_unknown(self, parameter: str, status: int = 400) -> None:
        """From now on a request that sends ``parameter`` gets what a server that does not know it answers:
        a 400 without ``param``, naming it in the message (an older Azure api-version's "Unrecognized
        request argument supplied"), or a 422 listing it as an extra field (a FastAPI/pydantic server)."""
        self.unknown[parameter] = status

    def answer_raw(self, body: bytes, content_type: str) -> None:
        """The next request gets a 200 with this body, completion or not (a proxy's page, a cut answer)."""
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        self._script.append(Scripted(200, raw=Reply(200, body, headers)))

    def answer_message(self, message: Any) -> None:
        """The next request gets a 200 completion whose first message is ``message`` as given, whatever its
        shape (a string, content that is a list of parts or a number): what an OpenAI-compatible server
        may send, and the SDK hands on without validating."""
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        body = json.dumps({"id": "chatcmpl-odd", "object": "chat.completion", "choices": [choice]})
        self.answer_raw(body.encode(), "application/json")

    def answer_json(self, body: Any) -> None:
        """The next request gets a 200 with ``body`` as JSON, whatever its keys: a completion without
        choices, as OpenAI-compatible gateways send."""
        self.answer_raw(json.dumps(body).encode(), "application/json")

    def completions(self) -> list[Received]:
        return [r for r in self.received if r.path.endswith("/chat/completions")]

    def answer(self, request: Incoming) -> Reply:
        body = request.json(default={})
        headers = request.lower_headers()
        if not request.path.endswith("/chat/completions"):
            self.received.append(Received("POST", request.path, headers, body, 404))
            return json_reply(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        if self.while_answering is not None:
            self.while_answering()
        unknown = next((name for name in self.unknown if name in body), None)
        if unknown is not None:
            self.received.append(Received("POST", request.path, headers, body, self.unknown[unknown]))
            return json_reply(self.unknown[unknown], _unknown(unknown, self.unknown[unknown], body[unknown]))
        refused = next((name for name in self.refused if body.get(name) is not None), None)
        if refused is not None:
            self.received.append(Received("POST", request.path, headers, body, 400))
            return json_reply(400, _refusal(refused, self.refused[refused], body[refused]))
        answer: Scripted = self._scripted() or Scripted(200, self.content)
        self.received.append(Received("POST", request.path, headers, body, answer.status))
        if answer.raw is not None:
            return answer.raw
        if answer.status != 200:
            message = f"fake error {answer.status}"
            error = {"error": {"message": message, "type": "server_error", "code": answer.code}}
            return json_reply(answer.status, error, answer.headers)
        completion = {
            "id": f"chatcmpl-fake{len(self.received)}",
            "object": "chat.completion",
            "created": 1769500000,
            "model": body.get("model", "unknown"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.content, "refusal": None},
                    "finish_reason": answer.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
        return json_reply(200, completion, answer.headers)


def _refusal(parameter: str, code: str, value: Any) -> dict[str, Any]:
    """OpenAI's error body for a request parameter the model does not take, as it words it."""
    if code == "unsupported_value":
        message = (
            f"Unsupported value: '{parameter}' does not support {value} with this model. "
            "Only the default (1) value is supported."
        )
    else:
        message = f"Unsupported parameter: '{parameter}' is not supported with this model."
    error = {"message": message, "type": "invalid_request_error", "param": parameter, "code": code}
    return {"error": error}


def _unknown(parameter: str, status: int, value: Any) -> dict[str, Any]:
    """The error body of a server that does not know a request parameter: Azure's 400, a pydantic 422."""
    if status == 422:
        extra = {
            "type": "extra_forbidden",
            "loc": ["body", parameter],
            "msg": "Extra inputs are not permitted",
        }
        return {"detail": [{**extra, "input": value}]}
    message = f"Unrecognized request argument supplied: {parameter}"
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
