"""Queue ``commands``: slash commands from linked users, and linking instructions for unlinked ones (or,
when the sender's VERIFY was handled after routing, the proposal their free text is).

The answer comes from the plain function ``shared.bot.commands.respond``; the reply is queued with the
idempotency key ``reply:<message id>``. A redelivered task whose reply already exists does not run the
command again (a late ``/project`` must not undo a later choice); it only makes sure the reply is sent.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from shared.bot.commands import ChatUser, respond
from shared.db import answers
from shared.db.pool import connection
from shared.logging import get_logger
from shared.queues import get_publisher
from shared.replies import ALREADY_ANSWERED, answer, reply_key
from shared.sessions import Sessions
from shared.settings import Mode
from workers import ai, inbound, stage_task
from workers.ordering import take_turn

log = get_logger(__name__)


def handle(message_id: int, sessions: Sessions | None = None, task: Task | None = None) -> int | None:
    """Answer inbound message ``message_id``; return the reply's outbound id.

    ``task``: the ``commands.handle`` task running it, which takes the message's turn in its conversation
    (workers/ordering.py) from the read that loads the message, before anything else.
    """
    with connection() as conn:
        start = answers.start(conn, message_id, reply_key=reply_key(message_id))
    if task is not None:
        take_turn(task, message_id, start.turn)
    if start.reply_id is not None:
        # answer(), not queue_reply(): it also marks the message handled, should its reply have been stored
        # without (by a release that marked it in a second transaction), and re-enqueues notify.send.
        return answer(message_id, ALREADY_ANSWERED)
    record = start.record
    sessions = sessions or Sessions(get_publisher().redis)
    if record.user_id is not None and _proposal_once_linked(record.body):
        # Routing sends a linked user's free text to ai.parse_proposal; this one came here because it was
        # routed before the sender's VERIFY, sent just ahead of it, was handled. Handled in its turn, the
        # link is there now: the text becomes the proposal it would have been, not the help.
        ai.parse_message(message_id, sessions)
        return None
    user = ChatUser(record.user_key, record.user_id, has_phone=record.phone is not None)
    text = respond(record.body or "", user, sessions, record.type)
    return answer(message_id, text)


def _proposal_once_linked(body: str | None) -> bool:
    # Routing's own rule, with the link it could not see yet (only project mode routes here).
    handler = inbound.pick_handler(inbound.collapse(body), linked=True, mode=Mode.project)
    return handler == "ai.parse_proposal"


# Ordered all the same: handle() takes the turn itself, read with the message in one statement.
@stage_task("commands.handle", ordered=False)
def handle_task(self: Any, message_id: int) -> None:
    handle(message_id, task=self)
