"""A recipient's messages reach the provider one at a time, in the order they were stored.

notify's batch path against real PostgreSQL and Redis: the claim passes over a message while an earlier
one to its contact is being sent, is queued and due, or was put back to wait for a pacing slot, so a batch
holds one message per recipient and the next one's job looks again a moment later; one waiting out a
retry holds nothing back. Then three
tasks racing over one recipient's replies, against the fake Twilio API through the real sender: each call
is made only after the previous one's answer.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import pytest

from shared.db import sending
from shared.db.messages import Release
from shared.db.pool import autocommit_connection
from shared.providers.console import ConsoleSender
from shared.providers.twilio.client import TwilioSender
from shared.replies import queue_reply
from shared.settings import load_settings
from tests.fakes.http_server import Incoming, Reply
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.integration.test_inbound_routing import event
from tests.integration.test_notify_send import message, twilio_settings
from workers import notify
from workers.inbound import route
from workers.notify import RetryLater, dispatch

ANA, BEN = "+15553001001", "+15553001002"


def replies_to(phone: str, *texts: str) -> list[int]:
    inbound = route(event("hello", phone=phone), load_settings())
    assert inbound.message_id is not None
    return [queue_reply(inbound.message_id, text, key=f"reply-{index}") for index, text in enumerate(texts)]


def status_and_attempts(db: Any, message_id: int) -> tuple[str, int]:
    row = message(db, message_id)
    return row["status"], row["attempts"]


def test_a_batch_takes_one_message_per_recipient_and_the_next_one_waits_its_turn(db, redis_client) -> None:
    first, second = replies_to(ANA, "Here is the menu", "Project created")
    [other] = replies_to(BEN, "Welcome")
    sender = ConsoleSender(redis_client)

    # The second reply's job runs first: it waits for the first, and claims nothing else meanwhile.
    with pytest.raises(RetryLater) as later:
        dispatch(second, sender=sender)
    assert later.value.reason == "an earlier message to the recipient goes first"
    assert later.value.countdown <= notify.BEHIND_SECONDS + 0.5
    assert [status_and_attempts(db, i) for i in (first, second, other)] == [("queued", 0)] * 3

    # The first one's batch takes the other recipient's message along, not the second one to Ana.
    assert dispatch(first, sender=sender) == "sent"
    assert status_and_attempts(db, other) == ("sent", 1)
    assert status_and_attempts(db, second) == ("queued", 0)

    assert dispatch(second, sender=sender) == "sent"


def test_a_message_waits_while_an_earlier_one_to_its_recipient_is_in_another_batch(db, redis_client) -> None:
    first, second = replies_to(ANA, "one", "two")
    [other] = replies_to(BEN, "hi")
    db.execute(
        "UPDATE messages SET status = 'sending', claimed_by = id, attempts = 1 WHERE id = %s", (first,)
    )
    sender = ConsoleSender(redis_client)

    with pytest.raises(RetryLater):
        dispatch(second, sender=sender)
    # A batch for someone else passes over it too.
    assert dispatch(other, sender=sender) == "sent"
    assert status_and_attempts(db, second) == ("queued", 0)

    db.execute("UPDATE messages SET status = 'sent' WHERE id = %s", (first,))
    assert dispatch(second, sender=sender) == "sent"


def test_an_earlier_message_waiting_out_a_retry_holds_nothing_back(db, redis_client) -> None:
    first, second = replies_to(ANA, "one", "two")
    db.execute(
        "UPDATE messages SET send_after = now() + interval '30 seconds', attempts = 1 WHERE id = %s", (first,)
    )

    assert dispatch(second, sender=ConsoleSender(redis_client)) == "sent"
    assert status_and_attempts(db, first) == ("queued", 1)


def test_an_earlier_message_put_back_to_wait_for_pacing_still_goes_first(db, redis_client) -> None:
    first, second = replies_to(ANA, "one", "two")
    # What a batch does with a send that found no pacing slot in time, or could not book one (Redis away):
    # back to the queue, due a moment later, its attempt given back. It never reached the provider.
    with autocommit_connection() as conn:
        [record] = sending.claim(conn, first, 0).batch
        assert record.id == first
        sending.settle(conn, claim=record.sending_claim, released=[Release(first, 2.0, False, "pacing")])
    assert status_and_attempts(db, first) == ("queued", 0)

    # The second one's job, running meanwhile, would have it reach Ana first.
    with pytest.raises(RetryLater) as later:
        dispatch(second, sender=ConsoleSender(redis_client))

    assert later.value.reason == "an earlier message to the recipient goes first"
    assert status_and_attempts(db, second) == ("queued", 0)


class AnsweringSlowly(FakeTwilioAPI):
    """Creates each message at once but answers 0.3 s later, noting when each call came and was answered."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float, float]] = []  # (body, arrived, answered)

    def answer(self, request: Incoming) -> Reply:
        reply = super().answer(request)
        time.sleep(0.3)
        [body] = parse_qs(request.raw.decode())["Body"]
        with self._lock:
            self.calls.append((body, request.arrived, time.monotonic()))
        return reply


def until_done(message_id: int, **options: Any) -> str:
    """Run the message's job as a worker would: again after each RetryLater (sooner, not to wait long)."""
    for _ in range(100):
        try:
            return dispatch(message_id, **options)
        except RetryLater as later:
            time.sleep(min(later.countdown, 0.2))
    raise AssertionError(f"message {message_id} never went out")


def test_racing_tasks_put_one_recipients_messages_to_the_provider_one_after_another(db, redis_client) -> None:
    texts = ["first", "second", "third"]
    ids = replies_to(ANA, *texts)
    with AnsweringSlowly() as fake:
        settings = twilio_settings(fake, send_rate=50)
        sender = TwilioSender(settings)
        outcomes: dict[int, str] = {}
        tasks = [
            threading.Thread(
                target=lambda i=i: outcomes.__setitem__(i, until_done(i, settings=settings, sender=sender))
            )
            for i in ids
        ]
        for task in tasks:
            task.start()
        for task in tasks:
            task.join(timeout=30)

    assert [status_and_attempts(db, i) for i in ids] == [("sent", 1)] * 3
    calls = sorted(fake.calls, key=lambda call: call[1])
    assert [body for body, _, _ in calls] == texts
    # Each call came after the provider had answered the one before it.
    for (_, _, answered), (_, arrived, _) in itertools.pairwise(calls):
        assert arrived >= answered
