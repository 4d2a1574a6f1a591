"""Phone links (a verified WhatsApp number per user) and the pending verification codes behind them.

Only a keyed hash of a code is ever stored (see ``shared/verification.py`` for the policy); this module
is the SQL, the policy lives there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from shared.db.errors import wrap_errors

# --- user_links --------------------------------------------------------------------------------------

_GET_LINK = "SELECT user_id, phone, linked_at FROM user_links WHERE user_id = %(user_id)s"
_GET_LINK_BY_PHONE = "SELECT user_id, phone, linked_at FROM user_links WHERE phone = %(phone)s"
# A user relinking moves to the new number (the same number again keeps linked_at). A number that is
# already another user's raises UniqueViolation on user_links_phone_key, which the caller turns into
# "already linked to another account".
_LINK = """
INSERT INTO user_links (user_id, phone) VALUES (%(user_id)s, %(phone)s)
ON CONFLICT (user_id) DO UPDATE SET phone = EXCLUDED.phone,
    linked_at = CASE WHEN user_links.phone = EXCLUDED.phone THEN user_links.linked_at ELSE now() END
RETURNING user_id, phone, linked_at
"""
_UNLINK = "DELETE FROM user_links WHERE user_id = %(user_id)s"
_UNLINK_PHONE = "DELETE FROM user_links WHERE phone = %(phone)s RETURNING user_id"

# --- verification_codes ------------------------------------------------------------------------------

# One row per user: a new code replaces the old one and resets its attempts and expiry. Expiry is DB time,
# so every process agrees on it whatever its own clock says.
_REPLACE_CODE = """
INSERT INTO verification_codes (user_id, phone, code_hash, attempts, expires_at, created_at)
VALUES (%(user_id)s, %(phone)s, %(code_hash)s, 0, now() + make_interval(secs => %(ttl)s), now())
ON CONFLICT (user_id) DO UPDATE SET
    phone = EXCLUDED.phone, code_hash = EXCLUDED.code_hash, attempts = 0,
    expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at
RETURNING expires_at
"""
# Claim one attempt on every live, unlocked code for the phone BEFORE comparing: the row lock taken by the
# UPDATE serialises concurrent guesses, and PostgreSQL re-checks ``attempts < max`` on the updated row, so
# no number of parallel guesses can get more than ``max`` comparisons. With a user id, only that user's
# code is claimed (a host that says whose code it submits), otherwise every user's code for the phone.
# Live at ``at``, when the code was presented (a WhatsApp VERIFY's arrival): issued by then and not expired
# (a code issued after a message came in is none the message can hold); unexpired now when not given.
_CLAIM_ATTEMPT = """
UPDATE verification_codes SET attempts = attempts + 1
WHERE phone = %(phone)s AND attempts < %(max_attempts)s
    AND (%(at)s::timestamptz IS NULL OR created_at <= %(at)s::timestamptz)
    AND expires_at > COALESCE(%(at)s::timestamptz, now())
    AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
RETURNING user_id, code_hash, attempts
"""
# Serialises the issuing of codes for one phone, so an issue that compares its new code with the other
# live codes for the number sees every one of them, including one issued a moment ago: a row lock can't do
# it, as the row that would conflict may not exist yet. Transaction-scoped (released at commit, so safe
# behind PgBouncer's transaction pooling); the two-key form is a key space apart from the migrations'
# one-key lock, and two phones sharing a hashtext only wait for each other.
_CODE_LOCK_NAMESPACE = 0x76657269  # "veri"
_LOCK_PHONE_CODES = "SELECT pg_advisory_xact_lock(%(namespace)s, hashtext(%(phone)s))"
# The codes a VERIFY from the phone could still match, other than the user's own (which is being
# replaced). Locked ones (attempts used up) are included: they are live until they expire.
_OTHER_LIVE_CODES = """
SELECT user_id, code_hash FROM verification_codes
WHERE phone = %(phone)s AND user_id <> %(user_id)s AND expires_at > now()
"""
_CODES_FOR_PHONE = """
SELECT user_id, attempts, expires_at <= COALESCE(%(at)s::timestamptz, now()) AS expired
FROM verification_codes WHERE phone = %(phone)s AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
    AND (%(at)s::timestamptz IS NULL OR created_at <= %(at)s::timestamptz)
