"""Contacts: the WhatsApp users who write to us, known by E.164 phone and/or Meta's business-scoped id.

A contact is created on its first inbound message and refreshed on every later one (profile name, the
time of the last inbound message that opens WhatsApp's 24-hour window). Opt-out lives here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from shared.db import links
from shared.db.errors import wrap_errors
from shared.logging import get_logger, mask_phone

log = get_logger(__name__)

_COLUMNS = "id, phone, bsuid, profile_name, opted_out, opted_out_at, last_inbound_at, created_at"

# When the user wrote: the provider's time for the message (Meta's and Kapso's ``timestamp``, else when
# ingress received it), never later than the database's now(). WhatsApp's 24-hour window runs from then, not
# from when the router got to it: after a backlog of hours the window must not look open when WhatsApp's has
# closed (free-form sends would fail with Meta 131047 / Twilio 63016 instead of asking for a template).
WROTE_AT = "LEAST(now(), %(sent_at)s::timestamptz)"
# Whether contact {alias} is another WhatsApp account than the message's sender: it has a business-scoped
# id, and the message another one. The number the message comes from was recycled or moved to the sender;
# the contact is not the sender, whatever number it has. A contact known by phone alone (before Meta sent
# the ids, or through Twilio) may be the sender: nothing says otherwise.
_OTHER_ACCOUNT = "(%(bsuid)s::text IS NOT NULL AND {alias}.bsuid IS NOT NULL AND {alias}.bsuid <> %(bsuid)s)"
# Another account's contact holds the message's number.
_NUMBER_HELD_BY_OTHER_ACCOUNT = f"""EXISTS (
    SELECT 1 FROM contacts h WHERE h.phone = %(phone)s AND {_OTHER_ACCOUNT.format(alias="h")}
)"""  # noqa: S608 - constant SQL text, no input
# Any unique key (phone or bsuid) already taken means the contact exists: insert nothing, then find and
# update it below. Two first messages from one new user racing each other both end on the same row. A
# number another account still holds (this message routed late, see _RELEASE_NUMBER) is not taken: the
# sender is created by its business-scoped id alone.
_INSERT_IF_NEW = f"""
INSERT INTO contacts (phone, bsuid, profile_name, last_inbound_at)
SELECT CASE WHEN NOT {_NUMBER_HELD_BY_OTHER_ACCOUNT} THEN %(phone)s END, %(bsuid)s, %(profile_name)s,
       {WROTE_AT}
ON CONFLICT DO NOTHING
"""
# The row matching the phone wins over one matching only the bsuid (a phone is what users link), unless it
# is another account's.
_MATCH = f"""
FROM contacts m
WHERE (%(phone)s::text IS NOT NULL AND m.phone = %(phone)s AND NOT {_OTHER_ACCOUNT.format(alias="m")})
   OR (%(bsuid)s::text IS NOT NULL AND m.bsuid = %(bsuid)s)
ORDER BY (m.phone IS NOT DISTINCT FROM %(phone)s) DESC, m.id
LIMIT 1
FOR UPDATE
"""
# A message from a number another account's contact holds, sent after that contact's last message: the
# number is the sender's now (recycled, or the sender moved onto it), so that contact lets go of it (it
# keeps its business-scoped id, so a message of its own still finds it). Its link goes too (the caller's):
# a link answers only for the account that verified it, so the sender has to VERIFY. Sent before (routed
# late), it changes nothing: the number stays with its holder. Parameters: phone, bsuid, sent_at.
_RELEASE_NUMBER = f"""
UPDATE contacts h SET phone = NULL, updated_at = now()
WHERE h.phone = %(phone)s AND {_OTHER_ACCOUNT.format(alias="h")}
  AND (h.last_inbound_at IS NULL OR {WROTE_AT} > h.last_inbound_at)
RETURNING h.id
"""  # noqa: S608 - constant SQL text, no input
_FIND_FOR_UPDATE = f"SELECT {_COLUMNS} {_MATCH}"
# Fill an identifier we did not know yet, unless another contact already holds it (then they stay two
# rows rather than failing the message). A message routed late does not move the window back. A phone
# other than the contact's, on a message found by its business-scoped id, is the user's new number
# (WhatsApp's "change number" keeps that id): replies go there, not to the old number, which may be someone
# else's by now, and the old number's link is removed (upsert_from_inbound). Unless another contact holds
# it, or the message was not sent after the contact's last one (routed late, it does not move it back).
# Providers give seconds, so the same second says nothing about which came first: the number stays.
_REFRESH_SET = f"""
UPDATE contacts c SET
    phone = CASE WHEN %(phone)s::text IS NOT NULL AND c.phone IS DISTINCT FROM %(phone)s
                  AND (c.phone IS NULL OR c.last_inbound_at IS NULL OR {WROTE_AT} > c.last_inbound_at)
                  AND NOT EXISTS (SELECT 1 FROM contacts o WHERE o.phone = %(phone)s)
             THEN %(phone)s ELSE c.phone END,
    bsuid = CASE WHEN c.bsuid IS NULL AND %(bsuid)s::text IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM contacts o WHERE o.bsuid = %(bsuid)s)
             THEN %(bsuid)s ELSE c.bsuid END,
    profile_name = COALESCE(%(profile_name)s, c.profile_name),
    last_inbound_at = GREATEST(c.last_inbound_at, {WROTE_AT}),
    updated_at = now()
