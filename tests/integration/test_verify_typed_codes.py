"""VERIFY codes as people type them: other scripts' digits, a copied "verify: 123-456", and the one rule
that decides which messages the verify stage answers (real PostgreSQL rows in, a stored reply out)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis

from shared import verification
from shared.flows.pack import load_pack
from shared.flows.seed import seed_shopfloor
from shared.flows.service import Target, process
from shared.queues import handler_key
from shared.replies import queue_reply
from shared.settings import load_settings
from tests.integration.flows_support import add_inbound, make_conversation
from tests.integration.test_bot_workers import PHONE, issue, replies, store_inbound
from tests.integration.test_inbound_routing import event
from tests.integration.test_verify_codes_at_rest import tables_holding
from workers import verify as verify_worker
from workers.inbound import route

ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
PERSIAN = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize("digits", [ARABIC, PERSIAN, FULLWIDTH], ids=["arabic", "persian", "fullwidth"])
def test_the_right_code_in_another_scripts_digits_links(
    clean: None, db: psycopg.Connection, digits: dict[int, str]
) -> None:
    # Before, these were hashed as typed: "not right", five times, then locked even for the ASCII code.
    user_id = uuid.uuid4()
    code = issue(user_id)
    verify_worker.check_code(store_inbound(db, f"VERIFY {code.translate(digits)}"))
    assert replies(db) == ["✅ WhatsApp linked to your account"]
    linked = db.execute("SELECT user_id FROM user_links WHERE phone = %s", (PHONE,)).fetchone()
    assert linked["user_id"] == user_id


def test_the_api_takes_the_code_in_full_width_digits_too(clean: None) -> None:
    user_id = uuid.uuid4()
    code = issue(user_id)
    result = verification.verify_phone(PHONE, code.translate(FULLWIDTH))
    assert result.outcome is verification.Outcome.linked
    assert result.user_id == user_id


@pytest.mark.parametrize("code", ["12345", "1234567", "²²²²²²", "12345x", ""])
def test_a_code_that_is_not_six_digits_spends_no_attempt(
    clean: None, db: psycopg.Connection, code: str
) -> None:
    issue(uuid.uuid4())
    assert verification.verify_phone(PHONE, code).outcome is verification.Outcome.bad_format
    assert db.execute("SELECT attempts FROM verification_codes").fetchone()["attempts"] == 0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("VERIFY ١٢٣٤٥٦", "123456"),
        ("verify ۱۲۳۴۵۶", "123456"),
        ("VERIFY １２３ ４５６", "123456"),
        ("verify: 123456", "123456"),
        ("VERIFY 123-456", "123456"),
        ("VERIFY ²²²²²²", None),
        # Written naturally: a full stop or an exclamation mark after it, or WhatsApp's formatting around
        # it (bold, italic, strikethrough, monospace).
        ("VERIFY 556623.", "556623"),
        ("verify 556623!", "556623"),
        ("VERIFY 556623 .", "556623"),
        ("*VERIFY 556623*", "556623"),
        ("_VERIFY 556623_", "556623"),
        ("~VERIFY 556623~", "556623"),
        ("```VERIFY 556623```", "556623"),
        ("`VERIFY 556623`", "556623"),
        ("*VERIFY* 556623", "556623"),
        ("VERIFY *556623*.", "556623"),
        # The bot's other language (its Spanish opt-out and opt-in words): "verificar", which Portuguese
        # speakers write too.
        ("Verificar 556623", "556623"),
        ("VERIFICAR: 556-623", "556623"),
        ("verifications 556623", None),
        ("VERIFY 556623.5", None),
        ("VERIFY 556623 thanks", None),
    ],
)
def test_parse_verify_gives_ascii_digits(text: str, code: str | None) -> None:
    assert verification.parse_verify(text) == code


@pytest.mark.timeout(30)
def test_a_long_run_of_spaces_is_read_at_once() -> None:
    # The separator and the code both took spaces, with a trailing \s*: backtracking between the three
    # made 4,000 spaces and an "x" take over a minute (cubic), and 50,000 hours, holding a worker.
    assert verification.parse_verify("verify" + " " * 50_000 + "x") is None
    assert verification.parse_verify("verify" + " \n" * 25_000 + "123456") == "123456"
    # The formatting marks and the punctuation after the code take spaces too.
    assert verification.parse_verify("*verify" + " *" * 25_000 + "x") is None
    assert verification.parse_verify("verify 123456" + " ." * 25_000 + "x") is None
    assert verification.parse_verify("verify 123456" + " !" * 25_000) == "123456"


def test_a_copied_verify_is_left_to_the_verify_stage_by_the_menu_bot(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    # The router sends "verify: 123-456" to verify.check_code (workers/inbound.py); a later menu message's
    # drain must skip it too, not answer it a second time as a menu choice.
    seed_shopfloor(db)
    contact_id, conversation_id = make_conversation(db, PHONE)
    ids = []
    for text in ("hi", "verify: 123-456", "2"):
        ids.append(add_inbound(db, contact_id, conversation_id, text))
        redis_client.set(handler_key(ids[-1]), 1)
    target = Target(ids[2], conversation_id, contact_id, PHONE)
    assert (
        process(target, conn=db, redis_client=redis_client, pack=load_pack("shopfloor"), reply=queue_reply)
        == 2
    )
    handled = db.execute("SELECT id FROM messages WHERE handled_at IS NOT NULL ORDER BY id").fetchall()
    assert [row["id"] for row in handled] == [ids[0], ids[2]]


@pytest.mark.parametrize("text", ["VERIFY 98765", "verify 9876543", "*VERIFY 98 765*."])
@pytest.mark.parametrize("linked", [True, False])
def test_a_verify_with_a_code_of_the_wrong_length_is_told_a_code_has_six_digits(
    clean: None, db: psycopg.Connection, text: str, linked: bool
) -> None:
    # Before, it was free text: a linked user's mistyped code became a proposal titled "VERIFY 12345", and
    # its digits (all but one of a code's) stayed in the message and the raw event log.
    user_id = uuid.uuid4()
    issue(user_id)
    if linked:
        db.execute("INSERT INTO user_links (user_id, phone) VALUES (%s, %s)", (user_id, PHONE))
    digits = "".join(char for char in text if char.isdigit())
    outcome = route(event(text, phone=PHONE), load_settings(mode="project"))
    assert outcome.handler == "verify.check_code"
    assert outcome.message_id is not None

    verify_worker.check_code(outcome.message_id)

    assert replies(db) == [verification.BAD_FORMAT_TEXT]
    assert "6 digits" in verification.BAD_FORMAT_TEXT
    assert db.execute("SELECT attempts FROM verification_codes").fetchone()["attempts"] == 0
    assert db.execute("SELECT count(*) AS n FROM proposals").fetchone()["n"] == 0
    assert tables_holding(db, digits[:5]) == []