ORDER BY created_at DESC
"""
# Whether a code for the phone was issued after ``at`` (a VERIFY's arrival): one the message could not hold,
# which replaced the user's code of then or came after a message sent without one.
_CODE_ISSUED_AFTER = """
SELECT EXISTS (
    SELECT 1 FROM verification_codes WHERE phone = %(phone)s AND created_at > %(at)s::timestamptz
        AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
) AS issued
"""
_DELETE_CODES_FOR_PHONE = "DELETE FROM verification_codes WHERE phone = %(phone)s"
_DELETE_CODE = "DELETE FROM verification_codes WHERE user_id = %(user_id)s"
_GET_CODE = """
SELECT user_id, phone, code_hash, attempts, expires_at, created_at
FROM verification_codes WHERE user_id = %(user_id)s
"""
_DELETE_EXPIRED = """
DELETE FROM verification_codes WHERE expires_at <= now() - make_interval(secs => %(grace)s)
"""


@dataclass(frozen=True)
class Link:
    user_id: UUID
    phone: str
    linked_at: datetime


@dataclass(frozen=True)
class ClaimedCode:
    """A code that one attempt was just spent on: compare ``code_hash`` now, inside the same transaction."""

    user_id: UUID
    code_hash: bytes
    attempts: int


@dataclass(frozen=True)
class CodeState:
    user_id: UUID
    attempts: int
    expired: bool


def get_link(conn: psycopg.Connection, user_id: UUID) -> Link | None:
    with wrap_errors():
        row = conn.execute(_GET_LINK, {"user_id": user_id}).fetchone()
    return Link(**row) if row else None


def get_link_by_phone(conn: psycopg.Connection, phone: str) -> Link | None:
    with wrap_errors():
        row = conn.execute(_GET_LINK_BY_PHONE, {"phone": phone}).fetchone()
    return Link(**row) if row else None


def link_phone(conn: psycopg.Connection, user_id: UUID, phone: str) -> Link:
    """Link (or relink) the user to the phone; raises ``Duplicate`` when the phone is another user's."""
    with wrap_errors():
        row = conn.execute(_LINK, {"user_id": user_id, "phone": phone}).fetchone()
    assert row is not None
    return Link(**row)


def unlink(conn: psycopg.Connection, user_id: UUID) -> bool:
    with wrap_errors():
        return conn.execute(_UNLINK, {"user_id": user_id}).rowcount > 0


def unlink_phone(conn: psycopg.Connection, phone: str) -> UUID | None:
    """Remove the number's link, whoever's it is; the user it was linked to, if any."""
    with wrap_errors():
        row = conn.execute(_UNLINK_PHONE, {"phone": phone}).fetchone()
    return row["user_id"] if row else None


def replace_code(
    conn: psycopg.Connection, user_id: UUID, phone: str, code_hash: bytes, ttl_seconds: int
) -> datetime:
    """Store the user's new pending code (replacing any older one); return when it expires."""
    with wrap_errors():
        row = conn.execute(
            _REPLACE_CODE, {"user_id": user_id, "phone": phone, "code_hash": code_hash, "ttl": ttl_seconds}
        ).fetchone()
    assert row is not None
    return row["expires_at"]


def lock_phone_codes(conn: psycopg.Connection, phone: str) -> None:
    """Wait for (then hold, until the transaction ends) the right to issue a code for ``phone``."""
    with wrap_errors():
        conn.execute(_LOCK_PHONE_CODES, {"namespace": _CODE_LOCK_NAMESPACE, "phone": phone})


def other_live_codes(conn: psycopg.Connection, user_id: UUID, phone: str) -> list[tuple[UUID, bytes]]:
    """(user id, code hash) of every unexpired code for ``phone`` that is not ``user_id``'s."""
    with wrap_errors():
        rows = conn.execute(_OTHER_LIVE_CODES, {"user_id": user_id, "phone": phone}).fetchall()
    return [(row["user_id"], bytes(row["code_hash"])) for row in rows]


def claim_attempts(
    conn: psycopg.Connection,
    phone: str,
    max_attempts: int,
    user_id: UUID | None = None,
    at: datetime | None = None,
) -> list[ClaimedCode]:
    """Spend an attempt on every code for ``phone`` live at ``at`` (issued by then and not expired; default
    now), only ``user_id``'s when given, and return them."""
    params = {"phone": phone, "max_attempts": max_attempts, "user_id": user_id, "at": at}
    with wrap_errors():
        rows = conn.execute(_CLAIM_ATTEMPT, params).fetchall()
    return [ClaimedCode(row["user_id"], bytes(row["code_hash"]), row["attempts"]) for row in rows]


