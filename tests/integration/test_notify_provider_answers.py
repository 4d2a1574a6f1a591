"""What the provider answered decides what happens to the message, whatever shape the answer takes.

notify's batch path (``workers.notify.dispatch``) with the real senders' ``send_async`` against the fake
Graph API (Meta, and Kapso's proxy of it) and the fake Twilio API:

- a compressed answer is read like any other: a gzipped 200 is one send, a gzipped 429 keeps its
  Retry-After;
- a 2xx whose body cannot be read (an id that is not a string, bytes that are not UTF-8) may be a
  delivered message: outcome unknown, a dead letter, never a second request;
- an error body that is not shaped like Graph's is classified by its HTTP status;
- refused credentials are the account's fault, not the message's: the message is kept as a dead letter,
  replayed once the credentials are fixed;
- Twilio's 21611 (the sender's queue is full) is a "retry later";
- a gateway's 502 or 504 means the server behind it had the request: outcome unknown, no second call,
  while the provider's own 500 or 503 is still retried (as the chaos outage test expects).
- a 408 (the server stopped waiting for the request, and did nothing with it) is retried, not a refusal.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from shared.commands import dlq
from shared.providers.base import OutboundMessage, OutcomeUnknown, SendResult
from shared.providers.kapso.client import KapsoSender
from shared.providers.meta.client import CloudApiSender, MetaSender
from shared.providers.twilio.client import TwilioSender
from shared.settings import Settings, load_settings
from tests.fakes.http_server import Incoming, Reply
from tests.fakes.meta_graph import FakeGraph, graph_error
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.integration.test_notify_send import a_reply, due_now, message, twilio_settings
from workers import notify
from workers.notify import RetryLater, dispatch

TOKEN = "graph-token"
PHONE_NUMBER_ID = "999999"

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "deflate": zlib.compress}


class CompressingGraph(FakeGraph):
    """Answers like the Graph API, its body compressed as a proxy or CDN in front of it may do."""

    encoding = "gzip"

    def answer(self, request: Incoming) -> Reply:
        plain = super().answer(request)
        body = COMPRESSORS[self.encoding](plain.body)
        headers = {name: value for name, value in plain.headers.items() if name != "Content-Length"}
        return Reply(
            plain.status,
            body,
            headers | {"Content-Encoding": self.encoding, "Content-Length": str(len(body))},
        )


Provider = tuple[type[CloudApiSender], Callable[[FakeGraph], Settings], bool]

META: Provider = (
    MetaSender,
    lambda graph: load_settings(
        provider="meta",
        meta_access_token=TOKEN,
        meta_phone_number_id=PHONE_NUMBER_ID,
        meta_graph_url=graph.url,
    ),
    False,
)
KAPSO: Provider = (
    KapsoSender,
    lambda graph: load_settings(
        provider="kapso", kapso_api_key=TOKEN, kapso_phone_number_id=PHONE_NUMBER_ID, kapso_api_url=graph.url
    ),
    True,
)


@pytest.fixture(autouse=True)
def fresh_pacer(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Retry-After blocks the sender number in the process's pacer too: none carried into the next test.
    monkeypatch.setattr(notify, "_pacers", {})


@pytest.fixture(params=[META, KAPSO], ids=["meta", "kapso"])
def provider(request: pytest.FixtureRequest) -> Provider:
    return request.param


# --- compressed answers --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", sorted(COMPRESSORS))
def test_a_compressed_success_is_one_send(db, redis_client, provider: Provider, encoding: str) -> None:
    sender_class, settings_for, api_key = provider
    with CompressingGraph(TOKEN, api_key=api_key) as graph:
        graph.encoding = encoding
        settings = settings_for(graph)
        own = a_reply("Your order shipped")

        assert dispatch(own, settings=settings, sender=sender_class(settings)) == "sent"

        assert len(graph.received) == 1
        row = message(db, own)
        assert row["status"] == "sent"
        assert row["provider_message_id"].startswith("wamid.FAKE")


def test_a_compressed_throttle_keeps_its_retry_after(db, redis_client, provider: Provider) -> None:
    sender_class, settings_for, api_key = provider
    with CompressingGraph(TOKEN, api_key=api_key) as graph:
        settings = settings_for(graph)
        graph.respond(429, graph_error(130429, "Rate limit hit"), {"Retry-After": "30"})
        own = a_reply("Your order shipped")

        with pytest.raises(RetryLater) as later:
            dispatch(own, settings=settings, sender=sender_class(settings))

        assert later.value.countdown >= 30
        row = message(db, own)
        assert (row["status"], row["error_code"]) == ("queued", "130429")


# --- 2xx answers that cannot be read -------------------------------------------------------------------


class GarbledTwilio(FakeTwilioAPI):
    """Creates the message, but its 201 answer is bytes that are not the UTF-8 its header promises."""

    def answer(self, request: Incoming) -> Reply:
        super().answer(request)
        body = b'{"sid": "SM\xff\xfe", "status": "queued"}'
        return Reply(
            201,
            body,
            {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(body))},
        )


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(TOKEN) as fake:
        yield fake


def meta_settings(graph: FakeGraph, token: str = TOKEN) -> Settings:
    return load_settings(
        provider="meta",
        meta_access_token=token,
        meta_phone_number_id=PHONE_NUMBER_ID,
        meta_graph_url=graph.url,
    )


def dead_letters(db: Any) -> list[dict[str, Any]]:
    return db.execute("SELECT id, message_id, error FROM dead_letters ORDER BY id").fetchall()


def assert_unknown_and_dead_lettered(db: Any, message_id: int) -> None:
    row = message(db, message_id)
    assert (row["status"], row["error_code"]) == ("failed", "outcome_unknown")
    assert [letter["message_id"] for letter in dead_letters(db)] == [message_id]


def test_a_graph_id_that_is_not_a_string_is_an_unknown_outcome(db, redis_client, graph: FakeGraph) -> None:
    settings = meta_settings(graph)
    graph.respond(200, {"messaging_product": "whatsapp", "messages": [{"id": 123}]})
    own = a_reply("Your code is 1234")

    assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "dead"

    assert_unknown_and_dead_lettered(db, own)
    assert len(graph.received) == 1


def test_a_twilio_answer_that_is_not_utf8_is_an_unknown_outcome(db, redis_client) -> None:
    with GarbledTwilio() as fake:
        settings = twilio_settings(fake)
        own = a_reply("Your code is 1234")

        assert dispatch(own, settings=settings, sender=TwilioSender(settings)) == "dead"

        assert_unknown_and_dead_lettered(db, own)
        assert len(fake.created()) == 1


def test_an_unexpected_failure_reading_the_answer_is_an_unknown_outcome(
    db, redis_client, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever goes wrong once the request is on its way (here the result cannot be built), the
    # provider may have the message: it is not sent again.
    def broken(*_args: object, **_kwargs: object) -> SendResult:
        raise RuntimeError("a bug of ours")

    settings = meta_settings(graph)
    sender = MetaSender(settings)
    monkeypatch.setattr(sender, "_result", broken)
    own = a_reply("Your code is 1234")

    assert dispatch(own, settings=settings, sender=sender) == "dead"

    assert_unknown_and_dead_lettered(db, own)
    assert len(graph.received) == 1


# --- error bodies not shaped like Graph's -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"error": "Invalid API key"}, "http_400"),
        (["not", "an", "object"], "http_400"),
        ({"error": {"code": 131026, "message": "undeliverable", "error_data": "no details"}}, "131026"),
    ],
)
def test_an_odd_error_body_fails_the_message_by_its_status(
    db, redis_client, graph: FakeGraph, body: Any, code: str
) -> None:
    settings = meta_settings(graph)
    graph.respond(400, body)
    own = a_reply()

    assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "failed"

    row = message(db, own)
    assert (row["status"], row["error_code"]) == ("failed", code)
    assert len(graph.received) == 1


def test_an_odd_server_error_body_is_retried_later(db, redis_client, graph: FakeGraph) -> None:
    settings = meta_settings(graph)
    graph.respond(503, ["busy"])
    own = a_reply()

    with pytest.raises(RetryLater):
        dispatch(own, settings=settings, sender=MetaSender(settings))

    row = message(db, own)
    assert (row["status"], row["error_code"], row["attempts"]) == ("queued", "http_503", 1)
    due_now(db, own)
    assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "sent"
    assert len(graph.received) == 2


# --- refused credentials -------------------------------------------------------------------------------


def replay_with(db: Any, own: int, send: Callable[[], str]) -> None:
    """Replay the message's dead letter (`wapipe dlq replay`), then send it as its job would."""
    [letter] = dead_letters(db)
    assert dlq.replay(letter["id"]).result == "replayed"
    assert send() == "sent"
    assert message(db, own)["status"] == "sent"


