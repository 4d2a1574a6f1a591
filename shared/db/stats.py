"""Figures for ``GET /api/v1/stats``: two aggregate queries, each one pass with GROUPING SETS.

Every figure comes overall, per provider, and per (provider, business number), because a business number
only means something within its provider (an E.164 number for Twilio, a phone_number_id for Meta).

- Conversations: how many are live (open or handoff), and the average first-response time, i.e. for each
  conversation the time from its first inbound message to the first outbound message after it (a
  conversation we opened ourselves, or never answered, has no first response and is not averaged).
- Messages: totals in and out, and active users = distinct contacts who wrote to us in the last 24 hours
  and 7 days. A message outside any conversation counts under its own provider and no number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from shared.db.errors import wrap_errors

# `level` is GROUPING(provider, business_number): 3 overall, 1 per provider, 0 per number.
_CONVERSATIONS = """
WITH first_in AS (
    SELECT conversation_id, min(created_at) AS at
    FROM messages WHERE direction = 'in' AND conversation_id IS NOT NULL
    GROUP BY conversation_id
), first_response AS (
    SELECT f.conversation_id, min(m.created_at) - f.at AS wait
    FROM first_in f
    JOIN messages m ON m.conversation_id = f.conversation_id AND m.direction = 'out' AND m.created_at >= f.at
    GROUP BY f.conversation_id, f.at
)
SELECT c.provider, c.business_number, GROUPING(c.provider, c.business_number) AS level,
       count(*) AS conversations,
       count(*) FILTER (WHERE c.status <> 'closed') AS active_conversations,
       count(r.wait) AS answered_conversations,
       avg(extract(epoch FROM r.wait))::float8 AS avg_first_response_seconds
FROM conversations c LEFT JOIN first_response r ON r.conversation_id = c.id
GROUP BY GROUPING SETS ((), (c.provider), (c.provider, c.business_number))
"""
_MESSAGES = """
WITH m AS (
    SELECT COALESCE(c.provider, m.provider) AS provider, c.business_number, m.direction, m.contact_id,
           m.created_at
    FROM messages m LEFT JOIN conversations c ON c.id = m.conversation_id
)
SELECT provider, business_number, GROUPING(provider, business_number) AS level,
       count(*) FILTER (WHERE direction = 'in') AS messages_in,
       count(*) FILTER (WHERE direction = 'out') AS messages_out,
       count(DISTINCT contact_id) FILTER (
           WHERE direction = 'in' AND created_at >= %(now)s - interval '24 hours') AS active_users_24h,
       count(DISTINCT contact_id) FILTER (
           WHERE direction = 'in' AND created_at >= %(now)s - interval '7 days') AS active_users_7d
FROM m
GROUP BY GROUPING SETS ((), (provider), (provider, business_number))
"""

_OVERALL, _PER_PROVIDER, _PER_NUMBER = 3, 1, 0
STATS_TIMEOUT_MS = 120_000


@dataclass
class Figures:
    """The figures of one group (overall, a provider, or a provider's number)."""

    conversations: int = 0
    active_conversations: int = 0
    answered_conversations: int = 0
    avg_first_response_seconds: float | None = None
    messages_in: int = 0
    messages_out: int = 0
    active_users_24h: int = 0
    active_users_7d: int = 0


@dataclass
class Stats:
    overall: Figures
    by_provider: dict[str, Figures] = field(default_factory=dict)
    by_number: dict[tuple[str, str | None], Figures] = field(default_factory=dict)


def compute(conn: psycopg.Connection, now: datetime | None = None) -> Stats:
    """All figures, in two queries; ``now`` anchors the active-user windows (default: the database's)."""
    stats = Stats(overall=Figures())

    def figures_for(row: dict[str, Any]) -> Figures:
        if row["level"] == _OVERALL:
            return stats.overall
        if row["level"] == _PER_PROVIDER:
            return stats.by_provider.setdefault(row["provider"], Figures())
        return stats.by_number.setdefault((row["provider"], row["business_number"]), Figures())

    with wrap_errors():
        # Whole-table aggregates: longer than the pool's statement timeout allows on a big database, and
        # only for this transaction (the caller's: SET LOCAL ends with it).
        conn.execute(f"SET LOCAL statement_timeout = {STATS_TIMEOUT_MS}")
        anchor = now or conn.execute("SELECT now() AS now").fetchone()["now"]  # type: ignore[index]
        conversation_rows = conn.execute(_CONVERSATIONS).fetchall()
        message_rows = conn.execute(_MESSAGES, {"now": anchor}).fetchall()
    for row in [*conversation_rows, *message_rows]:
        target = figures_for(row)
        for name, value in row.items():
            if name not in ("provider", "business_number", "level"):
                setattr(target, name, value)
    return stats
