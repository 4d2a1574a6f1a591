"""The Meta Graph API sender against a fake Graph API on 127.0.0.1: the real httpx code runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.providers import get_sender
from shared.providers.base import (
    MAX_RETRY_AFTER_SECONDS,
    AccountRefused,
    OutboundMessage,
    Sender,
    SendError,
)
from shared.providers.meta.client import MetaSender
from shared.settings import Settings, load_settings
from tests.fakes.meta_graph import FakeGraph, graph_error

TOKEN = "EAAG-test-token"
PHONE_NUMBER_ID = "106540352242922"


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(TOKEN) as fake:
        yield fake


@pytest.fixture
def sender(graph: FakeGraph) -> Iterator[MetaSender]:
    meta = MetaSender(settings(graph.url))
    yield meta
    meta.close()


def settings(graph_url: str, token: str = TOKEN) -> Settings:
    return load_settings(
        provider="meta",
        meta_access_token=token,
        meta_phone_number_id=PHONE_NUMBER_ID,
        meta_graph_url=graph_url,
    )


def message(**fields: object) -> OutboundMessage:
    return OutboundMessage.model_validate(
        {"id": 7, "to": "+573103055424", "type": "text", "text": "Hola"} | fields
    )


def test_it_is_a_sender_and_get_sender_picks_it(graph: FakeGraph, sender: MetaSender) -> None:
    assert isinstance(sender, Sender)
    assert isinstance(get_sender(settings(graph.url)), MetaSender)


def test_text_is_posted_with_the_bearer_token(graph: FakeGraph, sender: MetaSender) -> None:
    result = sender.send(message(text="Tu pedido está listo"))
    assert result.provider == "meta"
    assert result.provider_message_id.startswith("wamid.FAKE")
    [request] = graph.received
    assert request.path == f"/v21.0/{PHONE_NUMBER_ID}/messages"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.json["messaging_product"] == "whatsapp"
    assert request.json["to"] == "+573103055424"
    assert request.json["type"] == "text"
    assert request.json["text"]["body"] == "Tu pedido está listo"


def test_replies_go_out_from_the_number_that_received_the_message(
    graph: FakeGraph, sender: MetaSender
) -> None:
    sender.send(message(from_number="209876543210987"))
    assert graph.received[0].path == "/v21.0/209876543210987/messages"


def test_interactive_buttons_and_lists(graph: FakeGraph, sender: MetaSender) -> None:
    sender.send(
        message(
            type="interactive",
            interactive={"kind": "buttons", "body": "¿Confirmas?", "buttons": [{"id": "y", "title": "Sí"}]},
        )
    )
    sender.send(
        message(
            type="interactive",
            interactive={
                "kind": "list",
                "body": "Menú",
                "button_text": "Ver",
                "sections": [{"title": "Opciones", "rows": [{"id": "1", "title": "Pedidos"}]}],
            },
        )
    )
    buttons, listing = (r.json["interactive"] for r in graph.received)
    assert buttons["type"] == "button"
    assert buttons["action"]["buttons"] == [{"type": "reply", "reply": {"id": "y", "title": "Sí"}}]
    assert listing["type"] == "list"
    assert listing["action"]["sections"][0]["rows"] == [{"id": "1", "title": "Pedidos"}]


def test_media_template_and_reaction(graph: FakeGraph, sender: MetaSender) -> None:
    sender.send(
        message(
            type="media",
            media={
                "kind": "document",
                "url": "https://x.test/f.pdf",
                "caption": "Factura",
                "filename": "f.pdf",
            },
        )
    )
    sender.send(
        message(type="template", template={"name": "order_ready", "language": "es", "variables": ["42"]})
    )
    sender.send(message(type="reaction", reaction={"message_id": "wamid.ABC", "emoji": "👍"}))
    media, template, reaction = (r.json for r in graph.received)
    assert media["document"] == {"link": "https://x.test/f.pdf", "caption": "Factura", "filename": "f.pdf"}
    assert template["template"]["components"][0]["parameters"] == [{"type": "text", "text": "42"}]
    assert reaction["reaction"] == {"message_id": "wamid.ABC", "emoji": "👍"}


def test_over_the_limit_fails_before_any_call(graph: FakeGraph, sender: MetaSender) -> None:
    too_many = [{"id": str(i), "title": f"B{i}"} for i in range(4)]
    with pytest.raises(SendError) as info:
        sender.send(
            message(type="interactive", interactive={"kind": "buttons", "body": "x", "buttons": too_many})
        )
    assert info.value.permanent
    with pytest.raises(SendError) as info:
        sender.send(message(text="x" * 4097))
    assert info.value.code == "text_too_long"
    assert graph.received == []


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [(429, 130429, "7"), (400, 131056, None), (429, None, "2.5"), (500, 131000, None), (503, None, None)],
)
def test_throttling_and_server_errors_are_transient(
    graph: FakeGraph, sender: MetaSender, status: int, code: int | None, retry_after: str | None
) -> None:
    body = graph_error(code, "Rate limit hit") if code is not None else {"error": {"message": "busy"}}
    graph.respond(status, body, {"Retry-After": retry_after} if retry_after else {})
    with pytest.raises(SendError) as info:
        sender.send(message())
    assert not info.value.permanent
    assert info.value.retry_after == (float(retry_after) if retry_after else None)
    if code is not None:
        assert info.value.code == str(code)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("999999999", MAX_RETRY_AFTER_SECONDS),
        ("inf", MAX_RETRY_AFTER_SECONDS),
        ("nan", None),
        ("-5", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_a_retry_after_is_finite_and_capped(
    graph: FakeGraph, sender: MetaSender, header: str, seconds: float | None
) -> None:
    # It blocks the sender number for every process: a huge value must not stop every send for days.
    graph.respond(429, graph_error(130429, "Rate limit hit"), {"Retry-After": header})
    with pytest.raises(SendError) as info:
        sender.send(message())
    assert not info.value.permanent
    assert info.value.retry_after == seconds


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 131047), (400, 131050), (400, 131026), (400, 100), (401, 190)],
)
def test_permanent_errors(graph: FakeGraph, sender: MetaSender, status: int, code: int) -> None:
    graph.respond(status, graph_error(code, "refused", details="why it was refused"))
    with pytest.raises(SendError) as info:
        sender.send(message())
    assert info.value.permanent
    assert info.value.code == str(code)
    assert info.value.message == "why it was refused"


@pytest.mark.parametrize("status", [400, 403])
def test_a_locked_business_account_is_the_accounts_fault(
    graph: FakeGraph, sender: MetaSender, status: int
) -> None:
    # 131031: the WhatsApp Business Account is locked (a policy lock or a wrong two-step PIN). Every send
    # fails alike until an operator has it unlocked, so the message is kept to replay, not failed for good.
    graph.respond(status, graph_error(131031, "Business Account locked", details="account restricted"))
    with pytest.raises(AccountRefused) as info:
        sender.send(message())
    assert info.value.code == "131031"
    assert info.value.message == "account restricted"


# Error bodies of proxies and gateways in front of the Graph API, not shaped like Graph's own.
ODD_ERROR_BODIES = [
    {"error": "Invalid API key"},
    ["not", "an", "object"],
    {"error": {"code": 131026, "message": "undeliverable", "error_data": "no details"}},
    {"error": {"code": {"nested": 1}, "message": "a code that is not a number"}},
    {"error": ["a", "list"]},
]


@pytest.mark.parametrize("status", [400, 503])
@pytest.mark.parametrize("body", ODD_ERROR_BODIES)
def test_an_odd_error_body_is_classified_by_its_status(
    graph: FakeGraph, sender: MetaSender, body: Any, status: int
) -> None:
    graph.respond(status, body)
    with pytest.raises(SendError) as info:
        sender.send(message())
    assert info.value.permanent is (status < 500)


@pytest.mark.parametrize("body", ODD_ERROR_BODIES)
def test_a_typing_indicator_refused_with_an_odd_body_is_a_send_error(
    graph: FakeGraph, sender: MetaSender, body: Any
) -> None:
    # The assistant's typing indicator is best effort: it catches a SendError and replies all the same.
    graph.respond(400, body)
    with pytest.raises(SendError) as info:
        sender.mark_read("wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQzQTg5")
    assert info.value.permanent


def test_a_wrong_token_is_a_permanent_auth_error(graph: FakeGraph) -> None:
    meta = MetaSender(settings(graph.url, token="wrong"))
    with pytest.raises(SendError) as info:
        meta.send(message())
    meta.close()
    assert info.value.permanent
    assert info.value.code == "190"


def test_an_unreachable_graph_is_transient() -> None:
    with FakeGraph(TOKEN) as gone:
        url = gone.url
    meta = MetaSender(settings(url), timeout=2)
    with pytest.raises(SendError) as info:
        meta.send(message())
    meta.close()
    assert not info.value.permanent
    assert info.value.code == "unreachable"
