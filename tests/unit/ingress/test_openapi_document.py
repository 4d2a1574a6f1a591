"""The OpenAPI document covers every route the app serves, is valid OpenAPI 3.1, and /docs renders it as a
self-contained page (no script, nothing fetched from elsewhere) with everything taken from it escaped."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from ingress import create_app
from ingress.openapi import IMPLICIT_METHODS, document, openapi_path
from ingress.openapi_page import render
from ingress.openapi_spec import OPERATIONS
from shared.settings import load_settings

# Flask's own static route (the ingress has none) is no operation of ours.
NOT_OPERATIONS = {"static"}


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app(load_settings(api_keys="unit-key"))


@pytest.fixture(scope="module")
def doc(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def test_every_route_of_the_app_is_documented(app: Flask, doc: dict[str, Any]) -> None:
    served = {
        (method.lower(), openapi_path(rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in NOT_OPERATIONS
        for method in (rule.methods or set()) - IMPLICIT_METHODS
    }
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    missing = sorted(f"{m.upper()} {p}" for m, p in served - documented)
    assert not missing, f"add these routes to ingress/openapi_spec.py OPERATIONS: {missing}"
    assert documented == served  # and nothing documented that the app does not serve
    assert len(served) >= 25  # the webhooks, the health routes and the whole REST API are really there


def test_the_table_has_no_entry_for_a_route_that_does_not_exist(doc: dict[str, Any]) -> None:
    documented = {f"{method.upper()} {path}" for path, item in doc["paths"].items() for method in item}
    assert set(OPERATIONS) - documented == set()


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema, dangling $ref included


def test_every_api_route_requires_the_api_key_and_says_so(doc: dict[str, Any]) -> None:
    scheme = doc["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.startswith("/api/"):
                assert op["security"] == [{"ApiKey": []}], (method, path)
                assert "401" in op["responses"], (method, path)
            else:
                assert "security" not in op, (method, path)


def test_bodies_and_errors_use_the_shared_schemas(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorBody"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    send = doc["paths"]["/api/v1/messages"]["post"]
    assert send["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SendRequest"
    }
    # The request model's own JSON schema, limits included.
    assert schemas["SendRequest"]["additionalProperties"] is False
    assert schemas["SendRequest"]["properties"]["to"]["maxLength"] == 64
    assert {"201", "409", "413", "422"} <= set(doc["paths"]["/api/v1/links"]["post"]["responses"])
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if "requestBody" in op:
                assert "413" in op["responses"], (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400 and path != "/readyz":  # readiness answers its checks either way
                    [media] = response["content"].values()
                    assert media["schema"]["$ref"] in (
                        "#/components/schemas/ErrorBody",
                        "#/components/schemas/LegacyError",
                    ), (method, path, status)


def test_webhooks_document_their_signature_headers_and_bodies(doc: dict[str, Any]) -> None:
    def headers(path: str, method: str = "post") -> set[str]:
        return {p["name"] for p in doc["paths"][path][method]["parameters"] if p["in"] == "header"}

    assert "X-Twilio-Signature" in headers("/webhooks/twilio")
    assert (
        "application/x-www-form-urlencoded"
        in doc["paths"]["/webhooks/twilio"]["post"]["requestBody"]["content"]
    )
    assert "X-Hub-Signature-256" in headers("/webhooks/meta")
    assert {p["name"] for p in doc["paths"]["/webhooks/meta"]["get"]["parameters"]} == {
        "hub.mode",
        "hub.verify_token",
        "hub.challenge",
    }
    assert {"X-Webhook-Signature", "X-Webhook-Event", "X-Webhook-Batch", "X-Idempotency-Key"} <= headers(
        "/webhooks/kapso"
    )
    for path in ("/webhooks/twilio", "/webhooks/meta", "/webhooks/kapso"):
        assert {"403", "503"} <= set(doc["paths"][path]["post"]["responses"])


def test_the_meta_webhook_body_documents_its_entries_and_changes(doc: dict[str, Any]) -> None:
    # The parser takes entries and changes raw to skip odd ones; the document still shows their shape.
    def resolved(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return resolved(doc["components"]["schemas"][ref.rsplit("/", 1)[1]]) if ref else schema

    body = doc["paths"]["/webhooks/meta"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    entry = resolved(resolved(body)["properties"]["entry"]["items"])
    change = resolved(entry["properties"]["changes"]["items"])
    assert {"field", "value"} <= set(change["properties"])


def test_path_parameters_follow_the_flask_converters(doc: dict[str, Any]) -> None:
    [param] = doc["paths"]["/api/v1/conversations/{conversation_id}/close"]["post"]["parameters"]
    assert param["in"] == "path"
    assert param["required"] is True
    assert param["schema"]["type"] == "integer"
    assert param["schema"]["minimum"] == 0
    [phone] = doc["paths"]["/api/v1/sessions/{phone}"]["delete"]["parameters"]
    assert phone["schema"]["type"] == "string"
    assert re.search(phone["schema"]["pattern"], "+15551234567")
    assert not re.search(phone["schema"]["pattern"], "+1555/123")  # a path segment never holds a slash


def test_docs_page_renders_every_operation_without_any_script_or_remote_resource(app: Flask) -> None:
    response = app.test_client().get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "<script" not in page.lower()
    # Links to provider docs are fine; nothing is loaded from elsewhere (stylesheets, images, fonts).
    assert not re.search(r"<(link|img|iframe)\b|@import|url\(", page)
    assert "<style>" in page
    doc = document(app)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert f"{method.upper()} {path}" in page
            assert f'id="op-{op["operationId"]}"' in page
    for name in doc["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert 'href="#schema-SendRequest"' in page
    assert "requires X-API-Key" in page


def test_the_page_escapes_what_it_takes_from_the_document() -> None:
    hostile = {
        "openapi": "3.1.0",
        "info": {"title": "<script>alert(1)</script>", "version": "1"},
        "paths": {
            "/x": {
                "get": {
                    "summary": "<img src=x onerror=alert(1)>",
                    "responses": {"200": {"description": '"><b>bold</b>'}},
                }
            }
        },
    }
    page = render(hostile)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page
    assert "<b>bold</b>" not in page
