"""A provider call whose answer is lost is never made again: the message may already be on its way.

notify's batch path against the fake Twilio API and the fake Graph API, through the real senders'
``send_async``: an answer slower than the request timeout, and a 2xx without the message's id, fail the
message as ``outcome_unknown`` with a dead letter, and a redelivered job sends nothing more. A call that
could not even connect is the one transport failure retried later: nothing was sent.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from shared.providers import aio
from shared.providers.meta.client import MetaSender
from shared.providers.twilio.client import TwilioSender
from shared.settings import load_settings
from tests.fakes.http_server import Incoming, Reply, json_reply
from tests.fakes.meta_graph import FakeGraph
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.integration.test_notify_send import a_reply, message, twilio_settings
from workers import notify
from workers.notify import RetryLater, dispatch

TIMEOUT = aiohttp.ClientTimeout(total=0.5, connect=0.5)


class SlowTwilio(FakeTwilioAPI):
    """Creates the message at once, as Twilio does, but answers after ``delay`` seconds."""

    delay = 1.5

    def answer(self, request: Incoming) -> Reply:
        reply = super().answer(request)
        time.sleep(self.delay)
        return reply


class SidlessTwilio(FakeTwilioAPI):
    """Creates the message but answers 201 with a body that has no sid."""

    def answer(self, request: Incoming) -> Reply:
        super().answer(request)
        return json_reply(201, {"status": "queued"})


class SlowGraph(FakeGraph):
    def answer(self, request: Incoming) -> Reply:
        reply = super().answer(request)
        time.sleep(1.5)
        return reply


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loop's session reads the timeout when made: a fresh loop (and pacer) per test.
    monkeypatch.setattr(aio, "REQUEST_TIMEOUT", TIMEOUT)
    monkeypatch.setattr(aio, "_loops", {}, raising=False)
    monkeypatch.setattr(notify, "_pacers", {})


def dead_letters(db: Any) -> list[int]:
    return [row["message_id"] for row in db.execute("SELECT message_id FROM dead_letters ORDER BY id")]


def assert_unknown_and_dead_lettered(db: Any, message_id: int) -> None:
    row = message(db, message_id)
    assert (row["status"], row["error_code"]) == ("failed", "outcome_unknown")
    assert dead_letters(db) == [message_id]


@pytest.mark.parametrize("fake_class", [SlowTwilio, SidlessTwilio])
def test_a_twilio_answer_lost_after_the_request_is_not_sent_again(db, redis_client, fake_class) -> None:
    with fake_class() as fake:
        settings = twilio_settings(fake)
        sender = TwilioSender(settings)
        own = a_reply("Your code is 1234")

        assert dispatch(own, settings=settings, sender=sender) == "dead"
        assert_unknown_and_dead_lettered(db, own)
        # The job delivered again (or a sweep): the message is failed, so nothing more goes out.
        db.execute("UPDATE messages SET send_after = NULL WHERE id = %s", (own,))
        assert dispatch(own, settings=settings, sender=sender) == "skipped"
        assert len(fake.created()) == 1


def test_a_graph_answer_lost_after_the_request_is_not_sent_again(db, redis_client) -> None:
    with SlowGraph("meta-token") as graph:
        settings = load_settings(
            provider="meta", meta_access_token="meta-token", meta_phone_number_id="999999",
            meta_graph_url=graph.url,
        )  # fmt: skip
        own = a_reply("Your code is 1234")

        assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "dead"

        assert_unknown_and_dead_lettered(db, own)
        assert len(graph.received) == 1


def test_a_provider_that_cannot_be_reached_is_retried_later(db, redis_client) -> None:
    with FakeTwilioAPI() as gone:
        settings = twilio_settings(gone)  # its port is closed once the block ends
    own = a_reply("Your code is 1234")

    with pytest.raises(RetryLater):
        dispatch(own, settings=settings, sender=TwilioSender(settings))

    row = message(db, own)
    assert (row["status"], row["error_code"], row["attempts"]) == ("queued", "connection_error", 1)
    assert dead_letters(db) == []
