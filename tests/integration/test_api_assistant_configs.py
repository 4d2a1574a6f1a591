"""``GET|PUT /api/v1/assistant-configs/{number}`` against real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from flask.testing import FlaskClient

from ingress import create_app
from shared.db import assistant_configs
from shared.settings import load_settings

KEY = {"X-API-Key": "assistant-test-key"}
URL = "/api/v1/assistant-configs/"


@pytest.fixture
def client(clean: None) -> FlaskClient:
    return create_app(load_settings(api_keys="assistant-test-key")).test_client()


def test_get_is_404_until_a_put_creates_the_config(client: FlaskClient, db: psycopg.Connection) -> None:
    missing = client.get(URL + "+14155238886", headers=KEY)
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "not_found"

    body = {
        "system_prompt": "You are the shop's helper.",
        "model": "gpt-4o",
        "max_tokens": 500,
        "temperature": 0.7,
    }
    saved = client.put(URL + "+14155238886", headers=KEY, json=body)

    assert saved.status_code == 200
    assert {key: saved.get_json()[key] for key in body} == body
    assert saved.get_json()["business_number"] == "+14155238886"
    fetched = client.get(URL + "+14155238886", headers=KEY)
    assert fetched.status_code == 200
    assert fetched.get_json() == saved.get_json()
    # What the ai worker reads.
    stored = assistant_configs.get(db, "+14155238886")
    assert stored is not None
    assert stored.max_tokens == 500
    assert stored.temperature == 0.7


def test_put_replaces_the_whole_config_and_fills_defaults(
    client: FlaskClient, db: psycopg.Connection
) -> None:
    client.put(
        URL + "+14155238886",
        headers=KEY,
        json={"system_prompt": "v1", "model": "gpt-4o", "max_tokens": 900, "temperature": 1.5},
    )
    # The same number written another way is the same config.
    replaced = client.put(URL + "+1%20415%20523%208886", headers=KEY, json={"system_prompt": "v2"})

    assert replaced.status_code == 200
    body = replaced.get_json()
    assert body["system_prompt"] == "v2"
    assert (body["model"], body["max_tokens"], body["temperature"]) == (None, 300, 0.3)
    assert db.execute("SELECT count(*) AS n FROM assistant_configs").fetchone()["n"] == 1


def test_meta_phone_number_ids_are_keys_as_they_are(client: FlaskClient) -> None:
    saved = client.put(
        URL + "106540352242922", headers=KEY, json={"system_prompt": "hola", "max_tokens": 4096}
    )
    assert saved.status_code == 200
    assert saved.get_json()["business_number"] == "106540352242922"
    assert client.get(URL + "106540352242922", headers=KEY).get_json()["max_tokens"] == 4096
    assert client.get(URL + "+14155238886", headers=KEY).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"system_prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"system_prompt": "x", "max_tokens": 4097}, "max_tokens"),
        ({"system_prompt": "x", "max_tokens": "300"}, "max_tokens"),
        ({"system_prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"system_prompt": "x", "temperature": 2.5}, "temperature"),
        ({"system_prompt": "x", "temperature": -0.1}, "temperature"),
        ({"system_prompt": ""}, "system_prompt"),
        ({"max_tokens": 100}, "system_prompt"),
        ({"system_prompt": "x", "max_token": 100}, "max_token"),
        # PostgreSQL text cannot hold U+0000: refused here, not a 500 when the row is written.
        ({"system_prompt": "a\u0000"}, "system_prompt"),
        ({"system_prompt": "x", "model": "gpt\u0000"}, "model"),
        ({"system_prompt": "\ud800"}, "system_prompt"),
    ],
)
def test_put_rejects_invalid_values_with_422_naming_the_field(
    client: FlaskClient, db: psycopg.Connection, body: dict[str, object], field: str
) -> None:
    response = client.put(URL + "+14155238886", headers=KEY, json=body)

    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith(f"{field}:")
    assert error["field"] == field
    assert db.execute("SELECT count(*) AS n FROM assistant_configs").fetchone()["n"] == 0


def test_put_rejects_a_body_that_is_not_json_and_a_malformed_number(client: FlaskClient) -> None:
    not_json = client.put(URL + "+14155238886", headers=KEY, data="system_prompt=x")
    assert not_json.status_code == 422
    assert not_json.get_json()["error"]["message"] == "body: Content-Type must be application/json"
    for raw, says in (
        (b'{"system_prompt": ', "body: not valid JSON"),
        (b'["system_prompt"]', "body: must be a JSON object"),
        (b'{"max_tokens": ' + b"9" * 5_000 + b"}", "body: a number longer than"),
    ):
        response = client.put(URL + "+14155238886", headers=KEY, data=raw, content_type="application/json")
        assert response.status_code == 422
        assert response.get_json()["error"]["message"].startswith(says)
        assert response.get_json()["error"]["field"] == "body"
    # "١٢٣٤٥٦٧٨٩٠": Arabic-Indic digits, a phone_number_id no message can ever carry.
    for number in ("shop-one", "+1", "+999999999999999999", "١٢٣٤٥٦٧٨٩٠"):
        response = client.get(URL + number, headers=KEY)
        assert response.status_code == 422, number
        assert response.get_json()["error"]["message"].startswith("number:")
        assert response.get_json()["error"]["field"] == "number"
