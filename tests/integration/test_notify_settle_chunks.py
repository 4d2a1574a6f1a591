"""A notify batch records its outcomes as they come, not only once its last send is answered.

notify's batch path in-process against real PostgreSQL and Redis and the fake Twilio API (through the real
sender's ``send_async``), which answers every send of the batch at once but one, held until the test lets
it go. While that send is held the batch is still running, and yet the sends already answered are 'sent'
with their provider id, so a worker killed now leaves them sent rather than "outcome unknown", and a
delivery receipt that comes this early finds its message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import aiohttp
import psycopg
import pytest
import tenacity

from shared.db.errors import Unavailable
from shared.providers import aio
from shared.providers.twilio.client import TwilioSender
from shared.wire.events import StatusUpdate
from tests.fakes.http_server import Incoming, Reply
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.integration.test_notify_dispatch import a_reply_to
from tests.integration.test_notify_send import message, statuses, twilio_settings
from workers import notify, status
from workers.notify import dispatch

HELD_PHONE = "+15553200009"


class HoldingTwilio(FakeTwilioAPI):
    """Creates every message at once; answers the one to ``HELD_PHONE`` only once :attr:`release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()

    def answer(self, request: Incoming) -> Reply:
        reply = super().answer(request)
        if self.received[-1].form.get("To") == f"whatsapp:{HELD_PHONE}":
            self.holding.set()
            self.release.wait(timeout=60)
        return reply


@pytest.fixture(autouse=True)
def fresh_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # Longer than the test holds a send: the held call must not end as "outcome unknown" meanwhile. The
    # loop's session reads the timeout when made: a fresh loop (and pacer) for this test.
    monkeypatch.setattr(aio, "REQUEST_TIMEOUT", aiohttp.ClientTimeout(total=90.0, connect=5.0))
    monkeypatch.setattr(aio, "_loops", {}, raising=False)
    monkeypatch.setattr(notify, "_pacers", {})


@pytest.fixture
def fake() -> Iterator[HoldingTwilio]:
    with HoldingTwilio() as api:
        try:
            yield api
        finally:
            api.release.set()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sends_answered_while_the_batch_runs_are_recorded_before_it_ends(db, redis_client, fake) -> None:
    answered = [a_reply_to(f"+1555320000{index}") for index in range(4)]
    held = a_reply_to(HELD_PHONE)
    settings = twilio_settings(fake)
    outcome: list[str] = []
    batch = threading.Thread(
        target=lambda: outcome.append(dispatch(answered[0], settings=settings, sender=TwilioSender(settings)))
    )
    batch.start()

    assert fake.holding.wait(timeout=15), "the held send never reached the provider"
    wait_for(
        lambda: all(message(db, i)["status"] == "sent" for i in answered),
        "the answered sends to be recorded while the batch runs",
    )

    # The batch is still running (its last send awaits the provider), and the provider's ids are known.
    assert batch.is_alive()
    assert message(db, held)["status"] == "sending"
    sids = sids_by_id(db, fake)
    assert [message(db, i)["provider_message_id"] for i in answered] == [sids[i] for i in answered]
    # A receipt this early finds its message (status.apply looks for an unknown id only about a minute).
    first_sid = message(db, answered[1])["provider_message_id"]
    receipt = StatusUpdate(provider="twilio", provider_message_id=first_sid, status="delivered")
    assert status.apply(receipt.model_dump(mode="json")) is not None

    fake.release.set()
    batch.join(timeout=30)
    assert not batch.is_alive()
    assert outcome == ["sent"]
    assert [message(db, i)["status"] for i in (*answered, held)] == [
        "sent",
        "delivered",
        "sent",
        "sent",
        "sent",
    ]
    # Each outcome written once: the last settle writes only the held send.
    assert statuses(db, answered[1]) == ["queued", "sent", "delivered"]
    assert [statuses(db, i) for i in (answered[0], held)] == [["queued", "sent"]] * 2
    assert len(fake.created()) == 5


def test_a_chunk_the_database_could_not_take_is_written_with_a_later_one(
    db, redis_client, fake, monkeypatch
) -> None:
    answered = [a_reply_to(f"+1555320000{index}") for index in range(4)]
    held = a_reply_to(HELD_PHONE)
    settings = twilio_settings(fake)
    # PostgreSQL is away while the last send is held: every attempt of every chunk written meanwhile fails
    # (no waits between the attempts here).
    monkeypatch.setattr(notify._settle.retry, "wait", tenacity.wait_none())
    give_up = notify._settle.retry.stop.max_attempt_number
    real_settle = notify.sending.settle
    attempts: list[int] = []

    def away_while_held(conn: psycopg.Connection, **outcomes: object) -> list[int]:
        attempts.append(len(attempts))
        if not fake.release.is_set():
            raise Unavailable("the database is restarting")
        return real_settle(conn, **outcomes)

    monkeypatch.setattr(notify.sending, "settle", away_while_held)
    outcome: list[str] = []
    batch = threading.Thread(
        target=lambda: outcome.append(dispatch(answered[0], settings=settings, sender=TwilioSender(settings)))
    )
    batch.start()

    assert fake.holding.wait(timeout=15), "the held send never reached the provider"
    wait_for(lambda: len(attempts) >= give_up, "the first chunk's settle to give up")
    # The batch goes on: its last send is still running, and what it knows is kept for its next settle.
    assert batch.is_alive()
    assert [message(db, i)["status"] for i in answered] == ["sending"] * 4

    fake.release.set()
    batch.join(timeout=30)
    assert not batch.is_alive()
    assert outcome == ["sent"]
    for message_id in (*answered, held):
        row = message(db, message_id)
        assert (row["status"], row["provider_message_id"]) == ("sent", sids_by_id(db, fake)[message_id])
        assert statuses(db, message_id) == ["queued", "sent"]
    assert len(fake.created()) == 5


def sids_by_id(db, fake: HoldingTwilio) -> dict[int, str | None]:
    sids = {r.form["To"].removeprefix("whatsapp:"): r.sid for r in fake.created()}
    rows = db.execute(
        "SELECT m.id, c.phone FROM messages m JOIN contacts c ON c.id = m.contact_id"
        " WHERE m.direction = 'out'"
    ).fetchall()
    return {row["id"]: sids[row["phone"]] for row in rows}
