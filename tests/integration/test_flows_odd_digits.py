"""Odd digits in the menu bot ("²", "①", a pasted run of digits) get the menu's re-prompt, and the next
message is answered as usual (flows.step's plain function, real PostgreSQL, Redis and replies)."""

from __future__ import annotations

import psycopg
import pytest
import redis

from shared.flows.pack import load_pack
from shared.flows.seed import seed_shopfloor
from shared.flows.service import Target, process
from shared.queues import handler_key
from shared.replies import queue_reply
from tests.integration.flows_support import add_inbound, make_conversation

PHONE = "+15550100001"


@pytest.mark.parametrize("odd", ["²", "①", "9" * 5000])
def test_odd_digits_at_the_menu_are_re_prompted_and_do_not_block_the_chat(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, odd: str
) -> None:
    seed_shopfloor(db)
    contact_id, conversation_id = make_conversation(db, PHONE)
    pack = load_pack("shopfloor")

    def send(text: str) -> int:
        message_id = add_inbound(db, contact_id, conversation_id, text)
        redis_client.set(handler_key(message_id), 1)
        target = Target(message_id, conversation_id, contact_id, PHONE)
        return process(target, conn=db, redis_client=redis_client, pack=pack, reply=queue_reply)

    # Before, int() raised ValueError on each: no reply, and every later message failed behind it.
    assert [send("hi"), send(odd), send("1")] == [1, 1, 1]
    replies = [
        row["body"]
        for row in db.execute(
            "SELECT body FROM messages WHERE direction = 'out' AND conversation_id = %s ORDER BY id",
            (conversation_id,),
        )
    ]
    assert len(replies) == 3
    assert replies[1].startswith("Sorry, I didn't get that.")
    assert "order number" in replies[2]  # "1" started the first flow, reporting a defect
