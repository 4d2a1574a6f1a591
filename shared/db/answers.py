"""A handler stage's two round trips to PostgreSQL around its answer to one inbound message.

Before: :func:`start` reads the message with its sender, the reply already stored for it (a redelivered
task), and whether it is the message's turn in its conversation (:mod:`shared.db.turns`), all in one
statement. After: :func:`store_reply` stores the reply with its ``queued`` event and, for the handler's
last hop, records the message as handled, again in one statement, so the reply and the end of the turn
commit together.

Both run in autocommit (a single statement is atomic on its own): no BEGIN and COMMIT round trips, and
the reply is durable when :func:`store_reply` returns, so ``notify.send`` may be published for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.db.contacts import SET_OPTED_OUT_IF_CHANGED
from shared.db.conversations import BOT_MAY_ANSWER
from shared.db.errors import NotFound, wrap_errors
from shared.db.messages import HANDLED_SET, INBOUND_COLUMNS, INBOUND_FROM, InboundRecord
from shared.db.pool import autocommit
from shared.db.turns import AHEAD_OF_ME, OWN_AGE, Turn, ahead_params, turn_from

# The columns of shared.db.messages.get_inbound, the reply stored under %(reply_key)s, and the earlier
# messages holding the turn (as arrays: the aggregate gives one row whether there are any or not), with
# the message's own age as the turn reads it.
_START = f"""
SELECT {INBOUND_COLUMNS},
       (SELECT r.id FROM messages r WHERE r.idempotency_key = %(reply_key)s) AS reply_id,
       ahead.ids AS ahead_ids, ahead.stale AS ahead_stale, {OWN_AGE} AS own_age
{INBOUND_FROM}
CROSS JOIN LATERAL (
    SELECT array_agg(p.id ORDER BY p.id) AS ids, array_agg(p.stale ORDER BY p.id) AS stale
    FROM ({AHEAD_OF_ME}) p
) ahead
WHERE me.id = %(id)s AND me.direction = 'in'
"""  # noqa: S608 - constant subquery, no input

# Where the reply takes its contact and conversation from: the inbound message, as is or (the handler's
# last hop) marked handled as shared.db.messages.mark_handled does.
_INBOUND = "SELECT contact_id, conversation_id FROM messages WHERE id = %(inbound_id)s AND direction = 'in'"
_INBOUND_HANDLED = f"""
UPDATE messages SET {HANDLED_SET}
WHERE id = %(inbound_id)s AND direction = 'in'
RETURNING contact_id, conversation_id
"""  # noqa: S608 - constant, no input
# Stored once per idempotency key, with the 'queued' event of its timeline, when {guard} holds, after the
# change it confirms ({change}: a CTE and its comma, or nothing). ``new_id`` is NULL when the key was taken
# or the guard did not hold.
_STORE_REPLY = """
WITH inbound AS ({inbound}), {change}reply AS (
    INSERT INTO messages (conversation_id, contact_id, direction, provider, idempotency_key, type, body,
                          payload, status, bypass_opt_out)
    SELECT conversation_id, contact_id, 'out', %(provider)s, %(key)s, %(type)s, %(body)s, %(payload)s,
           'queued', %(bypass_opt_out)s
    FROM inbound
    WHERE {guard}
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), queued AS (
    INSERT INTO message_events (message_id, status) SELECT id, 'queued' FROM reply
)
SELECT EXISTS (SELECT FROM inbound) AS found, (SELECT id FROM reply) AS new_id
"""
_BOT_GUARD = BOT_MAY_ANSWER.format(conversation_id="inbound.conversation_id")
_STORE = _STORE_REPLY.format(inbound=_INBOUND, change="", guard="true")
_STORE_AND_HANDLE = _STORE_REPLY.format(inbound=_INBOUND_HANDLED, change="", guard="true")
_STORE_AND_HANDLE_IF_BOT_MAY = _STORE_REPLY.format(inbound=_INBOUND_HANDLED, change="", guard=_BOT_GUARD)
# A STOP's or START's confirmation, stored by the statement that opts the sender out or in, and only when
# that changed the contact: the confirmation and the change commit together, so a redelivered route finds
# its confirmation stored exactly when its first run made the change.
_OPT_INBOUND_SENDER = SET_OPTED_OUT_IF_CHANGED.format(contact_id="(SELECT contact_id FROM inbound)")
_OPTING = f"opting AS ({_OPT_INBOUND_SENDER}), "
_STORE_IF_OPTING_CHANGED = _STORE_REPLY.format(
    inbound=_INBOUND, change=_OPTING, guard="EXISTS (SELECT FROM opting)"
)
# A request for a person: the conversation handed over and the confirmation stored by one statement, and
# the confirmation only when that statement handed it over (open, its contact not opted out), so neither
# commits without the other, and a second request, or one in a conversation an operator took over, is
# not confirmed again. The message is recorded as handled either way.
_HANDING = """handing AS (
    UPDATE conversations hv SET status = 'handoff', closed_at = NULL
    FROM inbound
    WHERE hv.id = inbound.conversation_id AND hv.status = 'open'
      AND NOT EXISTS (SELECT FROM contacts hc WHERE hc.id = inbound.contact_id AND hc.opted_out)
    RETURNING hv.id
), """
_STORE_IF_HANDED_OVER = _STORE_REPLY.format(
    inbound=_INBOUND_HANDLED, change=_HANDING, guard="EXISTS (SELECT FROM handing)"
)
# In a statement of its own: the statement above cannot see a row committed while it waited on the key.
_ID_BY_KEY = "SELECT id FROM messages WHERE idempotency_key = %(key)s"


@dataclass(frozen=True)
class Start:
    """What a handler knows before it answers: the message, its stored reply if any, and its turn."""

    record: InboundRecord
    reply_id: int | None  # the reply already stored under the handler's key (a redelivered task)
    turn: Turn


def start(
    conn: psycopg.Connection, message_id: int, *, reply_key: str, own_stage: str | None = None
) -> Start:
    """Read inbound message ``message_id`` with its sender, the reply stored under ``reply_key`` and its
    turn (``own_stage``: see :func:`shared.db.turns.ahead_of`); raises ``NotFound``."""
    params = {"id": message_id, "reply_key": reply_key} | ahead_params(own_stage)
    with wrap_errors(), autocommit(conn):
        row = conn.execute(_START, params).fetchone()
    if row is None:
        raise NotFound(f"inbound message {message_id}")
    reply_id, ids, stale = row.pop("reply_id"), row.pop("ahead_ids"), row.pop("ahead_stale")
    own_age = row.pop("own_age")
    record = InboundRecord(**{**row, "payload": row["payload"] or {}})
    ahead = list(zip(ids or [], stale or [], strict=True))
    return Start(record, reply_id, turn_from(ahead, own_age, own_stage))


def store_reply(
    conn: psycopg.Connection,
    inbound_id: int,
    *,
    key: str,
    provider: str,
    kind: str,
    body: str,
    payload: dict[str, Any],
    bypass_opt_out: bool,
    handled: bool,
    only_if_bot_may: bool = False,
) -> tuple[int, bool] | None:
    """Store the reply to inbound ``inbound_id`` as ``queued`` under idempotency key ``key``; return (its
    id, whether it is new): the same key twice stores nothing new and returns the first reply's id.

    ``handled``: also record that a handler answered the message (it stops holding its conversation's
    turn), in the same statement. ``only_if_bot_may`` (with ``handled``): store it only while the
    conversation is open (not handed to a person nor closed) and its contact has not opted out, checked in
    that statement;
    None when it was not stored (the message is still recorded as handled). ``conn`` must be idle: the
    reply is committed when this returns. Raises ``NotFound`` when there is no such inbound message.
    """
    if only_if_bot_may and not handled:
        raise ValueError("a reply stored only if the bot may answer is a handler's last one")
    params = _reply_params(inbound_id, key, provider, kind, body, payload, bypass_opt_out=bypass_opt_out)
    if only_if_bot_may:
        return _store(conn, _STORE_AND_HANDLE_IF_BOT_MAY, params, may_skip=True)
    return _store(conn, _STORE_AND_HANDLE if handled else _STORE, params, may_skip=False)


def store_opting_reply(
    conn: psycopg.Connection,
    inbound_id: int,
    *,
    opted_out: bool,
    key: str,
    provider: str,
    body: str,
    in_transaction: bool = False,
) -> tuple[int, bool] | None:
    """Opt the sender of inbound ``inbound_id`` out (``opted_out``) or back in and store the text reply that
    confirms it, as :func:`store_reply` does, in one statement: the reply only when that statement changed
    the contact, so of two STOPs (or STARTs) stored at once one is confirmed. None when nothing was stored;
    the stored reply's id when ``key`` was taken (a redelivered route). A STOP's confirmation is sent
    although its contact opted out: the one message they still receive.

    ``in_transaction``: run in the caller's open transaction (the router's storing one, so the change
    commits with the message), which commits it; ``conn`` need not be idle then."""
    params = _reply_params(inbound_id, key, provider, "text", body, {}, bypass_opt_out=opted_out)
    return _store(
        conn,
        _STORE_IF_OPTING_CHANGED,
        params | {"opted_out": opted_out},
        may_skip=True,
        in_transaction=in_transaction,
    )


def store_handoff_reply(
    conn: psycopg.Connection,
    inbound_id: int,
    *,
    key: str,
    provider: str,
    body: str,
    payload: dict[str, Any],
) -> tuple[int, bool] | None:
    """Hand the conversation of inbound ``inbound_id`` to a person and store the text reply that confirms
    it, as :func:`store_reply` does, in one statement, recording the message as handled: the reply only
    when that statement handed the conversation over. None when nothing was stored; the stored reply's id
    when ``key`` was taken (a redelivered task)."""
    params = _reply_params(inbound_id, key, provider, "text", body, payload, bypass_opt_out=False)
    return _store(conn, _STORE_IF_HANDED_OVER, params, may_skip=True)


def _reply_params(
    inbound_id: int,
    key: str,
    provider: str,
    kind: str,
    body: str,
    payload: dict[str, Any],
    *,
    bypass_opt_out: bool,
) -> dict[str, Any]:
    """The parameters every store statement above takes."""
    return {
        "inbound_id": inbound_id,
        "key": key,
        "provider": provider,
        "type": kind,
        "body": body,
        "payload": Jsonb(payload),
        "bypass_opt_out": bypass_opt_out,
    }


def _store(
    conn: psycopg.Connection,
    statement: str,
    params: dict[str, Any],
    *,
    may_skip: bool,
    in_transaction: bool = False,
) -> tuple[int, bool] | None:
    """Run one of the store statements above; ``may_skip``: its guard may store nothing;
    ``in_transaction``: in the caller's open transaction rather than in autocommit."""
    with wrap_errors(), contextlib.nullcontext(conn) if in_transaction else autocommit(conn):
        row = conn.execute(statement, params).fetchone()
        if row is None or not row["found"]:
            raise NotFound(f"inbound message {params['inbound_id']}")
        if row["new_id"] is not None:
            return row["new_id"], True
        existing = conn.execute(_ID_BY_KEY, {"key": params["key"]}).fetchone()
    if existing is None:
        assert may_skip, "the conflicting row holds the key"
        return None
    return existing["id"], False
