"""Every other stored number that ``shared.phone`` now writes in the numbering plan's form takes it too,
as 0011 did for contacts: Mexican mobiles stored as +52 1 and ten digits, Brazilian ones without the ninth
digit. 0011 left them behind, and each is matched against numbers in the plan's form:

- ``user_links.phone``: the router and the handlers find a sender's user by ``user_links.phone =
  contacts.phone``, so a user linked by the older form was a stranger after 0011 (no commands, no
  proposals). The link takes the plan's form. Where the plan's form is linked too (to another user: a
  user has one link), the link made last is kept, since the later proof of holding the number is the one
  that says who holds it now (a number changes hands, a person opens a second account); on a tie the row
  already in the plan's form is kept, as inbound lookups have matched it since 0011. The dropped link's
  user is logged (their id and the masked number) so an operator can tell them to link again.
- ``verification_codes.phone``: a code's hash binds the number it was issued for (``shared/verification.py``),
  so a rewritten row could never match, and a VERIFY now always comes in the plan's form, so the row as
  it is will never be looked up either. Such codes are deleted rather than left to expire: nothing can
  use them, and a phone number is not kept for nothing. Their users ask for a new code (they last 10
  minutes anyway).
- ``conversations.business_number`` and ``assistant_configs.business_number``: our own Twilio numbers go
  through the same code (``shared/wire/twilio.py``), so a number of ours in the older form lost its
  assistant (looked up by the plan's form) and started second conversations. They take the plan's form;
  of two live conversations of one contact that become one number's, the one written to last stays live
  (0011's rule); of two assistant configs, the one edited last is kept (the operator's latest word).
  A Meta or Kapso phone_number_id has no +, so it is never a candidate.

Which numbers change is decided by ``provider_number``, the function 0011 used, row by row. Each table is
locked against writes (not reads) before it is read, as 0011 locked contacts, so no number can be written
in either form between the look and the rewrite. ``conversations`` is the hot one: it is locked only when
it holds a candidate at all (most deployments have none). Locks are taken in the order the verify stage
takes them (codes, then links), so the two cannot deadlock. The whole migration is one transaction, and a
second run finds nothing left to change: safe to run again after a crash.
"""

from __future__ import annotations

from uuid import UUID

import psycopg

from shared.logging import get_logger, mask_phone
from shared.phone import provider_number

log = get_logger(__name__)

# Every number _plan_form could rewrite, and more: +52 1 and ten digits; +55 and ten digits.
_CANDIDATES = r"^\+(521[0-9]{10}|55[0-9]{10})$"


def _plan(phone: str) -> str | None:
    """The plan's form of ``phone`` when it differs, else None."""
    plan = provider_number(phone, "US")
    return plan if plan is not None and plan != phone else None


def migrate(conn: psycopg.Connection) -> None:
    _codes(conn)
    _links(conn)
    _business_numbers(conn)


def _codes(conn: psycopg.Connection) -> None:
    conn.execute("LOCK TABLE verification_codes IN SHARE ROW EXCLUSIVE MODE")
    rows = conn.execute(
        "SELECT user_id, phone FROM verification_codes WHERE phone ~ %s", (_CANDIDATES,)
    ).fetchall()
    withdrawn = [(user_id,) for user_id, phone in rows if _plan(phone) is not None]
    if withdrawn:
        with conn.cursor() as cur:
            cur.executemany("DELETE FROM verification_codes WHERE user_id = %s", withdrawn)
        log.info("migration 0012: withdrew codes issued for older number forms", count=len(withdrawn))


def _links(conn: psycopg.Connection) -> None:
    conn.execute("LOCK TABLE user_links IN SHARE ROW EXCLUSIVE MODE")
    rows = conn.execute(
        "SELECT user_id, phone, linked_at FROM user_links WHERE phone ~ %s", (_CANDIDATES,)
    ).fetchall()
    for user_id, phone, linked_at in rows:
        plan = _plan(phone)
        if plan is None:
            continue
        holder = conn.execute(
            "SELECT user_id, linked_at FROM user_links WHERE phone = %s", (plan,)
        ).fetchone()
        if holder is not None:
            if linked_at <= holder[1]:
                _drop_link(conn, user_id, plan, kept=holder[0])
                continue
            _drop_link(conn, holder[0], plan, kept=user_id)
        # linked_at stays: the user proved they held this number then, whichever form it was written in.
        conn.execute("UPDATE user_links SET phone = %s WHERE user_id = %s", (plan, user_id))


def _drop_link(conn: psycopg.Connection, user_id: UUID, plan: str, *, kept: UUID) -> None:
    conn.execute("DELETE FROM user_links WHERE user_id = %s", (user_id,))
    log.warning(
        "migration 0012: number was linked in both forms; the older link is dropped",
        dropped_user_id=str(user_id),
        kept_user_id=str(kept),
        phone=mask_phone(plan),
    )


def _business_numbers(conn: psycopg.Connection) -> None:
    conn.execute("LOCK TABLE assistant_configs IN SHARE ROW EXCLUSIVE MODE")
    configs = conn.execute(
        "SELECT business_number, updated_at FROM assistant_configs WHERE business_number ~ %s", (_CANDIDATES,)
    ).fetchall()
    for number, updated_at in configs:
        plan = _plan(number)
        if plan is None:
            continue
        other = conn.execute(
            "SELECT updated_at FROM assistant_configs WHERE business_number = %s", (plan,)
        ).fetchone()
        if other is not None:
            if updated_at <= other[0]:
                conn.execute("DELETE FROM assistant_configs WHERE business_number = %s", (number,))
                continue
            conn.execute("DELETE FROM assistant_configs WHERE business_number = %s", (plan,))
        conn.execute(
            "UPDATE assistant_configs SET business_number = %s WHERE business_number = %s", (plan, number)
        )

    # A look without the lock first: most deployments have no such number, and then the table every
    # inbound message writes to is never held. A candidate written just after the look is one written
    # after the migration, which the lock cannot prevent either (the new code never writes one).
    query = "SELECT DISTINCT business_number FROM conversations WHERE business_number ~ %s"
    if not any(_plan(number) for (number,) in conn.execute(query, (_CANDIDATES,)).fetchall()):
        return
    conn.execute("LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE")
    for (number,) in conn.execute(query, (_CANDIDATES,)).fetchall():
        plan = _plan(number)
        if plan is None:
            continue
        # One live conversation per contact and number (conversations_live): the one written to last stays.
        conn.execute(
            """
            UPDATE conversations earlier SET status = 'closed', closed_at = now()
            FROM conversations later
            WHERE earlier.business_number IN (%(old)s, %(plan)s)
              AND later.business_number IN (%(old)s, %(plan)s)
              AND earlier.business_number <> later.business_number
              AND earlier.contact_id = later.contact_id AND earlier.provider = later.provider
              AND earlier.status <> 'closed' AND later.status <> 'closed'
              AND (earlier.last_message_at, earlier.id) < (later.last_message_at, later.id)
            """,
            {"old": number, "plan": plan},
        )
        conn.execute(
            "UPDATE conversations SET business_number = %s WHERE business_number = %s", (plan, number)
        )
