"""Verification codes: hashed with a key, 10-minute expiry, one-time, 5 attempts, replaced by a new one."""

from __future__ import annotations

import hmac
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from shared import verification
from shared.db import links, users
from shared.db.pool import transaction
from shared.verification import MAX_ATTEMPTS, Outcome, PhoneTaken

PHONE = "+14155550123"
OTHER_PHONE = "+14155550199"
WAITING_ON_A_LOCK = """
SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


def issue(user_id: uuid.UUID, phone: str = PHONE) -> verification.IssuedCode:
    with transaction() as conn:
        return verification.issue_code(conn, user_id, phone)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def expire(db: psycopg.Connection, user_id: uuid.UUID) -> None:
    # Expiry is decided by DB time, so moving expires_at into the past is what 10 minutes passing does.
    db.execute(
        "UPDATE verification_codes SET expires_at = now() - interval '1 second' WHERE user_id = %s",
        (user_id,),
    )


def test_code_is_six_digits_and_only_a_keyed_hash_is_stored(db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    issued = issue(user_id)
    assert len(issued.code) == 6
    assert issued.code.isdigit()
    row = db.execute("SELECT * FROM verification_codes WHERE user_id = %s", (user_id,)).fetchone()
    stored = bytes(row["code_hash"])
    assert issued.code.encode() not in stored
    assert stored == verification.hash_code(user_id, PHONE, issued.code)
    # An unkeyed hash of the code would be reversible from a dump; ours is not one.
    import hashlib

    assert stored != hashlib.sha256(issued.code.encode()).digest()
    assert row["attempts"] == 0
    assert db.execute("SELECT count(*) AS n FROM users WHERE id = %s", (user_id,)).fetchone()["n"] == 1


def test_hash_depends_on_the_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import get_settings

    user_id = uuid.uuid4()
    before = verification.hash_code(user_id, PHONE, "123456")
    monkeypatch.setenv("WAPIPE_SECRET_KEY", "a-real-secret")
    get_settings.cache_clear()
    try:
        assert verification.hash_code(user_id, PHONE, "123456") != before
    finally:
        monkeypatch.delenv("WAPIPE_SECRET_KEY")
        get_settings.cache_clear()


def test_expiry_is_ten_minutes_of_db_time(db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    issue(user_id)
    seconds = db.execute(
        "SELECT extract(epoch FROM expires_at - created_at) AS s FROM verification_codes WHERE user_id = %s",
        (user_id,),
    ).fetchone()["s"]
    assert seconds == 600


def test_right_code_links_once(db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    issued = issue(user_id)
    result = verification.verify_phone(PHONE, issued.code)
    assert result.outcome is Outcome.linked
    assert result.user_id == user_id
    with transaction() as conn:
        assert links.get_link(conn, user_id).phone == PHONE
    # One-time: the same code again finds nothing pending.
    assert verification.verify_phone(PHONE, issued.code).outcome is Outcome.no_pending


def test_expired_code_is_refused(db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    issued = issue(user_id)
    expire(db, user_id)
    assert verification.verify_phone(PHONE, issued.code).outcome is Outcome.expired
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0


def test_five_wrong_attempts_lock_even_the_right_code(db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    issued = issue(user_id)
    lefts = [verification.verify_phone(PHONE, wrong(issued.code)).attempts_left for _ in range(MAX_ATTEMPTS)]
    assert lefts == [4, 3, 2, 1, 0]
    result = verification.verify_phone(PHONE, issued.code)
    assert result.outcome is Outcome.locked
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0


def test_concurrent_guesses_cannot_exceed_five(db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    issued = issue(user_id)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def guess() -> None:
        result = verification.verify_phone(PHONE, wrong(issued.code))
        with lock:
            outcomes.append(result.outcome)

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(Outcome.wrong_code) == MAX_ATTEMPTS
    assert outcomes.count(Outcome.locked) == 12 - MAX_ATTEMPTS
    attempts = db.execute("SELECT attempts FROM verification_codes").fetchone()["attempts"]
    assert attempts == MAX_ATTEMPTS


def test_new_code_replaces_the_old(db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    first = issue(user_id)
    verification.verify_phone(PHONE, wrong(first.code))
    second = issue(user_id)
    assert db.execute("SELECT count(*) AS n FROM verification_codes").fetchone()["n"] == 1
    assert db.execute("SELECT attempts FROM verification_codes").fetchone()["attempts"] == 0
    if first.code != second.code:
        assert verification.verify_phone(PHONE, first.code).outcome is Outcome.wrong_code
    assert verification.verify_phone(PHONE, second.code).outcome is Outcome.linked


def test_codes_are_compared_in_constant_time(db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(verification.hmac, "compare_digest", spy)
    user_id = uuid.uuid4()
    issued = issue(user_id)
    assert verification.verify_phone(PHONE, issued.code).outcome is Outcome.linked
    assert calls
    assert all(len(a) == 32 for a, _ in calls)


def test_phone_linked_to_another_user_cannot_get_a_code(db: psycopg.Connection) -> None:
    owner = uuid.uuid4()
    issued = issue(owner)
    verification.verify_phone(PHONE, issued.code)
    with pytest.raises(PhoneTaken):
        issue(uuid.uuid4())
    # The owner may ask again (e.g. to re-verify), and another number is free.
    issue(owner)
    issue(uuid.uuid4(), OTHER_PHONE)


def test_relinking_moves_the_user_to_the_new_number(db: psycopg.Connection) -> None:
    user_id = uuid.uuid4()
    verification.verify_phone(PHONE, issue(user_id).code)
    verification.verify_phone(OTHER_PHONE, issue(user_id, OTHER_PHONE).code)
    rows = db.execute("SELECT phone FROM user_links WHERE user_id = %s", (user_id,)).fetchall()
    assert [row["phone"] for row in rows] == [OTHER_PHONE]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("VERIFY 123456", "123456"),
        ("verify 123456", "123456"),
        ("  Verify    123456  ", "123456"),
        ("VERIFY: 123 456", "123456"),
        ("VERIFY123456", "123456"),
        ("VERIFY 12345", ""),
        # No digit, no code: "Verificar" alone is an everyday word, and the verify stage is not asked.
        ("VERIFY", None),
        ("Verificar!", None),
        ("verify me please", None),
        ("verifying 123456", None),
        ("hello", None),
    ],
)
def test_parse_verify(text: str, code: str | None) -> None:
    assert verification.parse_verify(text) == code


def draws(monkeypatch: pytest.MonkeyPatch, *codes: str) -> None:
    """The CSPRNG's next draws, in order: a collision of two 6-digit codes, made certain."""
    queue = iter(codes)
    monkeypatch.setattr(verification, "generate_code", lambda: next(queue))


