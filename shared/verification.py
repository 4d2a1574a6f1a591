"""Phone verification codes: issue, check, link. The policy of ARCHITECTURE.md's guarantees lives here.

- A code is 6 digits from :mod:`secrets` (a CSPRNG), valid 10 minutes (for a WhatsApp VERIFY, up to when
  the message came in, not when its task runs), usable once; a new code replaces the user's old one (one
  row per user in ``verification_codes``).
- Only ``HMAC-SHA256(WAPIPE_SECRET_KEY, user_id:phone:code)`` is stored. Why keyed and not salted: a
  6-digit space has 10**6 values, so any unkeyed hash (salted or not) is reversed from a database dump in
  well under a second; a key kept outside the database (environment) makes a dump alone useless. Binding
  the user id and phone into the message means a hash is only valid for that user and number.
- Each check first claims an attempt with one ``UPDATE ... RETURNING`` (see ``shared/db/links.py``), so
  concurrent guesses can't exceed 5 comparisons; after 5 wrong attempts even the right code is refused.
- Hashes are compared with :func:`hmac.compare_digest` (constant time).
- Any user may hold a code for any unlinked number, so a VERIFY must match exactly one of them: a code is
  never handed out equal to another user's live code for the same phone, and a VERIFY that still matches
  two (rows from before that rule) counts as a wrong code rather than linking one of the users.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import psycopg

from shared.db import links, messages, users
from shared.db.errors import Duplicate
from shared.db.pool import transaction
from shared.logging import get_logger
from shared.settings import get_settings

log = get_logger(__name__)

CODE_DIGITS = 6
CODE_TTL_SECONDS = 10 * 60
MAX_ATTEMPTS = 5
# Redraws when a new code equals another live code for the phone. With k such codes a draw collides with
# probability k/10**6, so running out takes hundreds of thousands of users holding codes for one number.
MAX_DRAWS = 64
# Used only when WAPIPE_SECRET_KEY is unset (tests, a first local try): codes still work across processes,
# but anyone with this source and a database dump can reverse them, hence the warning at first use.
_DEVELOPMENT_KEY = b"wapipe-development-key:set-WAPIPE_SECRET_KEY-in-production"
_warned = False

# The word, and its Spanish (and Portuguese) form: the bot already takes Spanish opt-out and opt-in words
# (shared/settings.py), and "Verificar 123456" is what a Spanish speaker types. The log scrubber's pattern
# (shared/logging.py) takes the same words and marks.
_VERIFY_WORDS = ("verify", "verificar")
# WhatsApp's formatting marks (bold, italic, strikethrough, monospace), which a user may put around the
# message, the word or the code.
_FORMATTING_MARKS = "*_~`"


def _ascii_letters(word: str) -> str:
    r"""A pattern for ``word`` in any case of its ASCII letters only, even under re.I: there the Turkish
    capital "İ" (and the dotless "ı") is an "i" too, which a JSON body writes as ``\u0130``, and the log
    scrubber (shared/logging.py) cannot read that as the word: the code was logged whole."""
    return "(?-i:" + "".join(f"[{letter}{letter.upper()}]" for letter in word) + ")"


# "VERIFY 123456", any case, any spacing (also "verify: 123 456" or "VERIFY 123-456", which people type
# from a copied code), written as a sentence ("VERIFY 123456.") or formatted ("*VERIFY 123456*"): marks
# and punctuation around it are no part of the code. Possessive (*+): the separator, the code and what
# ends the message all take whitespace, and with backtracking between them "verify", a few thousand
# spaces and an "x" took minutes.
_VERIFY = re.compile(
    rf"^[\s{_FORMATTING_MARKS}]*+(?:{'|'.join(map(_ascii_letters, _VERIFY_WORDS))})(?![a-z])"
    rf"[\s:{_FORMATTING_MARKS}]*+"
    rf"(?P<code>[\d\s\-]*+)[\s{_FORMATTING_MARKS}.,;:!?…。．！？]*+$",
    re.IGNORECASE,
)


class PhoneTaken(Exception):
    """The phone number is already linked to another user."""

    message = "Phone number already linked to another account"


class Outcome(StrEnum):
    linked = "linked"
    wrong_code = "wrong_code"
    expired = "expired"
    locked = "locked"
    no_pending = "no_pending"
    # A VERIFY message that came in before the code pending now was issued (only with ``at``).
    replaced = "replaced"
    # A VERIFY message from a number its sender no longer has when it is checked (moved, or recycled).
    number_changed = "number_changed"
    phone_taken = "phone_taken"
    bad_format = "bad_format"
    # A VERIFY with no code pending, from the user the number is linked to (only with a WhatsApp VERIFY).
    already_linked = "already_linked"


@dataclass(frozen=True)
class IssuedCode:
    code: str
    phone: str
    expires_at: datetime


@dataclass(frozen=True)
class VerifyResult:
    outcome: Outcome
    user_id: UUID | None = None
    attempts_left: int | None = None
    # The link made, when linked: read in the transaction that made it, so the API answers with it even
    # if the link is removed the moment after. Not carried in to_json (a task's result needs no more).
    link: links.Link | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "user_id": str(self.user_id) if self.user_id else None,
            "attempts_left": self.attempts_left,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifyResult:
        user_id = data.get("user_id")
        return cls(Outcome(data["outcome"]), UUID(user_id) if user_id else None, data.get("attempts_left"))


def _key() -> bytes:
    global _warned
    secret = get_settings().secret_key
    if secret is not None and secret.get_secret_value():
        return secret.get_secret_value().encode()
    if not _warned:
        _warned = True
        log.warning("WAPIPE_SECRET_KEY is not set: verification codes are hashed with the development key")
    return _DEVELOPMENT_KEY


def hash_code(user_id: UUID, phone: str, code: str) -> bytes:
    return hmac.new(_key(), f"{user_id}:{phone}:{code}".encode(), hashlib.sha256).digest()


def generate_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def ascii_digits(text: str) -> str:
    """``text`` with every decimal digit as its ASCII one: "١٢٣" (Arabic keyboard), "۱۲۳" (Persian) and
    "１２３" (a Chinese or Japanese input method) are all "123"; codes are hashed as ASCII digits."""
    return "".join(str(unicodedata.decimal(char)) if char.isdecimal() else char for char in text)


def parse_verify(text: str | None) -> str | None:
    """The code in a ``VERIFY 123456`` message, in ASCII digits: "" when not 6 digits, None when it is not
    a VERIFY. A message with no digit is none: "Verificar" alone is an everyday Spanish and Portuguese verb
    (a menu form's answer, a question to the assistant), and "verify?" asks how, it sends no code."""
    match = _VERIFY.match(text or "")
    if match is None:
        return None
    digits = re.sub(r"\D", "", match.group("code"))  # \d, \D: any script's decimal digits
    if not digits:
        return None
    return ascii_digits(digits) if len(digits) == CODE_DIGITS else ""


def is_verify_code(text: str | None) -> bool:
    """Whether the verify stage answers this message: a VERIFY, with a 6-digit code or a mistyped one (the
    stage tells the sender a code has 6 digits; as free text a linked user's mistyped code became a
    proposal), in every mode: a message that is the word and digits only is a code, whatever the mode. The
    word without a digit is an ordinary message (:func:`parse_verify`). The router's rule
    (workers/inbound.py), and the flows' for skipping such messages (shared/flows/service.py)."""
    return parse_verify(text) is not None


def issue_code(conn: psycopg.Connection, user_id: UUID, phone: str) -> IssuedCode:
    """Record the user if new and give them a fresh code for ``phone`` (E.164); the old code stops working.

    Raises :class:`PhoneTaken` when another user has already linked that number.
    """
    users.ensure_user(conn, user_id)
    # Held until commit: another issue for this phone waits, then sees this code among the live ones.
    links.lock_phone_codes(conn, phone)
    owner = links.get_link_by_phone(conn, phone)
    if owner is not None and owner.user_id != user_id:
        raise PhoneTaken(PhoneTaken.message)
    code = _unused_code(links.other_live_codes(conn, user_id, phone), phone)
    expires_at = links.replace_code(conn, user_id, phone, hash_code(user_id, phone, code), CODE_TTL_SECONDS)
    return IssuedCode(code=code, phone=phone, expires_at=expires_at)


def _unused_code(others: list[tuple[UUID, bytes]], phone: str) -> str:
    """A fresh code equal to none of ``others`` (user id, code hash): each hash binds its own user, so the
    draw is hashed as each of them, the way :func:`check_code` compares a VERIFY."""
    for _ in range(MAX_DRAWS):
        code = generate_code()
        if not any(hmac.compare_digest(hashed, hash_code(other, phone, code)) for other, hashed in others):
            return code
    raise RuntimeError(f"no free verification code after {MAX_DRAWS} draws ({len(others)} live codes)")


def check_code(
    conn: psycopg.Connection,
    phone: str,
    code: str,
    user_id: UUID | None = None,
    at: datetime | None = None,
) -> VerifyResult:
    """Check a code sent from (or for) ``phone`` inside the caller's transaction; link on success.

    With ``user_id`` only that user's code is tried (and has an attempt spent), so a code can link the
    phone to no one but the user it was issued to; without, every user's code for the phone is. ``at``:
    when the code was presented (DB time), for its expiry; default now.
    """
    # The API's pattern (\d) takes any script's digits too; the hash is of the ASCII ones. Anything else
    # is refused before an attempt is spent.
    code = ascii_digits(code)
    if len(code) != CODE_DIGITS or not (code.isascii() and code.isdecimal()):
        return VerifyResult(Outcome.bad_format)
    claimed = links.claim_attempts(conn, phone, MAX_ATTEMPTS, user_id, at)
    if not claimed:
        return _why_not(conn, phone, user_id, at)
    # Every candidate is compared, so the time taken says nothing about which one matched.
    matches = [
        candidate
        for candidate in claimed
        if hmac.compare_digest(candidate.code_hash, hash_code(candidate.user_id, phone, code))
    ]
    # Two matches mean two users hold these digits for this phone (issued before issue_code kept live codes
    # apart): nothing says which of them owns it, so neither is linked and the attempt stays spent.
    if len(matches) != 1:
        left = max(MAX_ATTEMPTS - candidate.attempts for candidate in claimed)
        return VerifyResult(Outcome.wrong_code, attempts_left=left)
    match = matches[0]
    try:
        # A savepoint: if another user linked the number meanwhile, the spent attempt still commits.
        with conn.transaction():
            link = links.link_phone(conn, match.user_id, phone)
    except Duplicate:
        return VerifyResult(Outcome.phone_taken, user_id=match.user_id)
    # One-time: the code is gone, and so are other users' codes for a number that is now taken.
    links.delete_codes_for_phone(conn, phone)
    return VerifyResult(Outcome.linked, user_id=match.user_id, link=link)


def _why_not(conn: psycopg.Connection, phone: str, user_id: UUID | None, at: datetime | None) -> VerifyResult:
    # The code was replaced after the message came in (or first issued then): "no pending code" would
    # send the user, who holds that newer code, to ask for yet another one.
    if at is not None and links.code_issued_after(conn, phone, at, user_id):
        return VerifyResult(Outcome.replaced)
    states = links.codes_for_phone(conn, phone, user_id, at)
    if not states:
        return VerifyResult(Outcome.no_pending)
    if any(not state.expired and state.attempts >= MAX_ATTEMPTS for state in states):
        return VerifyResult(Outcome.locked, attempts_left=0)
    return VerifyResult(Outcome.expired)


def verify_phone(phone: str, code: str, user_id: UUID | None = None) -> VerifyResult:
    """Check a code in a transaction of its own (the API's ``POST /api/v1/links/verify``), only
    ``user_id``'s when given."""
    with transaction() as conn:
        return check_code(conn, phone, code, user_id)


def verify_inbound(message_id: int, phone: str, text: str | None) -> VerifyResult | None:
    """Handle a WhatsApp ``VERIFY`` message sent from ``phone`` once: the outcome is recorded on the
    message in the same transaction, and a redelivery returns that outcome without spending another attempt.

    The codes are taken as they were when the message was stored, not when this runs: a VERIFY sent while
    its code was live is not refused because its task waited in a backlog or retried through an outage,
    and one sent before a new code was issued spends none of that code's attempts.

    The code the message holds is redacted in the transaction that records its outcome (codes are stored
    hashed only): a redelivery or a replay answers with the outcome, and needs the code no more.

    Returns None when the message does not exist.
    """
    with transaction() as conn:
        locked = links.lock_inbound_outcome(conn, message_id)
        if locked is None:
            return None
        if locked.outcome is not None:
            messages.redact_verify_code(conn, message_id)  # checked by a release that kept it
            return VerifyResult.from_json(locked.outcome)
        if locked.contact_phone != phone:
            # The sender's WhatsApp account left the number since (a later message moved it, or another
            # account took the number, which unlinked it): a link to it would answer for its next owner,
            # and the contact's number now is not the one the code was sent for. Nothing is spent.
            result = VerifyResult(Outcome.number_changed)
        else:
            result = check_code(conn, phone, parse_verify(text) or "", at=locked.received_at)
            if result.outcome is Outcome.no_pending and links.get_link_by_phone(conn, phone) is not None:
                # Its sender is the linked user: a link answers for the contact that has its number (the
                # router's rule), and that contact has this number now (its row held above). "No pending
                # code, get one in the app" would send them for a code they do not need. Whose account it
                # is goes unsaid, and a number not linked is answered as before.
                result = VerifyResult(Outcome.already_linked)
        links.record_inbound_outcome(conn, message_id, result.to_json())
        messages.redact_verify_code(conn, message_id)
        return result


def forget_code(message_id: int) -> None:
    """Redact the code in inbound message ``message_id`` without checking it (its sender has no phone
    number to check it for): the message keeps no copy of it."""
    with transaction() as conn:
        messages.redact_verify_code(conn, message_id)


# The answer to a VERIFY whose code is not 6 digits (a digit missed or one too many), or has none.
BAD_FORMAT_TEXT = (
    "A code has 6 digits: send VERIFY followed by the 6-digit code from the app, e.g. VERIFY 123456."
)


def reply_text(result: VerifyResult) -> str:
    """What the WhatsApp user is told about their VERIFY message."""
    how = "Ask for a new code in the app, then send VERIFY followed by the code."
    match result.outcome:
        case Outcome.linked:
            return "✅ WhatsApp linked to your account"
        case Outcome.wrong_code if result.attempts_left:
            plural = "s" if result.attempts_left != 1 else ""
            return f"❌ That code is not right. {result.attempts_left} attempt{plural} left."
        case Outcome.wrong_code | Outcome.locked:
            return f"🔒 Too many wrong attempts: this code is locked. {how}"
        case Outcome.expired:
            return f"⌛ This code has expired (codes last 10 minutes). {how}"
        case Outcome.no_pending:
            return (
                "There is no pending code for this number. Get a code in the app for this WhatsApp "
                "number, then send VERIFY followed by the code."
            )
        case Outcome.replaced:
            return (
                "🔁 A newer code was issued after this message. Send VERIFY followed by the newest code "
                "from the app."
            )
        case Outcome.number_changed:
            return (
                "⚠️ This code came from a number this WhatsApp account no longer uses. Ask for a new code "
                "in the app for this number, then send VERIFY followed by the code."
            )
        case Outcome.phone_taken:
            return "⚠️ This number is already linked to another account."
        case Outcome.already_linked:
            return "✅ This number is already linked to your account."
        case _:
            return BAD_FORMAT_TEXT
