"""JSON request bodies with a nesting limit, for the webhooks and for ``request.get_json``.

``json.loads`` of a few kilobytes of ``[[[[...`` raises ``RecursionError`` (not ``ValueError``), and a
body nested a few hundred levels deep parses but makes pydantic's serializer fail when the event is
enqueued: both were 500s. No provider payload or API body nests anywhere near :data:`MAX_DEPTH`, so a
deeper one is refused as malformed (400/422) before anything reads it.
"""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

MAX_DEPTH = 64


def loads(data: str | bytes | bytearray, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON like :func:`json.loads`; raise ``ValueError`` when it nests deeper than ``max_depth``."""
    import json

    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    if _may_nest_deeper(data, max_depth) and _deeper_than(value, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
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