def test_no_two_live_codes_for_a_phone_are_the_same(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any user may ask for a code for any unlinked number: had the second user been handed the first
    # user's digits, the owner's VERIFY would link the number to whichever row matched last.
    owner, other = uuid.uuid4(), uuid.uuid4()
    draws(monkeypatch, "123456", "123456", "654321")
    assert issue(owner).code == "123456"
    assert issue(other).code == "654321"
    result = verification.verify_phone(PHONE, "123456")
    assert (result.outcome, result.user_id) == (Outcome.linked, owner)


def test_a_user_may_be_given_their_own_old_code_again(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user's old row is the one being replaced: it is no other live code.
    user_id = uuid.uuid4()
    draws(monkeypatch, "123456", "123456")
    issue(user_id)
    assert issue(user_id).code == "123456"


def test_two_users_issuing_at_once_get_different_codes(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, wait_for: Callable[..., Any]
) -> None:
    # The first issue has not committed when the second compares: without a lock on the phone's codes,
    # the second could not see the first's row and would hand out the same digits.
    first, second = uuid.uuid4(), uuid.uuid4()
    draws(monkeypatch, "123456", "123456", "654321")
    got: list[verification.IssuedCode] = []
    thread = threading.Thread(target=lambda: got.append(issue(second)))
    with transaction() as conn:
        assert verification.issue_code(conn, first, PHONE).code == "123456"
        thread.start()
        wait_for(
            lambda: not thread.is_alive() or db.execute(WAITING_ON_A_LOCK).fetchone()["n"] > 0,
            what="the second issue to finish or to wait for the first",
        )
    thread.join()
    assert [issued.code for issued in got] == ["654321"]


def test_a_code_two_live_rows_match_links_no_one(db: psycopg.Connection) -> None:
    # Rows issued before codes were kept apart may still hold the same digits for one phone: the VERIFY
    # must not pick one of the two users, it counts as a wrong code.
    owner, other = uuid.uuid4(), uuid.uuid4()
    code = issue(owner).code
    with transaction() as conn:
        users.ensure_user(conn, other)
        links.replace_code(conn, other, PHONE, verification.hash_code(other, PHONE, code), 600)
    result = verification.verify_phone(PHONE, code)
    assert (result.outcome, result.attempts_left) == (Outcome.wrong_code, MAX_ATTEMPTS - 1)
    assert db.execute("SELECT count(*) AS n FROM user_links").fetchone()["n"] == 0
    attempts = [row["attempts"] for row in db.execute("SELECT attempts FROM verification_codes")]
    assert attempts == [1, 1]
