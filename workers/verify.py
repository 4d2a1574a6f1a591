"""Queue ``verify``: a WhatsApp ``VERIFY 123456`` message links the sender's phone to the user whose
pending code it is, and the sender is told what happened (linked, wrong, expired, locked, no code, or
not 6 digits: a mistyped code is answered here too, never taken for free text).

Safe to run twice: the outcome is recorded on the inbound message in the transaction that spends the
attempt (``shared.verification.verify_inbound``), and the reply has the idempotency key
``reply:<message id>``, so a redelivery re-sends nothing and burns no attempt. That transaction also
redacts the code in the stored message (codes are stored hashed only), which the outcome makes needless.
"""

from __future__ import annotations

from typing import Any

from shared.bot.commands import NO_PHONE_TEXT
from shared.db.messages import get_inbound
from shared.logging import get_logger
from shared.replies import answer
from shared.verification import forget_code, reply_text, verify_inbound
from workers import stage_task

log = get_logger(__name__)


def check_code(message_id: int) -> int | None:
    """Check the code in inbound message ``message_id`` and queue the reply; return the reply's id."""
    record = get_inbound(message_id)
    # The code is for the number the message came from, not the one its contact has by now.
    if record.sent_from is None:
        forget_code(message_id)
        return answer(message_id, NO_PHONE_TEXT)
    result = verify_inbound(message_id, record.sent_from, record.body)
    if result is None:
        log.warning("verify: inbound message not found")
        return None
    log.info("verify outcome", outcome=result.outcome.value, user_id=str(result.user_id or ""))
    reply_id = answer(message_id, reply_text(result))
    return reply_id


@stage_task("verify.check_code")
def check_code_task(self: Any, message_id: int) -> None:
    check_code(message_id)