def test_a_refused_graph_token_keeps_the_message_for_replay(
    db, redis_client, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    expired = meta_settings(graph, token="expired-token")
    own = a_reply("Your order shipped")

    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(notify, "log", structlog.get_logger(notify.__name__))
        assert dispatch(own, settings=expired, sender=MetaSender(expired)) == "dead"

    row = message(db, own)
    assert (row["status"], row["error_code"]) == ("failed", "190")
    assert [letter["message_id"] for letter in dead_letters(db)] == [own]
    refusals = [entry for entry in logs if "credentials" in entry["event"]]
    assert [(entry["log_level"], entry["error_code"]) for entry in refusals] == [("error", "190")]
    assert "expired-token" not in repr(logs)
    fixed = meta_settings(graph)
    replay_with(db, own, lambda: dispatch(own, settings=fixed, sender=MetaSender(fixed)))
    assert len(graph.received) == 2


# 3 (a capability or permission the app lacks) comes with HTTP 500, but is no server trouble to retry for a
# day; 33 says the business phone number was deleted.
@pytest.mark.parametrize(
    ("status", "code"), [(403, 10), (400, 200), (403, None), (400, 131031), (400, 368), (500, 3), (400, 33)]
)
def test_graph_permission_errors_keep_the_message(
    db, redis_client, graph: FakeGraph, status: int, code: int | None
) -> None:
    settings = meta_settings(graph)
    body = graph_error(code, "not allowed") if code is not None else {"error": {"message": "Forbidden"}}
    graph.respond(status, body)
    own = a_reply()

    assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "dead"

    assert message(db, own)["status"] == "failed"
    assert [letter["message_id"] for letter in dead_letters(db)] == [own]


def test_a_sender_number_the_token_cannot_reach_keeps_the_message(db, redis_client, graph: FakeGraph) -> None:
    # Graph's answer when the phone number id in the URL is not one the token may use (permission revoked,
    # number moved to another account): every send fails alike, so the message waits to be replayed.
    settings = meta_settings(graph)
    error = graph_error(
        100,
        "Unsupported post request. Object with ID '999999' does not exist, cannot be"
        " loaded due to missing permissions, or does not support this operation.",
    )
    error["error"] |= {"type": "GraphMethodException", "error_subcode": 33}
    graph.respond(400, error)
    own = a_reply()

    assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "dead"

    assert (message(db, own)["status"], message(db, own)["error_code"]) == ("failed", "100")
    assert [letter["message_id"] for letter in dead_letters(db)] == [own]


def test_an_invalid_parameter_still_fails_the_message_alone(db, redis_client, graph: FakeGraph) -> None:
    settings = meta_settings(graph)
    graph.respond(400, graph_error(100, "(#100) Invalid parameter"))
    own = a_reply()

    assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "failed"

    assert dead_letters(db) == []


def test_a_refused_twilio_token_keeps_the_message_for_replay(db, redis_client) -> None:
    with FakeTwilioAPI() as fake:
        wrong = twilio_settings(fake).model_copy(update={"twilio_auth_token": SecretStr("rotated-away")})
        own = a_reply("Your order shipped")

        assert dispatch(own, settings=wrong, sender=TwilioSender(wrong)) == "dead"

        row = message(db, own)
        assert (row["status"], row["error_code"]) == ("failed", "20003")
        assert [letter["message_id"] for letter in dead_letters(db)] == [own]
        assert "rotated-away" not in json.dumps([dict(letter) for letter in dead_letters(db)], default=str)
        fixed = twilio_settings(fake)
        replay_with(db, own, lambda: dispatch(own, settings=fixed, sender=TwilioSender(fixed)))
        assert len(fake.created()) == 1


# Twilio's answers about our From number, whatever the message: 63007, no WhatsApp sender (channel) for it;
# 21212, not a valid From; 21606, not a number of this account that can send. Every send fails alike until
# the configuration is fixed.
@pytest.mark.parametrize(
    ("code", "text"),
    [
        (63007, "Twilio could not find a Channel with the specified From address"),
        (21212, "The 'From' number whatsapp:+15550001111 is not a valid phone number"),
        (21606, "The From phone number is not a valid, message-capable Twilio phone number"),
    ],
)
def test_a_twilio_from_number_refused_keeps_the_message_for_replay(
    db, redis_client, code: int, text: str
) -> None:
    with FakeTwilioAPI() as fake:
        settings = twilio_settings(fake)
        fake.respond(400, code=code, message=text)
        own = a_reply("Your order shipped")

        assert dispatch(own, settings=settings, sender=TwilioSender(settings)) == "dead"

        row = message(db, own)
        assert (row["status"], row["error_code"]) == ("failed", str(code))
        assert [letter["message_id"] for letter in dead_letters(db)] == [own]


# --- Twilio's queue for the sender is full -------------------------------------------------------------


def test_twilio_21611_goes_back_to_the_queue_and_is_then_sent(db, redis_client) -> None:
    with FakeTwilioAPI() as fake:
        settings = twilio_settings(fake)
        fake.respond(
            400, code=21611, message="This 'From' number has exceeded the maximum number of queued messages"
        )
        own = a_reply("Your order shipped")

        with pytest.raises(RetryLater):
            dispatch(own, settings=settings, sender=TwilioSender(settings))

        row = message(db, own)
        assert (row["status"], row["error_code"]) == ("queued", "21611")
        due_now(db, own)
        assert dispatch(own, settings=settings, sender=TwilioSender(settings)) == "sent"
        assert len(fake.created()) == 1
        assert dead_letters(db) == []


# --- a gateway's 502 or 504 ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 504])
def test_a_graph_gateway_error_is_an_unknown_outcome(db, redis_client, graph: FakeGraph, status: int) -> None:
    settings = meta_settings(graph)
    graph.respond(status, {"error": {"message": "Bad gateway"}})
    own = a_reply("Your code is 1234")

    assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "dead"

    assert_unknown_and_dead_lettered(db, own)
    assert len(graph.received) == 1


@pytest.mark.parametrize("status", [502, 504])
def test_a_twilio_gateway_error_is_an_unknown_outcome(db, redis_client, status: int) -> None:
    with FakeTwilioAPI() as fake:
        settings = twilio_settings(fake)
        fake.respond(status)
        own = a_reply("Your code is 1234")

        assert dispatch(own, settings=settings, sender=TwilioSender(settings)) == "dead"

        assert_unknown_and_dead_lettered(db, own)
        assert len(fake.requests()) == 1


def test_twilio_sync_send_makes_no_second_call_after_a_gateway_error() -> None:
    # The SDK path retries transient errors within the call: a 504 must not be one of them.
    with FakeTwilioAPI() as fake:
        fake.respond(504)
        with pytest.raises(OutcomeUnknown):
            TwilioSender(twilio_settings(fake)).send(OutboundMessage(id=1, to="+15551234567", text="Hi"))
        assert len(fake.requests()) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_of_the_provider_itself_is_retried(db, redis_client, status: int) -> None:
    # The chaos outage (chaos/test_provider_outage.py) answers 500s: the server's own "not done", retried.
    with FakeTwilioAPI() as fake:
        settings = twilio_settings(fake)
        fake.respond(status)
        own = a_reply("Your code is 1234")

        with pytest.raises(RetryLater):
            dispatch(own, settings=settings, sender=TwilioSender(settings))

        due_now(db, own)
        assert dispatch(own, settings=settings, sender=TwilioSender(settings)) == "sent"
        assert len(fake.created()) == 1


# --- a server that gave up waiting for the request -----------------------------------------------------


def test_a_graph_408_goes_back_to_the_queue(db, redis_client, provider: Provider) -> None:
    # 408: the server (or a proxy before it) stopped waiting before it had the whole request, so it did
    # nothing with it, and RFC 9110 section 15.5.9 lets the client send it again.
    sender_class, settings_for, api_key = provider
    with FakeGraph(TOKEN, api_key=api_key) as graph:
        settings = settings_for(graph)
        graph.respond(408, "<html>Request Timeout</html>")
        own = a_reply("Your order shipped")

        with pytest.raises(RetryLater):
            dispatch(own, settings=settings, sender=sender_class(settings))

        assert message(db, own)["status"] == "queued"


def test_a_twilio_408_goes_back_to_the_queue(db, redis_client) -> None:
    with FakeTwilioAPI() as fake:
        settings = twilio_settings(fake)
        fake.respond(408, message="Request Timeout")
        own = a_reply("Your order shipped")

        with pytest.raises(RetryLater):
            dispatch(own, settings=settings, sender=TwilioSender(settings))

        assert message(db, own)["status"] == "queued"
