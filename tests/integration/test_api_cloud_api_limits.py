"""The notify API with Meta or Kapso active: an interactive message past one of WhatsApp's limits is a 422
naming the field, with nothing stored; one at every limit is accepted and the Cloud API sender sends it.

Limits: https://developers.facebook.com/docs/whatsapp/cloud-api/messages/interactive-reply-buttons-messages
and https://developers.facebook.com/docs/whatsapp/cloud-api/messages/interactive-list-messages
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from flask.testing import FlaskClient

from ingress import create_app
from shared.providers.base import OutboundMessage
from shared.providers.kapso.client import KapsoSender
from shared.providers.meta.client import CloudApiSender, MetaSender
from shared.settings import Settings, load_settings
from tests.fakes.meta_graph import FakeGraph
from tests.integration.test_inbound_routing import queued

KEY = "notify-api-key"
TOKEN = "EAAG-test-token"
PHONE_NUMBER_ID = "106540352242922"
TO = "+573103055424"


def cloud_api_settings(provider: str, graph_url: str) -> Settings:
    if provider == "meta":
        credentials: dict[str, Any] = {
            "meta_access_token": TOKEN,
            "meta_phone_number_id": PHONE_NUMBER_ID,
            "meta_graph_url": graph_url,
        }
    else:
        credentials = {
            "kapso_api_key": TOKEN,
            "kapso_phone_number_id": PHONE_NUMBER_ID,
            "kapso_api_url": graph_url,
        }
    return load_settings(api_keys=KEY, default_region="CO", provider=provider, **credentials)


@pytest.fixture(params=["meta", "kapso"])
def provider(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def graph(provider: str) -> Iterator[FakeGraph]:
    with FakeGraph(TOKEN, api_key=provider == "kapso") as fake:
        yield fake


@pytest.fixture
def settings(provider: str, graph: FakeGraph) -> Settings:
    return cloud_api_settings(provider, graph.url)


@pytest.fixture
def client(db: psycopg.Connection, redis_client: redis.Redis, settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def post(client: FlaskClient, interactive: dict[str, Any]) -> Any:
    body = {"to": TO, "type": "interactive", "interactive": interactive}
    return client.post("/api/v1/messages", json=body, headers={"X-API-Key": KEY})


def buttons(**fields: Any) -> dict[str, Any]:
    """Reply buttons with every text at WhatsApp's limit; ``fields`` replace parts of it."""
    return {
        "kind": "buttons",
        "header": "h" * 60,
        "body": "b" * 1024,
        "footer": "f" * 60,
        "buttons": [{"id": f"{n}" + "i" * 255, "title": f"{n}" + "t" * 19} for n in range(3)],
    } | fields


def a_list(**fields: Any) -> dict[str, Any]:
    """A list with every text at WhatsApp's limit and its 10 rows over 10 titled sections."""
    sections = [
        {
            "title": f"{n}" + "s" * 23,
            "rows": [{"id": f"{n}" + "r" * 199, "title": f"{n}" + "t" * 23, "description": "d" * 72}],
        }
        for n in range(10)
    ]
    return {
        "kind": "list",
        "header": "h" * 60,
        "body": "b" * 1024,
        "footer": "f" * 60,
        "button_text": "o" * 20,
        "sections": sections,
    } | fields


def row(**fields: Any) -> dict[str, Any]:
    return {"id": "r1", "title": "Row"} | fields


OVER_BY_ONE = [
    (buttons(header="h" * 61), "interactive.header"),
    (buttons(body="b" * 1025), "interactive.body"),
    (buttons(footer="f" * 61), "interactive.footer"),
    (buttons(buttons=[{"id": "a", "title": "t" * 21}]), "interactive.buttons[0].title"),
    (buttons(buttons=[{"id": "i" * 257, "title": "A"}]), "interactive.buttons[0].id"),
    (buttons(buttons=[{"id": f"{n}", "title": f"B{n}"} for n in range(4)]), "interactive.buttons"),
    (a_list(button_text="o" * 21), "interactive.button_text"),
    (a_list(sections=[{"title": "s" * 25, "rows": [row()]}]), "interactive.sections[0].title"),
    (a_list(sections=[{"rows": [row(title="t" * 25)]}]), "interactive.sections[0].rows[0].title"),
    (a_list(sections=[{"rows": [row(description="d" * 73)]}]), "interactive.sections[0].rows[0].description"),
    (a_list(sections=[{"rows": [row(id="r" * 201)]}]), "interactive.sections[0].rows[0].id"),
    (
        a_list(sections=[{"title": f"S{n}", "rows": [row(id=f"{n}")]} for n in range(11)]),
        "interactive.sections",
    ),
    (
        a_list(sections=[{"title": "S", "rows": [row(id=f"{n}") for n in range(11)]}]),
        "interactive.sections[0].rows",
    ),
    (
        a_list(sections=[{"title": "A", "rows": [row(id="1")]}, {"rows": [row(id="2")]}]),
        "interactive.sections",
    ),
]