"""  # noqa: S608 - constant SQL text, no input
_REFRESH = f"{_REFRESH_SET} WHERE c.id = %(id)s RETURNING {_COLUMNS}"
# The find and the refresh above in one statement, for a sender seen before whose number stays what it
# was (no row otherwise): the common case of shared/db/inbound_store.py, which runs it as a CTE. A number
# that changes hands (the contact's own changes, or another account holds the message's) unlinks numbers,
# which upsert_from_inbound does, statement by statement. Parameters: phone, bsuid, profile_name, sent_at.
REFRESH_KNOWN = f"""{_REFRESH_SET}
WHERE c.id = (SELECT m.id {_MATCH})
  AND (%(phone)s::text IS NULL OR c.phone IS NULL OR c.phone = %(phone)s)
  AND NOT {_NUMBER_HELD_BY_OTHER_ACCOUNT}
RETURNING {_COLUMNS}"""
_GET = f"SELECT {_COLUMNS} FROM contacts WHERE id = %(id)s"  # noqa: S608 - constant column list, no input
_GET_BY_PHONE = f"SELECT {_COLUMNS} FROM contacts WHERE phone = %(phone)s"  # noqa: S608 - constant column list, no input
# Opt contact {contact_id} (a parameter or a column) out (%(opted_out)s true) or back in, returning its id
# only when that changed it. The statement that opts out says whether it did, so it decides who confirms:
# of two STOPs routed at once, the second waits on the row's lock, then finds the contact opted out and
# changes nothing (shared/db/answers.py stores the confirmation in the same statement).
SET_OPTED_OUT_IF_CHANGED = """
UPDATE contacts SET opted_out = %(opted_out)s,
    opted_out_at = CASE WHEN %(opted_out)s THEN now() END,
    updated_at = now()
WHERE id = {contact_id} AND opted_out <> %(opted_out)s
RETURNING id
"""


@dataclass(frozen=True)
class Contact:
    id: int
    phone: str | None
    bsuid: str | None
    profile_name: str | None
    opted_out: bool
    opted_out_at: datetime | None
    last_inbound_at: datetime | None
    created_at: datetime

    @property
    def user_key(self) -> str:
        """The key sessions and rate limits use: the E.164 phone, else the business-scoped id."""
        return self.phone or self.bsuid or f"contact:{self.id}"


def upsert_from_inbound(
    conn: psycopg.Connection,
    *,
    phone: str | None,
    bsuid: str | None,
    profile_name: str | None,
    sent_at: datetime,
) -> Contact:
    """The contact who sent an inbound message, created on first sight and refreshed otherwise.

    ``sent_at`` is when the user sent it (the provider's time, :attr:`InboundMessage.sent_at`): the
    contact's 24-hour window runs from then, capped at the database's now() (:data:`WROTE_AT`).

    Call inside the transaction that stores the message; the contact row stays locked until it commits.
    """
    if not phone and not bsuid:
        raise ValueError("an inbound message needs a sender phone or business-scoped user id")
    params = {"phone": phone, "bsuid": bsuid, "profile_name": profile_name, "sent_at": sent_at}
    with wrap_errors():
        if phone and bsuid and conn.execute(_RELEASE_NUMBER, params).fetchall():
            _unlink(conn, phone, "the number is another WhatsApp account's now")
        conn.execute(_INSERT_IF_NEW, params)
        found = conn.execute(_FIND_FOR_UPDATE, params).fetchone()
        assert found is not None, "a contact inserted or conflicting must be found"
        row = conn.execute(_REFRESH, {**params, "id": found["id"]}).fetchone()
    assert row is not None
    if found["phone"] is not None and row["phone"] != found["phone"]:
        _unlink(conn, found["phone"], "the WhatsApp account moved to another number")
    return Contact(**row)


def _unlink(conn: psycopg.Connection, phone: str, why: str) -> None:
    """Remove the link of a number the WhatsApp account that verified it no longer has (a later holder of
    the number would otherwise act as the linked user)."""
    unlinked = links.unlink_phone(conn, phone)
    if unlinked is not None:
        log.warning("phone link removed", reason=why, user_id=str(unlinked), phone=mask_phone(phone))


def get(conn: psycopg.Connection, contact_id: int) -> Contact | None:
    with wrap_errors():
        row = conn.execute(_GET, {"id": contact_id}).fetchone()
    return Contact(**row) if row else None


def get_by_phone(conn: psycopg.Connection, phone: str) -> Contact | None:
    with wrap_errors():
        row = conn.execute(_GET_BY_PHONE, {"phone": phone}).fetchone()
    return Contact(**row) if row else None
