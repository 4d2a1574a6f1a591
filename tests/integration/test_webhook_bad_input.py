"""Bad bodies on every webhook: a 4xx JSON error, 403 first when the signature is wrong, nothing enqueued,
and the ingress still serving the next real delivery.

Each bad body is sent three ways: without a signature and with a forged one (403 before the body is read
as an event), then correctly signed, which reaches the parser (its 400, or 413 for an oversized body).
Runs against the Flask app from ``create_app`` with the session's real Redis.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from urllib.parse import parse_qsl

import pytest
import redis
from flask import Flask, url_for
from flask.testing import FlaskClient

from ingress import create_app
from ingress import twilio as twilio_route
from tests.integration.webhook_signing import (
    DATA,
    FORM,
    JSON,
    KAPSO_RECEIVED,
    PROVIDERS,
    forged,
    kapso_body,
    meta_body,
    provider_message_id,
    queue_lengths,
    queued,
    settings,
    signed,
    twilio_form,
    unsigned,
    valid,
)

TEN_MB = 10 * 1024 * 1024
DEEP_ARRAYS = b"[" * 100_000 + b"]" * 100_000
# Twilio refuses a body over twilio_route.MAX_BODY_BYTES unread (413), so its nesting bomb must be smaller
# to reach the JSON parser at all; 5,000 levels still overflow json.loads's recursion.
DEEP_ARRAYS_TWILIO = b"[" * 5_000 + b"]" * 5_000
# The cases whose body nests too deep: each must reach its parser and be refused there as malformed.
NESTING_BOMBS = {"deep_arrays", "deep_inside_payload"}
_rng = random.Random(20260127)
RANDOM_BYTES = [_rng.randbytes(n) for n in (1, 64, 4096)]


def _deep_inside(body: bytes, depth: int = 300) -> bytes:
    """A real payload with one extra field nested ``depth`` levels: parses, but is no webhook we accept."""
    data = json.loads(body)
    data["x"] = "DEEP"
    return json.dumps(data).replace('"DEEP"', "[" * depth + "]" * depth).encode()


def _twilio_json(message_id: str) -> bytes:
    """A real Twilio message as a flat JSON object, which the Twilio webhook accepts as well as a form."""
    return json.dumps(dict(parse_qsl(twilio_form(message_id).decode()))).encode()


def _deep_payload(provider: str) -> bytes:
    real = {"twilio": _twilio_json("SMdeep"), "meta": meta_body("wamid.deep"), "kapso": kapso_body("k.deep")}
    return _deep_inside(real[provider])


# name -> provider -> (body, content type). Every one must be refused with a 4xx.
BodyFor = Callable[[str], tuple[bytes, str | None]]
CASES: dict[str, BodyFor] = {
    "random_bytes_json": lambda p: (RANDOM_BYTES[2], JSON),
    "random_bytes_form": lambda p: (RANDOM_BYTES[1] + b"&\xff=\x00", FORM),
    "random_bytes_no_type": lambda p: (RANDOM_BYTES[0], None),
    "empty_body": lambda p: (b"", JSON),
    "xml_body": lambda p: (
        b'<?xml version="1.0"?><Response><Message>hi</Message></Response>',
        "application/xml",
    ),
    "multipart_garbage": lambda p: (
        b"--x\r\nContent-Disposition: form-data\r\n\r\nhi\r\n",
        "multipart/form-data; boundary=zz",
    ),
    "form_sent_to_json_hook": lambda p: (
        twilio_form("SMform") if p != "twilio" else b"Body=only+a+body",
        FORM,
    ),
    "truncated_json": lambda p: (
        (meta_body("wamid.trunc") if p == "meta" else kapso_body("k.trunc"))[:57],
        JSON,
    ),
    "json_array": lambda p: (b"[1, 2, 3]", JSON),
    "json_string": lambda p: (b'"entry"', JSON),
    "deep_arrays": lambda p: (DEEP_ARRAYS_TWILIO if p == "twilio" else DEEP_ARRAYS, JSON),
    "deep_inside_payload": lambda p: (_deep_payload(p), JSON),
    "invalid_utf8_json": lambda p: (b'{"entry": [{"id": "\xff\xfe\xc3\x28"}], "MessageSid": "\xff"}', JSON),
    "invalid_utf8_form": lambda p: (b"From=\xff\xfe&To=\xc3\x28&Body=%FF%FE", FORM),
    "nan_and_huge_numbers": lambda p: (
        b'{"entry": NaN, "data": 1e999999, "MessageSid": ' + b"9" * 5000 + b"}",
        JSON,
    ),
    "missing_fields": lambda p: {
        "twilio": ((DATA / "twilio" / "malformed_no_sid.txt").read_bytes(), FORM),
        "meta": (b'{"object": "whatsapp_business_account"}', JSON),
        "kapso": (b'{"batch": true, "phone_number_id": "597907523413541"}', JSON),
    }[p],
    "wrong_types": lambda p: {
        "twilio": (b'{"MessageSid": ["SM1"], "From": {"a": 1}, "To": null}', JSON),
        "meta": (b'{"object": "whatsapp_business_account", "entry": {"changes": []}}', JSON),
        "kapso": (b'{"batch": true, "data": "not a list"}', JSON),
    }[p],
}


@pytest.fixture
def app(redis_client: redis.Redis) -> Flask:
    return create_app(settings())


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _assert_json_error(response: object, statuses: set[int]) -> str:
    status = response.status_code  # type: ignore[attr-defined]
    body = response.get_json(silent=True)  # type: ignore[attr-defined]
    assert status in statuses, (status, response.get_data()[:300])  # type: ignore[attr-defined]
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), dict)
    assert body["error"]["code"]
    assert body["error"]["message"]
    return body["error"]["code"]


def _assert_nothing_enqueued(redis_client: redis.Redis) -> None:
    assert queue_lengths(redis_client) == {"inbound": 0, "status": 0}
    assert list(redis_client.scan_iter("seen*")) == []


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_body_is_a_4xx_json_error_and_nothing_is_enqueued(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, provider: str, case: str
) -> None:
    body, content_type = CASES[case](provider)
    request = signed(app, provider, body, content_type)

    # Without a signature, or with one from the wrong secret: refused before the body is looked at.
    code = _assert_json_error(unsigned(request).send(client), {403})
    assert code.startswith("signature_")
    # A body larger than any Twilio sends cannot be checked without parsing it: refused unparsed (413), as a
    # body over WAPIPE_MAX_BODY_BYTES is for every provider.
    too_large = provider == "twilio" and len(body) > twilio_route.MAX_BODY_BYTES
    code = _assert_json_error(forged(request).send(client), {413} if too_large else {403})
    assert code == "request_entity_too_large" if too_large else code.startswith("signature_")

    # Correctly signed: the parser's own refusal, never a 5xx.
    if case in NESTING_BOMBS:
        # Refused by the parser for its depth (malformed_json, or Twilio's malformed_payload): not unread
        # for its size, nor taken for the real message around it with the deep field dropped.
        code = _assert_json_error(request.send(client), {400})
        assert code in {"malformed_json", "malformed_payload"}
    else:
        _assert_json_error(request.send(client), {400, 413, 415, 422})
    _assert_nothing_enqueued(redis_client)

    # And the next real delivery goes through as usual.
    response = valid(app, provider, f"after-{case}").send(client)
    assert response.status_code == 200, response.get_data()
    assert [job["event"]["provider_message_id"] for job in queued(redis_client, "inbound")] == [
        provider_message_id(provider, f"after-{case}")
    ]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_ten_megabyte_body_is_a_413_json_error(
    app: Flask, client: FlaskClient, redis_client: redis.Redis, provider: str
) -> None:
    padding = b" " * TEN_MB
    body, content_type = (
        (twilio_form("SMbig") + b"&Pad=" + b"x" * TEN_MB, FORM)
        if provider == "twilio"
        else (
            (meta_body("wamid.big") if provider == "meta" else kapso_body("k.big"))[:-1] + padding + b"}",
            JSON,
        )
    )
    request = signed(app, provider, body, content_type)
    # Unsigned or forged: a 403, or the 413 when the size alone is refused before anything is read.
    for bad in (unsigned(request), forged(request)):
        _assert_json_error(bad.send(client), {403, 413})
    assert _assert_json_error(request.send(client), {413}) == "request_entity_too_large"
    _assert_nothing_enqueued(redis_client)
    assert valid(app, provider, "after-big").send(client).status_code == 200
    assert queue_lengths(redis_client)["inbound"] == 1


def test_item_level_garbage_is_acknowledged_but_nothing_is_enqueued(
    app: Flask, client: FlaskClient, redis_client: redis.Redis
) -> None:
    """A well-formed envelope whose items are unusable (no message id, no business number, wrong types) is
    answered 200: retrying cannot repair it, and a 4xx would make Meta redeliver it for days and Kapso
    for about a minute (deploy/README.md, "Redis").
    Nothing is enqueued for those items, and the good message beside them still is (one odd contact or
    status used to drop the whole Meta ``value``, good message included, behind a 200)."""
    meta = json.loads(meta_body("wamid.good"))
    value = meta["entry"][0]["changes"][0]["value"]
    value["messages"].append({"type": "text", "text": {"body": "no id"}})
    value["statuses"] = [{"status": "delivered"}, 7, None]
    value["contacts"].append({"profile": "not an object"})
    value["errors"] = [{"code": "not a number"}]
    kapso = {
        "batch": True,
        "data": [
            {"message": {"type": "text"}},
            json.loads(kapso_body("k.good")),
            "x",
            {"message": {"id": "no-business"}},
        ],
    }
    for provider, body in (("meta", meta), ("kapso", kapso)):
        request = signed(app, provider, json.dumps(body).encode(), JSON)
        if provider == "kapso":
            request.headers["X-Webhook-Batch"] = "true"
            request.headers["X-Webhook-Event"] = KAPSO_RECEIVED
        assert request.send(client).status_code == 200
    ids = [job["event"]["provider_message_id"] for job in queued(redis_client, "inbound")]
    assert ids == ["wamid.good", "k.good"]
    assert queue_lengths(redis_client)["status"] == 0


# A valid value for each path argument of an API route, so a request is judged on its body, not its path.
PATH_VALUES = {
    "number": "+14155550100",
    "conversation_id": 1,
    "message_id": 1,
    "user_id": "00000000-0000-4000-8000-000000000001",
    "phone": "+14155550100",
}
# POST routes that read no body: a nesting bomb sent to them is never parsed.
BODYLESS_ROUTES = {"conversations_api.close"}


def test_deeply_nested_api_bodies_are_4xx(client: FlaskClient, app: Flask, clean: None) -> None:
    """The same nesting bomb on every JSON API route that takes a body: refused as a bad body, never a 500.

    A bomb that parsed (the depth limit gone) would be judged by its fields instead, and the 500-deep one
    under "a" does parse: the error must name the body as a whole."""
    routes = [
        (rule, method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/") and rule.endpoint not in BODYLESS_ROUTES
        for method in sorted((rule.methods or set()) & {"POST", "PUT", "PATCH"})
    ]
    assert routes, "no API route takes a body?"
    for rule, method in routes:
        with app.test_request_context():
            path = url_for(rule.endpoint, **{name: PATH_VALUES[name] for name in rule.arguments})
        for body in (DEEP_ARRAYS, b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}"):
            response = client.open(
                path,
                method=method,
                data=body,
                content_type=JSON,
                headers={"X-API-Key": settings().api_keys[0].get_secret_value()},
            )
            where = (method, path, response.status_code, response.get_data()[:200])
            assert response.status_code == 422, where
            error = response.get_json()["error"]
            assert error["code"] == "validation_error", where
            assert error["message"].startswith("body:"), where
            assert error.get("field", "body") == "body", where


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/webhooks/twilio/", 404, "not_found"),
        ("POST", "/webhooks/meta/extra", 404, "not_found"),
        ("POST", "/webhooks/whatsapp", 404, "not_found"),
        ("GET", "/api/v1/no-such-area", 404, "not_found"),
        ("PUT", "/webhooks/meta", 405, "method_not_allowed"),
        ("GET", "/webhooks/kapso", 405, "method_not_allowed"),
        ("DELETE", "/api/v1/messages", 405, "method_not_allowed"),
        ("PATCH", "/api/v1/links/verify", 405, "method_not_allowed"),
    ],
)
def test_an_unknown_route_or_method_is_a_json_error_like_the_apis_others(
    client: FlaskClient, redis_client: redis.Redis, method: str, path: str, status: int, code: str
) -> None:
    # Flask's own answers here are HTML; the house rule is a 4xx with the API's JSON error everywhere.
    response = client.open(path, method=method, data=b"{}", content_type=JSON)
    assert _assert_json_error(response, {status}) == code
    assert response.mimetype == "application/json"
    if status == 405:
        assert "POST" in response.headers["Allow"]
    _assert_nothing_enqueued(redis_client)
