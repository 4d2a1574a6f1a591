"""Contacts stored in WhatsApp's older form of a Mexican mobile (+52 1 and ten digits) or a Brazilian one
(+55, the area, eight digits: registered before the ninth digit) take the numbering plan's form, which
``shared.phone`` now gives every number that reaches us (``_plan_form``). Left as they were, the next
message from such a contact would start a second contact in the plan's form, without the first one's
opt-out, and a user linked by the plan's form would never match the old one.

Which numbers change is decided by that same code, row by row, not by a pattern here: a pattern only
picks the candidates (a Brazilian eight-digit number from 7 is a valid mobile to the numbering plan and is
kept, where a pattern would have rewritten it).

Where the plan's form is already another contact (the same person reached us both ways), the old row is
merged into it: an opt-out on either holds, the latest inbound time and any BSUID or name are kept, and
the conversations, messages and flow records move to it. Two live conversations on one business number
cannot both stay live: the one written to last does, the other is closed.
"""

from __future__ import annotations

import psycopg

from shared.phone import provider_number

# Every number _plan_form could rewrite, and more: +52 1 and ten digits; +55 and ten digits.
_CANDIDATES = r"^\+(521[0-9]{10}|55[0-9]{10})$"

# contacts is locked against writes while this runs, so a webhook or an API call cannot insert a number
# in its plan's form between the look below and the rename (a unique violation, failing the release).
_LOCK = "LOCK TABLE contacts IN SHARE ROW EXCLUSIVE MODE"

_MARK_KEPT = """
UPDATE plan_forms p SET kept_id = kept.id, old_bsuid = old.bsuid
FROM contacts old, contacts kept
WHERE old.id = p.old_id AND kept.phone = p.plan_phone
"""
_STATEMENTS = (
    # Nobody has the plan's form yet: the contact takes it.
    """
    UPDATE contacts c SET phone = p.plan_phone, updated_at = now()
    FROM plan_forms p
    WHERE c.id = p.old_id AND p.kept_id IS NULL
    """,
    # The same person twice: merge the old row into the one in the plan's form.
    """
    UPDATE contacts old SET bsuid = NULL
    FROM plan_forms p
    WHERE old.id = p.old_id AND p.kept_id IS NOT NULL
    """,
    """
    UPDATE contacts kept SET
        opted_out = kept.opted_out OR old.opted_out,
        opted_out_at = CASE WHEN kept.opted_out OR old.opted_out
                            THEN LEAST(kept.opted_out_at, old.opted_out_at) END,
        last_inbound_at = GREATEST(kept.last_inbound_at, old.last_inbound_at),
        bsuid = COALESCE(kept.bsuid, p.old_bsuid),
        profile_name = COALESCE(kept.profile_name, old.profile_name),
        updated_at = now()
    FROM plan_forms p
    JOIN contacts old ON old.id = p.old_id
    WHERE kept.id = p.kept_id
    """,
    """
    UPDATE conversations earlier SET status = 'closed', closed_at = now()
    FROM plan_forms p, conversations later
    WHERE p.kept_id IS NOT NULL
      AND earlier.contact_id IN (p.old_id, p.kept_id) AND later.contact_id IN (p.old_id, p.kept_id)
      AND earlier.contact_id <> later.contact_id
      AND earlier.provider = later.provider AND earlier.business_number = later.business_number
      AND earlier.status <> 'closed' AND later.status <> 'closed'
      AND (earlier.last_message_at, earlier.id) < (later.last_message_at, later.id)
    """,
    """
    UPDATE conversations c SET contact_id = p.kept_id
    FROM plan_forms p
    WHERE c.contact_id = p.old_id AND p.kept_id IS NOT NULL
    """,
    """
    UPDATE messages m SET contact_id = p.kept_id
    FROM plan_forms p
    WHERE m.contact_id = p.old_id AND p.kept_id IS NOT NULL
    """,
    """
    UPDATE flow_records r SET contact_id = p.kept_id
    FROM plan_forms p
    WHERE r.contact_id = p.old_id AND p.kept_id IS NOT NULL
    """,
    """
    DELETE FROM contacts c
    USING plan_forms p
    WHERE c.id = p.old_id AND p.kept_id IS NOT NULL
    """,
)


def migrate(conn: psycopg.Connection) -> None:
    conn.execute(_LOCK)
    rows = conn.execute("SELECT id, phone FROM contacts WHERE phone ~ %s", (_CANDIDATES,)).fetchall()
    changes = []
    for contact_id, phone in rows:
        plan = provider_number(phone, "US")
        if plan is not None and plan != phone:
            changes.append((contact_id, plan))
    if not changes:
        return
    conn.execute(
        "CREATE TEMP TABLE plan_forms (old_id bigint PRIMARY KEY, plan_phone text NOT NULL,"
        " kept_id bigint, old_bsuid text) ON COMMIT DROP"
    )
    with conn.cursor().copy("COPY plan_forms (old_id, plan_phone) FROM STDIN") as copy:
        for change in changes:
            copy.write_row(change)
    conn.execute(_MARK_KEPT)
    for statement in _STATEMENTS:
        conn.execute(statement)
