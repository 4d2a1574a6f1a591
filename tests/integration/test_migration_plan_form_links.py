"""After migration 0011 gave contacts the numbering plan's form of Mexican and Brazilian mobiles, every
other stored number that ``shared.phone`` now writes that way must follow (0012): a user linked by the
older form is still known when they write, a code issued for the older form goes (its hash binds that
form), and our own Twilio numbers keep their assistant and their live conversations."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import structlog.testing

from shared.db import assistant_configs
from shared.db.messages import get_inbound
from shared.db.migrate import MIGRATIONS_DIR, available, migrate
from shared.logging import mask_phone
from tests.integration.test_migrations import migrated_before

BUSINESS = "+14155238886"


@pytest.fixture
def before_0011(tmp_path: Path) -> Iterator[psycopg.Connection]:
    """A database of the release before 0011: what production held when it first ran the plan forms."""
    with migrated_before("0011", tmp_path) as (conn, _url):
        yield conn


def upgrade(conn: psycopg.Connection) -> None:
    applied = migrate(conn.info.dsn, MIGRATIONS_DIR)
    assert applied[0].startswith("0011")


def user(
    conn: psycopg.Connection, linked_phone: str | None = None, linked_at: str | None = None
) -> uuid.UUID:
    user_id = uuid.uuid4()
    conn.execute("INSERT INTO users (id) VALUES (%s)", (user_id,))
    if linked_phone is not None:
        conn.execute(
            "INSERT INTO user_links (user_id, phone, linked_at) VALUES (%s, %s, COALESCE(%s, now()))",
            (user_id, linked_phone, linked_at),
        )
    return user_id


def inbound(conn: psycopg.Connection, phone: str, business_number: str = BUSINESS) -> int:
    """A message from ``phone`` in a live conversation on ``business_number``; returns the message id."""
    contact = conn.execute(
        "INSERT INTO contacts (phone) VALUES (%s) ON CONFLICT (phone) DO UPDATE SET phone = EXCLUDED.phone"
        " RETURNING id",
        (phone,),
    ).fetchone()["id"]
    conversation = conn.execute(
        "INSERT INTO conversations (contact_id, provider, business_number) VALUES (%s, 'twilio', %s)"
        " RETURNING id",
        (contact, business_number),
    ).fetchone()["id"]
    return conn.execute(
        "INSERT INTO messages (conversation_id, contact_id, direction, provider, body)"
        " VALUES (%s, %s, 'in', 'twilio', '/projects') RETURNING id",
        (conversation, contact),
    ).fetchone()["id"]


def links(conn: psycopg.Connection) -> dict[uuid.UUID, str]:
    return {row["user_id"]: row["phone"] for row in conn.execute("SELECT user_id, phone FROM user_links")}


@pytest.mark.parametrize(
    ("older", "plan"), [("+5215512345678", "+525512345678"), ("+551187654321", "+5511987654321")]
)
def test_a_user_linked_by_the_older_form_is_still_known_when_they_write(
    before_0011: psycopg.Connection, older: str, plan: str
) -> None:
    db = before_0011
    linked = user(db, older)
    message = inbound(db, older)

    upgrade(db)

    # The router and the handlers find the sender's user through the link: without it, commands and
    # proposals answer as to a stranger.
    assert get_inbound(message, db).user_id == linked
    assert links(db) == {linked: plan}


def test_a_number_linked_both_ways_stays_with_the_user_who_linked_it_last(
    before_0011: psycopg.Connection,
) -> None:
    db = before_0011
    # Each user proved they held the number; the later proof is the one that says who holds it now (a
    # number changes hands, a person opens a second account).
    earlier = user(db, "+5215512345678", "2026-11-01T10:00:00Z")
    later = user(db, "+525512345678", "2026-12-01T10:00:00Z")
    relinked = user(db, "+5213312345678", "2026-12-02T10:00:00Z")
    superseded = user(db, "+523312345678", "2026-11-02T10:00:00Z")
    message = inbound(db, "+5213312345678")

    with structlog.testing.capture_logs() as logged:
        upgrade(db)

    assert links(db) == {later: "+525512345678", relinked: "+523312345678"}
    assert get_inbound(message, db).user_id == relinked
    assert {earlier, superseded}.isdisjoint(links(db))
    # The operator learns whose link went, to ask them to link again; never the whole number.
    dropped = {
        (line["dropped_user_id"], line["kept_user_id"], line["phone"])
        for line in logged
        if "dropped_user_id" in line
    }
    assert dropped == {
        (str(earlier), str(later), mask_phone("+525512345678")),
        (str(superseded), str(relinked), mask_phone("+523312345678")),
    }
    assert "5512345678" not in repr(logged)


def test_codes_issued_for_the_older_form_are_withdrawn_and_others_kept(
    before_0011: psycopg.Connection,
) -> None:
    db = before_0011
    older, plan, other = user(db), user(db), user(db)
    for user_id, phone in ((older, "+5215512345678"), (plan, "+525512345678"), (other, "+14155550123")):
        db.execute(
            "INSERT INTO verification_codes (user_id, phone, code_hash, expires_at)"
            " VALUES (%s, %s, '\\x00', now() + interval '10 minutes')",
            (user_id, phone),
        )

    upgrade(db)

    codes = {
        row["user_id"]: row["phone"] for row in db.execute("SELECT user_id, phone FROM verification_codes")
    }
    assert codes == {plan: "+525512345678", other: "+14155550123"}


def test_our_own_number_in_the_older_form_keeps_its_assistant_and_its_conversations(
    before_0011: psycopg.Connection,
) -> None:
    db = before_0011
    older, plan = "+5215599998888", "+525599998888"
    db.execute(
        "INSERT INTO assistant_configs (business_number, system_prompt) VALUES (%s, 'Be brief.')", (older,)
    )
    # A Meta phone_number_id is not a phone number, whatever its digits: it stays as it is.
    meta_id = "5215512345678"
    db.execute(
        "INSERT INTO assistant_configs (business_number, system_prompt) VALUES (%s, 'Hola.')", (meta_id,)
    )
    first = inbound(db, "+14155550123", older)
    # Since 0011 the same sender and number came in the plan's form: a second live conversation.
    second = inbound(db, "+14155550123", plan)
    other = inbound(db, "+14155550199", older)

    upgrade(db)

    config = assistant_configs.get(db, plan)
    assert config is not None
    assert config.system_prompt == "Be brief."
    assert assistant_configs.get(db, meta_id) is not None
    assert {get_inbound(m, db).business_number for m in (first, second, other)} == {plan}
    live = db.execute(
        "SELECT contact_id, count(*) AS n FROM conversations WHERE status <> 'closed' GROUP BY contact_id"
    ).fetchall()
    assert sorted(row["n"] for row in live) == [1, 1]


def test_running_it_again_changes_nothing(before_0011: psycopg.Connection) -> None:
    # A release step that died after the commit but before it said so runs it again, as any rerun does.
    db = before_0011
    user(db, "+5215512345678", "2026-11-01T10:00:00Z")
    user(db, "+525512345678", "2026-12-01T10:00:00Z")
    user(db, "+551187654321")
    db.execute(
        "INSERT INTO assistant_configs (business_number, system_prompt) VALUES (%s, 'Hi.')",
        ("+5215599998888",),
    )
    inbound(db, "+14155550123", "+5215599998888")
    upgrade(db)
    tables = ("user_links", "verification_codes", "assistant_configs", "conversations")
    before = {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in tables}  # noqa: S608

    [again] = [m for m in available() if m.version.startswith("0012")]
    with db.transaction():
        again.run(db)

    assert {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in tables} == before  # noqa: S608