@pytest.mark.parametrize(("interactive", "field"), OVER_BY_ONE, ids=[field for _, field in OVER_BY_ONE])
def test_past_a_limit_is_a_422_naming_the_field_and_nothing_is_stored(
    client: FlaskClient, db, redis_client, interactive: dict[str, Any], field: str
) -> None:
    response = post(client, interactive)

    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["field"] == field
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0
    assert queued(redis_client, "notify") == []


@pytest.mark.parametrize("interactive", [buttons(), a_list()], ids=["buttons", "list"])
def test_at_every_limit_it_is_accepted_and_the_cloud_api_sender_sends_it(
    client: FlaskClient, db, graph: FakeGraph, settings: Settings, provider: str, interactive: dict[str, Any]
) -> None:
    response = post(client, interactive)

    assert response.status_code == 202, response.get_json()
    stored = db.execute("SELECT * FROM messages WHERE id = %s", (response.get_json()["id"],)).fetchone()
    message = OutboundMessage.from_record(
        id=stored["id"],
        to=TO,
        type=stored["type"],
        body=stored["body"],
        payload=stored["payload"],
        from_number=None,
    )
    sender: CloudApiSender = MetaSender(settings) if provider == "meta" else KapsoSender(settings)
    try:
        assert sender.send(message).provider_message_id.startswith("wamid.")
    finally:
        sender.close()
    [request] = graph.received
    assert request.json["interactive"]["body"]["text"] == "b" * 1024


def post_template(client: FlaskClient, variables: list[str] | dict[str, str]) -> Any:
    template = {"name": "ticket_assigned", "language": "es", "variables": variables}
    body = {"to": TO, "type": "template", "template": template}
    return client.post("/api/v1/messages", json=body, headers={"X-API-Key": KEY})


# WhatsApp refuses such a parameter with error 132018, "Param text cannot have new-line/tab characters or
# more than 4 consecutive spaces", whatever the approved template says.
REFUSED_PARAMETERS = [
    (["42", "line one\nline two"], "template.variables[1]"),
    (["a\r\nb"], "template.variables[0]"),
    (["tab\there"], "template.variables[0]"),
    (["five     spaces"], "template.variables[0]"),
    ({"ticket": "42", "note": "line one\nline two"}, "template.variables"),
]


@pytest.mark.parametrize(("variables", "field"), REFUSED_PARAMETERS, ids=lambda v: None)
def test_a_template_parameter_whatsapp_refuses_is_a_422_and_nothing_is_stored(
    client: FlaskClient, db, redis_client, variables: list[str] | dict[str, str], field: str
) -> None:
    response = post_template(client, variables)

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == field
    assert "new line" in error["message"] or "spaces" in error["message"]
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0
    assert queued(redis_client, "notify") == []


def test_a_template_parameter_with_four_spaces_in_a_row_is_sent(
    client: FlaskClient, graph: FakeGraph, settings: Settings, provider: str, db
) -> None:
    response = post_template(client, ["four    spaces", "one line"])

    assert response.status_code == 202, response.get_json()
    stored = db.execute("SELECT * FROM messages WHERE id = %s", (response.get_json()["id"],)).fetchone()
    message = OutboundMessage.from_record(
        id=stored["id"],
        to=TO,
        type=stored["type"],
        body=stored["body"],
        payload=stored["payload"],
        from_number=None,
    )
    sender: CloudApiSender = MetaSender(settings) if provider == "meta" else KapsoSender(settings)
    try:
        sender.send(message)
    finally:
        sender.close()
    [request] = graph.received
    parameters = request.json["template"]["components"][0]["parameters"]
    assert [p["text"] for p in parameters] == ["four    spaces", "one line"]
