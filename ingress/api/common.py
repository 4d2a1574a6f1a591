"""What the read APIs share: query-parameter parsing that answers 422 naming the parameter, keyset
pagination (``limit`` + ``cursor`` -> ``next_cursor``), and JSON-ready timestamps.

A cursor is the id of the last row of the previous page, as a string; callers treat it as opaque. A page
is fetched with one row more than asked, so ``next_cursor`` is null exactly when nothing follows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from flask import Blueprint, Response

from ingress.errors import api_error

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# Ids are PostgreSQL bigint: a larger cursor made the query's ::bigint cast fail (a 500).
BIGINT_MAX = 2**63 - 1

T = TypeVar("T")


class InvalidParam(Exception):
    """A query parameter (or path part) is malformed; becomes a 422 whose message names it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def handle_invalid_params(blueprint: Blueprint) -> None:
    """Answer :class:`InvalidParam` raised in the blueprint's views with a 422 JSON error naming it in
    ``field``, as body errors do."""

    def _respond(exc: InvalidParam) -> Response:
        return api_error(422, "validation_error", str(exc), field=exc.name)

    blueprint.register_error_handler(InvalidParam, _respond)


def int_param(
    args: Mapping[str, str], name: str, default: int | None, *, minimum: int = 1, maximum: int = BIGINT_MAX
) -> int | None:
    """The integer query parameter ``name`` (``default`` when absent) within [minimum, maximum]."""
    raw = args.get(name)
    if raw is None:
        return default
    problem = f"must be an integer between {minimum} and {maximum}"
    digits = raw.strip()
    # ASCII only: str.isdigit() also accepts "²", which int() refuses (that was a 500). Too many digits
    # for the maximum are refused before int(), which raises past 4300 of them (a 500 too).
    if not (digits.isascii() and digits.isdigit()) or len(digits.lstrip("0")) > len(str(maximum)):
        raise InvalidParam(name, problem)
    value = int(digits)
    if not minimum <= value <= maximum:
        raise InvalidParam(name, problem)
    return value


def choice_param(args: Mapping[str, str], name: str, allowed: Sequence[str]) -> str | None:
    raw = args.get(name)
    if raw is None:
        return None
    if raw not in allowed:
        raise InvalidParam(name, f"must be one of {', '.join(allowed)}")
    return raw


def page_args(args: Mapping[str, str], *, max_cursor: int = BIGINT_MAX) -> tuple[int, int | None]:
    """``(limit, cursor)`` from the query string; cursor None means the first page.

    ``max_cursor``: a row id by default; a listing whose cursor is something else says its own bound.
    """
    limit = int_param(args, "limit", DEFAULT_LIMIT, maximum=MAX_LIMIT)
    assert limit is not None
    return limit, int_param(args, "cursor", None, minimum=0, maximum=max_cursor)


def page(
    rows: Sequence[T], limit: int, render: Callable[[T], dict[str, Any]], key: Callable[[T], Any]
) -> dict[str, Any]:
    """The response body of a page fetched with ``limit + 1`` rows: its data and the next cursor."""
    shown = rows[:limit]
    more = len(rows) > limit
    return {
        "data": [render(row) for row in shown],
        "next_cursor": str(key(shown[-1])) if more and shown else None,
    }


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def message_error(code: str | None, message: str | None) -> dict[str, str | None] | None:
    """A message's error as the read APIs show it: present when either part is known. A provider can give
    the reason alone (Kapso's failures may carry text and no code), which the caller must still see."""
    if code is None and message is None:
        return None
    return {"code": code, "message": message}
