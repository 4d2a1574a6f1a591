"""Proposals and their items: saved in one transaction, once per source message.

``proposals.source_message_id`` is unique, so a redelivered ``persist.save_proposal`` (or two racing
workers) store one proposal: the second save finds the first's id and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from shared.ai.proposal import Proposal
from shared.db.errors import wrap_errors
from shared.db.pool import connection, transaction
from shared.db.workspaces import USABLE_PROJECTS

# The project comes from the sender's Redis session, chosen when /project checked their membership. It is
# taken only if the user may still use it (shared/db/workspaces.py's USABLE_PROJECTS), checked by this
# INSERT itself so no removal or archiving can slip between a check and the write: no row selected, none
# inserted. The casts type the parameters, which a SELECT (unlike VALUES) does not take from the columns.
_INSERT_PROPOSAL = f"""
INSERT INTO proposals (source_message_id, user_id, project_id, summary, total_estimated_hours,
                       confidence, parser)
SELECT %(source_message_id)s::bigint, m.user_id, p.id, %(summary)s::text, %(total)s::numeric,
       %(confidence)s::real, %(parser)s::text
{USABLE_PROJECTS} AND p.id = %(project_id)s
ON CONFLICT (source_message_id) DO NOTHING
RETURNING id
"""
_ID_BY_SOURCE = "SELECT id FROM proposals WHERE source_message_id = %(source_message_id)s"
_INSERT_ITEM = """
INSERT INTO proposal_items (proposal_id, position, type, title, description, estimated_hours, due_date,
                            priority)
VALUES (%(proposal_id)s, %(position)s, %(type)s, %(title)s, %(description)s, %(hours)s, %(due)s, %(priority)s)
"""
_GET = """
SELECT id, source_message_id, user_id, project_id, summary, total_estimated_hours, confidence, parser,
       created_at
FROM proposals WHERE id = %(id)s
"""
_ITEMS = """
SELECT position, type, title, description, estimated_hours, due_date, priority
FROM proposal_items WHERE proposal_id = %(id)s ORDER BY position
"""


@dataclass(frozen=True)
class Saved:
    """The proposal's id, and whether this call created it (False: it existed already)."""

    id: UUID
    created: bool


def save(
    source_message_id: int,
    proposal: Proposal,
    parser: str,
    *,
    user_id: UUID | str | None,
    project_id: UUID | str | None,
    conn: psycopg.Connection | None = None,
) -> Saved | None:
    """Store ``proposal`` and its items in ``project_id`` in one transaction; idempotent on
    ``source_message_id`` (a proposal already stored for it is returned as it is).

    Returns None, storing nothing, when ``user_id`` may not use ``project_id`` (not a member of its
    workspace, archived, unknown, or either is missing).
    """
    user_id, project_id = _uuid_or_none(user_id), _uuid_or_none(project_id)
    if conn is None:
        with transaction() as own:
            return save(source_message_id, proposal, parser, user_id=user_id, project_id=project_id, conn=own)
    with wrap_errors(), conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            _INSERT_PROPOSAL,
            {
                "source_message_id": source_message_id,
                "user_id": user_id,
                "project_id": project_id,
                "summary": proposal.summary,
                "total": proposal.total_estimated_hours,
                "confidence": proposal.confidence,
                "parser": parser,
            },
        ).fetchone()
        if row is None:
            existing = cur.execute(_ID_BY_SOURCE, {"source_message_id": source_message_id}).fetchone()
            return Saved(existing["id"], created=False) if existing is not None else None
        proposal_id = row["id"]
        cur.executemany(
            _INSERT_ITEM,
            [
                {
                    "proposal_id": proposal_id,
                    "position": position,
                    "type": item.type,
                    "title": item.title,
                    "description": item.description,
                    "hours": item.estimated_hours,
                    "due": item.due_date,
                    "priority": item.priority,
                }
                for position, item in enumerate(proposal.items, start=1)
            ],
        )
    return Saved(proposal_id, created=True)


def _uuid_or_none(value: UUID | str | None) -> UUID | None:
    if value is None or isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        return None


def get(proposal_id: UUID | str, conn: psycopg.Connection | None = None) -> dict[str, Any] | None:
    """The proposal row with its ``items`` (in order), or None."""
    if conn is None:
        with connection() as own:
            return get(proposal_id, own)
    with wrap_errors(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_GET, {"id": proposal_id}).fetchone()
        if row is None:
            return None
        items = cur.execute(_ITEMS, {"id": proposal_id}).fetchall()
    return {**row, "items": items}


def id_for_message(source_message_id: int, conn: psycopg.Connection | None = None) -> UUID | None:
    """The proposal made from inbound message ``source_message_id``, if any."""
    if conn is None:
        with connection() as own:
            return id_for_message(source_message_id, own)
    with wrap_errors(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_ID_BY_SOURCE, {"source_message_id": source_message_id}).fetchone()
    return row["id"] if row is not None else None
