"""Queue ``commands``: slash commands from linked users, and linking instructions for unlinked ones.

The answer comes from the plain function ``shared.bot.commands.respond``; the reply is queued with the
idempotency key ``reply:<message id>``. A redelivered task whose reply already exists does not run the
command again (a late ``/project`` must not undo a later choice); it only makes sure the reply is sent.
"""

from __future__ import annotations

from typing import Any

from shared.bot.commands import ChatUser, respond
from shared.db.errors import wrap_errors
from shared.db.messages import get_inbound
from shared.db.pool import connection
from shared.logging import get_logger
from shared.queues import get_publisher
from shared.replies import answer, reply_key
from shared.sessions import Sessions
from workers import stage_task

log = get_logger(__name__)

# Whether the reply to an inbound message is already stored (its idempotency key is reply:<inbound id>).
_REPLY_EXISTS = "SELECT 1 FROM messages WHERE idempotency_key = %(key)s"
# queue_reply ignores the text when the reply already exists; it only re-enqueues notify.send.
_ALREADY_ANSWERED = "(already answered)"


def _already_answered(message_id: int) -> bool:
    with connection() as conn, wrap_errors():
        return conn.execute(_REPLY_EXISTS, {"key": reply_key(message_id)}).fetchone() is not None


def handle(message_id: int, sessions: Sessions | None = None) -> int | None:
    """Answer inbound message ``message_id``; return the reply's outbound id."""
    if _already_answered(message_id):
        # answer(), not queue_reply(): a first run that died before marking it handled held the turn.
        return answer(message_id, _ALREADY_ANSWERED)
    record = get_inbound(message_id)
    sessions = sessions or Sessions(get_publisher().redis)
    text = respond(record.body or "", ChatUser(record.user_key, record.user_id), sessions)
    reply_id = answer(message_id, text)
    return reply_id


@stage_task("commands.handle")
def handle_task(self: Any, message_id: int) -> None:
    handle(message_id)
