"""Registered lookups and final actions: the only Python a new flow may need.

A flow pack names them (``lookup = "order_exists"``, ``[flows.action] name = "create_defect_report"``);
the loader checks every name against these registries, so a typo fails at start with the pack's line.

- A lookup runs on a validated answer. It returns the values it found (merged into the form's data, so
  later prompts and the reply template can use them) or raises :class:`Rejected` with a message for the
  user, who is asked the same question again.
- An action runs when a form is complete (or at once for a flow without steps). It returns values for
  the reply template (``{reference}`` ...). One that lists what it found names the value counting it
  (``counts``): when that is 0, the flow's ``reply_empty``, if it has one, is the reply instead.

Both receive a :class:`FlowContext` (database connection, who is asking, the source message, the time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from shared.flows.pack import Meta


class Rejected(Exception):
    """A lookup refused the answer; ``message`` is shown to the user before the prompt is repeated."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FlowContext:
    """What a lookup or action may use besides the form's data."""

    conn: psycopg.Connection
    contact_id: int | None
    conversation_id: int | None
    message_id: int | None  # the inbound message that completed the form (idempotency key of effects)
    now: datetime
    flow: str = ""  # the flow's id in its pack, e.g. "report_defect"
    # The pack's texts, in whose words a lookup or action answers (the engine sets them); English if None.
    texts: Meta | None = None


Values = Mapping[str, Any]
LookupFn = Callable[[FlowContext, str, Mapping[str, Any]], Values]
ActionFn = Callable[[FlowContext, Mapping[str, Any], Mapping[str, Any]], Values]


@dataclass(frozen=True)
class Registered:
    name: str
    fn: Callable[..., Values]
    provides: frozenset[str]  # names this function adds to the template values
    counts: str | None = None  # the provided value counting what an action found (0: reply_empty)


LOOKUPS: dict[str, Registered] = {}
ACTIONS: dict[str, Registered] = {}


def _register(
    table: dict[str, Registered],
    kind: str,
    name: str,
    provides: tuple[str, ...],
    counts: str | None = None,
) -> Callable:
    if counts is not None and counts not in provides:
        raise ValueError(f"{kind} {name!r} counts {counts!r}, which it does not provide")

    def decorator(fn: Callable[..., Values]) -> Callable[..., Values]:
        if name in table and table[name].fn is not fn:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = Registered(name, fn, frozenset(provides), counts)
        return fn

    return decorator


def lookup(name: str, *, provides: tuple[str, ...] = ()) -> Callable:
    """Register ``fn(ctx, value, data) -> values`` as lookup ``name``; raise :class:`Rejected` to refuse."""
    return _register(LOOKUPS, "lookup", name, provides)


def action(name: str, *, provides: tuple[str, ...] = (), counts: str | None = None) -> Callable:
    """Register ``fn(ctx, data, options) -> values`` as final action ``name``.

    ``options`` is the action table of the pack (minus ``name``, ``reply`` and ``reply_empty``), e.g.
    ``kind``, ``prefix``. ``counts``: the provided value counting what it found, for ``reply_empty``.
    """
    return _register(ACTIONS, "action", name, provides, counts)


def ensure_builtins() -> None:
    """Import the modules that register the shipped lookups and actions."""
    from shared.flows import builtin  # noqa: F401
