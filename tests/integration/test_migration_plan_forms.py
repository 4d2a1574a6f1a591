"""Migration 0011 (in Python: shared.phone decides each number): contacts stored in WhatsApp's older
forms of Mexican and Brazilian mobiles take the numbering plan's form, the one shared/phone.py now gives
every number, and a person stored both ways becomes one contact that keeps the opt-out."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.db.migrate import MIGRATIONS_DIR, available, migrate
from shared.phone import provider_number
from tests.integration.test_migrations import migrated_before

VERSION = "0011_whatsapp_plan_forms"
BUSINESS = "+14155238886"


@pytest.fixture
def before_0011(tmp_path: Path) -> Iterator[psycopg.Connection]:
    """A database with every migration before 0011 applied, then 0011's file ready to apply."""
    with migrated_before(VERSION, tmp_path) as (conn, _url):
        yield conn


def contact(conn: psycopg.Connection, phone: str, **columns: object) -> int:
    names = ["phone", *columns]
    values = ", ".join(["%s"] * len(names))
    row = conn.execute(
        f"INSERT INTO contacts ({', '.join(names)}) VALUES ({values}) RETURNING id",  # noqa: S608 - test columns
        [phone, *columns.values()],
    ).fetchone()
    return row["id"]


def conversation(conn: psycopg.Connection, contact_id: int, last_message_at: str) -> int:
    row = conn.execute(
        "INSERT INTO conversations (contact_id, provider, business_number, last_message_at)"
        " VALUES (%s, 'twilio', %s, %s) RETURNING id",
        (contact_id, BUSINESS, last_message_at),
    ).fetchone()
    conn.execute(
        "INSERT INTO messages (conversation_id, contact_id, direction, provider, body)"
        " VALUES (%s, %s, 'in', 'twilio', 'hola')",
        (row["id"], contact_id),
    )
    return row["id"]


def apply_0011(conn: psycopg.Connection) -> None:
    # 0011 alone: later migrations have tests of their own.
    [migration] = [m for m in available(MIGRATIONS_DIR) if m.version == VERSION]
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(migration.path, folder)
        assert migrate(conn.info.dsn, Path(folder)) == [VERSION]


def phones(conn: psycopg.Connection) -> dict[int, str]:
    return {row["id"]: row["phone"] for row in conn.execute("SELECT id, phone FROM contacts")}


def test_a_contact_in_an_older_form_takes_the_form_the_code_now_gives(
    before_0011: psycopg.Connection,
) -> None:
    db = before_0011
    stored = {
        "+5215512345678": contact(db, "+5215512345678", opted_out=True),  # Mexico's +52 1
        "+551187654321": contact(db, "+551187654321"),  # Brazil, before the ninth digit
        "+554532782153": contact(db, "+554532782153"),  # a Brazilian landline: no ninth digit to add
        "+553178765432": contact(db, "+553178765432"),  # from 7: a valid mobile to the plan, kept
        "+5210012345678": contact(db, "+5210012345678"),  # impossible either way: kept as written
        "+14155550123": contact(db, "+14155550123"),
    }

    apply_0011(db)

    now = phones(db)
    for old, contact_id in stored.items():
        assert now[contact_id] == provider_number(old, "US"), old  # the migration and the code agree
    assert now[stored["+5215512345678"]] == "+525512345678"
    assert now[stored["+551187654321"]] == "+5511987654321"
    assert now[stored["+553178765432"]] == "+553178765432"
    opted = db.execute("SELECT opted_out FROM contacts WHERE phone = '+525512345678'").fetchone()
    assert opted["opted_out"] is True


def test_a_person_stored_both_ways_becomes_one_contact_that_keeps_the_opt_out(
    before_0011: psycopg.Connection,
) -> None:
    db = before_0011
    old = contact(
        db,
        "+5213312345678",
        opted_out=True,
        opted_out_at="2026-12-01T10:00:00Z",
        bsuid="MX.old",
        profile_name="Ana",
        last_inbound_at="2026-12-01T10:00:00Z",
    )
    kept = contact(db, "+523312345678", last_inbound_at="2026-12-06T10:00:00Z")
    old_conversation = conversation(db, old, "2026-12-01T10:00:00Z")
    kept_conversation = conversation(db, kept, "2026-12-06T10:00:00Z")

    apply_0011(db)

    [merged] = db.execute("SELECT * FROM contacts").fetchall()
    assert merged["id"] == kept
    assert merged["phone"] == "+523312345678"
    assert (merged["opted_out"], merged["bsuid"], merged["profile_name"]) == (True, "MX.old", "Ana")
    assert merged["opted_out_at"].isoformat().startswith("2026-12-01T10:00:00")
    assert merged["last_inbound_at"].isoformat().startswith("2026-12-06T10:00:00")
    conversations = {
        row["id"]: (row["contact_id"], row["status"])
        for row in db.execute("SELECT id, contact_id, status FROM conversations")
    }
    # Both are the kept contact's now; only the one written to last stays live.
    assert conversations == {old_conversation: (kept, "closed"), kept_conversation: (kept, "open")}
    assert {row["contact_id"] for row in db.execute("SELECT contact_id FROM messages")} == {kept}
