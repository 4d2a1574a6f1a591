"""The Kapso sender speaks the Cloud API through Kapso's proxy with X-API-Key (fake proxy on 127.0.0.1)."""

from __future__ import annotations

import pytest

from shared.providers import get_sender
from shared.providers.base import OutboundMessage, SendError
from shared.providers.kapso.client import KapsoSender
from shared.settings import Settings, load_settings
from tests.fakes.meta_graph import FakeGraph, graph_error

KEY = "kapso-project-key"
PHONE_NUMBER_ID = "597907523413541"


def settings(url: str, key: str = KEY) -> Settings:
    return load_settings(
        provider="kapso", kapso_api_key=key, kapso_phone_number_id=PHONE_NUMBER_ID, kapso_api_url=url
    )


def message() -> OutboundMessage:
    return OutboundMessage(id=1, to="+573103055424", text="Hola desde Kapso")


def test_text_goes_through_the_proxy_with_the_api_key() -> None:
    with FakeGraph(KEY, version="v24.0", api_key=True) as proxy:
        sender = get_sender(settings(proxy.url))
        assert isinstance(sender, KapsoSender)
        result = sender.send(message())
    assert result.provider == "kapso"
    assert result.provider_message_id.startswith("wamid.")
    [request] = proxy.received
    assert request.path == f"/v24.0/{PHONE_NUMBER_ID}/messages"
    assert request.headers["X-API-Key"] == KEY
    assert "Authorization" not in request.headers
    assert request.json["text"]["body"] == "Hola desde Kapso"


def test_errors_are_classified_like_metas() -> None:
    with FakeGraph(KEY, api_key=True) as proxy:
        sender = KapsoSender(settings(proxy.url))
        proxy.respond(429, graph_error(130429, "Rate limit hit"), {"Retry-After": "3"})
        with pytest.raises(SendError) as info:
            sender.send(message())
        assert not info.value.permanent
        assert info.value.retry_after == 3.0
        with pytest.raises(SendError) as info:
            KapsoSender(settings(proxy.url, key="wrong")).send(message())
        assert info.value.permanent


def test_missing_credentials_are_refused() -> None:
    with pytest.raises(SendError) as info:
        KapsoSender(load_settings(provider="kapso"))
    assert info.value.code == "not_configured"