def codes_for_phone(
    conn: psycopg.Connection, phone: str, user_id: UUID | None = None, at: datetime | None = None
) -> list[CodeState]:
    """Every code pending for the phone at ``at`` (DB time; default now), only ``user_id``'s when given,
    newest first, with whether it had expired by then."""
    with wrap_errors():
        rows = conn.execute(_CODES_FOR_PHONE, {"phone": phone, "user_id": user_id, "at": at}).fetchall()
    return [CodeState(**row) for row in rows]


def code_issued_after(
    conn: psycopg.Connection, phone: str, at: datetime, user_id: UUID | None = None
) -> bool:
    """Whether a code for ``phone`` (only ``user_id``'s when given) was issued after ``at`` (DB time)."""
    with wrap_errors():
        row = conn.execute(_CODE_ISSUED_AFTER, {"phone": phone, "at": at, "user_id": user_id}).fetchone()
    return bool(row and row["issued"])


def get_code(conn: psycopg.Connection, user_id: UUID) -> dict | None:
    with wrap_errors():
        return conn.execute(_GET_CODE, {"user_id": user_id}).fetchone()


def delete_code(conn: psycopg.Connection, user_id: UUID) -> None:
    with wrap_errors():
        conn.execute(_DELETE_CODE, {"user_id": user_id})


def delete_codes_for_phone(conn: psycopg.Connection, phone: str) -> None:
    with wrap_errors():
        conn.execute(_DELETE_CODES_FOR_PHONE, {"phone": phone})


def delete_expired_codes(conn: psycopg.Connection, grace_seconds: int = 3600) -> int:
    """Maintenance: drop codes expired for longer than ``grace_seconds`` (kept a while to say "expired")."""
    with wrap_errors():
        return conn.execute(_DELETE_EXPIRED, {"grace": grace_seconds}).rowcount


# --- outcomes of WhatsApp VERIFY messages, kept on the inbound message row -----------------------------

# The verify worker records what a VERIFY message did on the message itself, in the same transaction that
# spends the attempt and links the phone. A redelivered task finds the outcome and only re-sends the reply,
# so it can neither burn a second attempt nor link twice. FOR UPDATE serialises two concurrent deliveries.
# The sender's contact is held first (FOR SHARE, taken in the router's order: contact, then message), so
# its number cannot change hands between the check and the link (shared/db/contacts.py unlinks then).
_LOCK_SENDER = """
SELECT c.phone FROM messages me JOIN contacts c ON c.id = me.contact_id
WHERE me.id = %(id)s AND me.direction = 'in' FOR SHARE OF c
"""
_LOCK_INBOUND_OUTCOME = """
SELECT created_at, payload -> '_verify_outcome' AS outcome FROM messages
WHERE id = %(id)s AND direction = 'in' FOR UPDATE
"""
_RECORD_INBOUND_OUTCOME = """
UPDATE messages SET payload = payload || jsonb_build_object('_verify_outcome', %(outcome)s::jsonb),
    updated_at = now()
WHERE id = %(id)s
"""


@dataclass(frozen=True)
class LockedInbound:
    """An inbound message locked for its VERIFY: when it was stored (the code's expiry is judged then) and
    the outcome already recorded for it, if any."""

    received_at: datetime
    outcome: dict | None
    contact_phone: str | None  # the number its sender's contact has now, held until the transaction ends


def lock_inbound_outcome(conn: psycopg.Connection, message_id: int) -> LockedInbound | None:
    """Lock the inbound message row, and its contact's for share; None when there is none."""
    with wrap_errors():
        sender = conn.execute(_LOCK_SENDER, {"id": message_id}).fetchone()
        row = conn.execute(_LOCK_INBOUND_OUTCOME, {"id": message_id}).fetchone()
    if sender is None or row is None:
        return None
    return LockedInbound(received_at=row["created_at"], outcome=row["outcome"], contact_phone=sender["phone"])


def record_inbound_outcome(conn: psycopg.Connection, message_id: int, outcome: dict) -> None:
    with wrap_errors():
        conn.execute(_RECORD_INBOUND_OUTCOME, {"id": message_id, "outcome": Jsonb(outcome)})
