"""What the provider answered decides what happens to the message, whatever shape the answer takes.

notify's batch path (``workers.notify.dispatch``) with the real senders' ``send_async`` against the fake
Graph API (Meta, and Kapso's proxy of it) and the fake Twilio API:

- a compressed answer is read like any other: a gzipped 200 is one send, a gzipped 429 keeps its
  Retry-After.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import pytest

from shared.providers.kapso.client import KapsoSender
from shared.providers.meta.client import CloudApiSender, MetaSender
from shared.settings import Settings, load_settings
from tests.fakes.http_server import Incoming, Reply
from tests.fakes.meta_graph import FakeGraph, graph_error
from tests.integration.test_notify_send import a_reply, message
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
