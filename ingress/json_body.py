"""JSON request bodies with a nesting limit, for the webhooks and for ``request.get_json``.

``json.loads`` of a few kilobytes of ``[[[[...`` raises ``RecursionError`` (not ``ValueError``), and a
body nested a few hundred levels deep parses but makes pydantic's serializer fail when the event is
enqueued: both were 500s. No provider payload or API body nests anywhere near :data:`MAX_DEPTH`, so a
deeper one is refused as malformed (400/422) before anything reads it. Nor does any carry a number of more
than :data:`MAX_NUMBER_DIGITS` digits, so a longer one is refused as well (past 4,300 digits ``int()``
raises anyway, with a text no caller should have to read).

:func:`request_object` reads the API's bodies: each way a body can fail to be a JSON object (the
Content-Type, its syntax, its depth, a number's length, its type) is told apart, so the 422 says which.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Request
from flask.json.provider import DefaultJSONProvider

MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 100
JSON_CONTENT_TYPE = "application/json"


class TooDeep(ValueError):
    """The JSON nests deeper than allowed."""


class NumberTooLong(ValueError):
    """A number in the JSON has more digits than allowed."""


class NotAnObject(ValueError):
    """A request body that is no JSON object; its text says why, to follow ``body: `` in a 422."""


def loads(data: str | bytes | bytearray, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON like :func:`json.loads`; raise :class:`TooDeep` when it nests deeper than ``max_depth``
    and :class:`NumberTooLong` for a number longer than :data:`MAX_NUMBER_DIGITS` (both ``ValueError``)."""
    try:
        value = json.loads(data, parse_int=_bounded_int, parse_float=_bounded_float)
    except RecursionError:
        raise TooDeep(f"JSON nested deeper than {max_depth} levels") from None
    if _may_nest_deeper(data, max_depth) and _deeper_than(value, max_depth):
        raise TooDeep(f"JSON nested deeper than {max_depth} levels")
    return value


def _bounded_int(literal: str) -> int:
    _check_length(literal)
    return int(literal)


def _bounded_float(literal: str) -> float:
    _check_length(literal)
    return float(literal)


def _check_length(literal: str) -> None:
    # The literal as written: sign, point and exponent count too, which matters nothing at this length.
    if len(literal) > MAX_NUMBER_DIGITS:
        raise NumberTooLong(f"a number longer than {MAX_NUMBER_DIGITS} digits ({len(literal)} characters)")


def request_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object; :class:`NotAnObject` saying what is wrong when it is none."""
    if not request.is_json:
        raise NotAnObject(f"Content-Type must be {JSON_CONTENT_TYPE}")
    # May raise werkzeug's 413 (MAX_CONTENT_LENGTH), answered as such.
    data = request.get_data(cache=True)
    if not data.strip():
        raise NotAnObject("empty; a JSON object is expected")
    try:
        value = loads(data)
    except TooDeep:
        raise NotAnObject(f"nested deeper than {MAX_DEPTH} levels") from None
    except NumberTooLong as exc:
        raise NotAnObject(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise NotAnObject(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:  # UnicodeDecodeError: bytes that are no UTF-8 (or UTF-16/32) text
        raise NotAnObject("not valid JSON: not UTF-8 text") from None
    if not isinstance(value, dict):
        raise NotAnObject("must be a JSON object")
    return value


def _may_nest_deeper(data: str | bytes | bytearray, limit: int) -> bool:
    # Each level of nesting opens with its own "[" or "{", so a text with no more of them than the
    # limit cannot nest deeper: counting them (in C) spares the walk over a webhook's every value.
    if isinstance(data, str):
        return data.count("[") + data.count("{") > limit
    return data.count(b"[") + data.count(b"{") > limit


def _deeper_than(value: Any, limit: int) -> bool:
    # Iterative, so checking the depth cannot itself overflow the stack.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with :func:`loads`, so ``request.get_json`` turns a too-deep body into the
    usual "not JSON" answer (``silent=True`` gives None, otherwise a 400) instead of a 500."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)
