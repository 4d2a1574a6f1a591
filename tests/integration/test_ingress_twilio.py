"""POST /webhooks/twilio against real Redis: signatures, enqueueing, duplicates, broker outages."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from twilio.request_validator import RequestValidator

from ingress import create_app
from ingress import twilio as twilio_route
from shared.settings import load_settings
from shared.wire.twilio import parse

DATA = Path(__file__).resolve().parents[1] / "data" / "twilio"
TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC_URL = "https://hooks.example.com"
URL = PUBLIC_URL + "/webhooks/twilio"
FORM = "application/x-www-form-urlencoded"
TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def make_app(**overrides: object) -> Flask:
    settings = {"twilio_auth_token": TOKEN, "public_url": PUBLIC_URL, **overrides}
    return create_app(load_settings(**settings))


@pytest.fixture
def client(redis_client: redis.Redis) -> FlaskClient:
    return make_app().test_client()


def body(name: str) -> str:
    return (DATA / name).read_text()


def signed_headers(raw_body: str, url: str = URL, token: str = TOKEN) -> dict[str, str]:
    params = dict(parse_qsl(raw_body, keep_blank_values=True))
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}


def post(client: FlaskClient, raw_body: str, headers: dict[str, str], path: str = "/webhooks/twilio"):
    return client.post(path, data=raw_body, content_type=FORM, headers=headers)


def queued_events(r: redis.Redis, queue: str) -> list[dict]:
    """The ``event`` kwarg of every Celery message on the queue, oldest first."""
    events = []
    for raw in reversed(r.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        assert envelope["headers"]["task"] == f"{queue}.{'route' if queue == 'inbound' else 'apply'}"
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        assert args == []
        events.append(kwargs["event"])
    return events


def test_get_says_hello(client: FlaskClient) -> None:
    response = client.get("/webhooks/twilio")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "service": "whatsapp-webhook", "provider": "twilio"}


def test_signed_message_is_enqueued_once_as_canonical_event(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    raw = body("inbound_text.txt")
    response = post(client, raw, signed_headers(raw))
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert response.data == TWIML

    [event] = queued_events(redis_client, "inbound")
    expected = parse(dict(parse_qsl(raw, keep_blank_values=True))).model_dump(mode="json")
    expected.pop("sent_at")
    assert event.pop("sent_at")
    assert event == expected
    assert event["sender_phone"] == "+15551234567"
    assert redis_client.llen("status") == 0


def test_same_message_sid_three_times_enqueues_once(client: FlaskClient, redis_client: redis.Redis) -> None:
    raw = body("inbound_media.txt")
    for _ in range(3):
        response = post(client, raw, signed_headers(raw))
        assert response.status_code == 200
        assert response.data == TWIML
    assert redis_client.llen("inbound") == 1


@pytest.mark.parametrize("channel", ["", "messenger:", "rcs:"])
def test_a_message_of_another_channel_is_acknowledged_and_not_enqueued(
    client: FlaskClient, redis_client: redis.Redis, channel: str
) -> None:
    # A Twilio number can take SMS (or Messenger, RCS) on the same webhook URL: answering those would mean
    # WhatsApp replies to people who wrote by SMS. Acknowledged, so Twilio neither retries nor logs 11200.
    raw = body("inbound_text.txt").replace("whatsapp%3A", channel.replace(":", "%3A"))
    assert "whatsapp" not in raw
    response = post(client, raw, signed_headers(raw))
    assert response.status_code == 200
    assert response.data == TWIML
    assert redis_client.llen("inbound") == 0


def test_status_callback_goes_to_status_queue(client: FlaskClient, redis_client: redis.Redis) -> None:
    raw = body("status_failed.txt")
    assert post(client, raw, signed_headers(raw)).status_code == 200
    [event] = queued_events(redis_client, "status")
    assert (event["status"], event["error_code"]) == ("failed", "63016")
    assert redis_client.llen("inbound") == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Twilio-Signature": ""},
        {"X-Twilio-Signature": "bm90IHRoZSByaWdodCBzaWduYXR1cmU="},
    ],
    ids=["missing", "empty", "garbage"],
)
def test_missing_or_forged_signature_is_403_and_nothing_enqueued(
    client: FlaskClient, redis_client: redis.Redis, headers: dict[str, str]
) -> None:
    response = post(client, body("inbound_text.txt"), headers)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"].startswith("signature_")
    assert redis_client.dbsize() == 0


@pytest.fixture
def parsed_forms(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every body the Twilio route parses as a form."""
    sizes: list[int] = []
    parse_form = twilio_route.form_pairs

    def spy(raw: bytes) -> list[tuple[str, str]]:
        sizes.append(len(raw))
        return parse_form(raw)

    monkeypatch.setattr(twilio_route, "form_pairs", spy)
    return sizes


@pytest.mark.parametrize("signature", [None, "forged"], ids=["unsigned", "forged"])
def test_a_body_larger_than_twilio_sends_is_refused_unparsed(
    client: FlaskClient, redis_client: redis.Redis, parsed_forms: list[int], signature: str | None
) -> None:
    # A 3 MB form of empty fields cost 0.3 s of CPU and 140 MB to parse, before the 403.
    huge = "a=&" * (twilio_route.MAX_BODY_BYTES // 3 + 1)
    headers = {} if signature is None else {"X-Twilio-Signature": signature}

    response = post(client, huge, headers)

    assert response.status_code == (403 if signature is None else 413)
    assert response.get_json()["error"]["code"] in ("signature_missing", "request_entity_too_large")
    assert parsed_forms == []
    assert redis_client.dbsize() == 0


def test_the_longest_message_twilio_sends_is_accepted(
    client: FlaskClient, redis_client: redis.Redis, parsed_forms: list[int]
) -> None:
    # 4,096 characters of 4-byte UTF-8, each percent-encoded: the largest Body a message can have.
    params = dict(parse_qsl(body("inbound_text.txt"), keep_blank_values=True))
    params["Body"] = "\U0001f600" * 4096
    raw = urlencode(params)

    response = post(client, raw, signed_headers(raw))

    assert response.status_code == 200
    assert parsed_forms == [len(raw)]
    [event] = queued_events(redis_client, "inbound")
    assert event["text"] == params["Body"]


@pytest.mark.parametrize("signed", [False, True], ids=["forged", "signed"])
def test_a_form_of_more_fields_than_twilio_sends_is_refused_unparsed(
    client: FlaskClient, redis_client: redis.Redis, parsed_forms: list[int], signed: bool
) -> None:
    # Within the byte limit, but 25,000 distinct tiny fields: parsing and sorting them for the signature
    # cost ~55 ms of CPU before the 403.
    raw = body("inbound_text.txt") + "".join(f"&{index:x}" for index in range(25_000))
    assert len(raw) < twilio_route.MAX_BODY_BYTES
    headers = signed_headers(raw) if signed else {"X-Twilio-Signature": "forged"}

    response = post(client, raw, headers)

    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"
    assert "fields" in response.get_json()["error"]["message"]
    assert parsed_forms == []
    assert redis_client.dbsize() == 0


def largest_webhook() -> dict[str, str]:
    """A WhatsApp message with every field Twilio may send at its longest: ten media items, a referral from
    an ad, a quoted message, a location, a button, the sender's and recipient's geography, and the longest
    text (https://www.twilio.com/docs/messaging/guides/webhook-request)."""
    params = dict(parse_qsl(body("inbound_media.txt"), keep_blank_values=True))
    sid, account = params["MessageSid"], params["AccountSid"]
    media = f"https://api.twilio.com/2010-04-01/Accounts/{account}/Messages/{sid}/Media/ME{'0' * 32}"
    params |= {"NumMedia": "10", "MessagingServiceSid": "MG" + "0" * 32, "Body": "\U0001f600" * 4096}
    for index in range(10):
        params |= {f"MediaUrl{index}": media, f"MediaContentType{index}": "application/vnd.ms-excel"}
    # Far longer than WhatsApp allows (a profile name is at most 25 characters, a button's text 20), each
    # character six bytes once percent-encoded.
    params |= {
        name: "\u00e9" * 256
        for name in (
            "ReferralHeadline", "ReferralSourceId", "ReferralSourceType", "ReferralSourceUrl",
            "ReferralMediaId", "ReferralMediaContentType", "ReferralMediaUrl", "ReferralCtwaClid",
            "ButtonText", "ButtonPayload", "ListId", "ListTitle", "Address", "Label", "ProfileName",
        )
    }  # fmt: skip
    params |= {name: "\u00e9" * 1024 for name in ("ReferralBody", "ChannelMetadata", "InteractiveData")}
    params |= {
        "ReferralNumMedia": "1",
        "OriginalRepliedMessageSender": "whatsapp:+14155238886",
        "OriginalRepliedMessageSid": "SM" + "1" * 32,
        "Forwarded": "true",
        "FrequentlyForwarded": "true",
        "Latitude": "4.6097",
        "Longitude": "-74.0817",
        **{f"{end}{part}": "San Francisco" for end in ("From", "To") for part in ("City", "State", "Zip")},
        "FromCountry": "US",
        "ToCountry": "US",
    }
    return params


def test_the_largest_webhook_twilio_sends_is_accepted(
    client: FlaskClient, redis_client: redis.Redis, parsed_forms: list[int]
) -> None:
    params = largest_webhook()
    raw = urlencode(params)

    response = post(client, raw, signed_headers(raw))

    assert response.status_code == 200
    assert parsed_forms == [len(raw)]
    [event] = queued_events(redis_client, "inbound")
    assert len(event["media"]) == 10


def test_signature_by_another_token_or_for_another_body_is_refused(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    raw = body("inbound_text.txt")
    assert post(client, raw, signed_headers(raw, token="f" * 32)).status_code == 403
    # A replayed signature with the body altered (a different text) must not pass either.
    tampered = raw.replace("Body=Hola", "Body=Adios")
    assert post(client, tampered, signed_headers(raw)).status_code == 403
    assert redis_client.dbsize() == 0


def test_url_comes_from_public_url_not_host_header(client: FlaskClient, redis_client: redis.Redis) -> None:
    raw = body("inbound_text.txt")
    # Signed for the Host the request claims, not for WAPIPE_PUBLIC_URL: refused.
    headers = signed_headers(raw, url="https://attacker.example/webhooks/twilio")
    headers["Host"] = "attacker.example"
    assert post(client, raw, headers).status_code == 403
    # Signed for the public URL, whatever Host the proxy passes on: accepted.
    good = signed_headers(raw) | {"Host": "10.0.0.7:8000"}
    assert post(client, raw, good).status_code == 200
    assert redis_client.llen("inbound") == 1


def test_query_string_and_default_port_variants(redis_client: redis.Redis) -> None:
    client = make_app().test_client()
    raw = body("inbound_button.txt")
    url = "https://hooks.example.com:443/webhooks/twilio?tenant=acme"
    response = post(client, raw, signed_headers(raw, url=url), path="/webhooks/twilio?tenant=acme")
    assert response.status_code == 200
    assert redis_client.llen("inbound") == 1


@pytest.mark.parametrize(
    ("name", "query"),
    [("inbound_text.txt", ""), ("status_delivered.txt", "?wapipe_message=42")],
    ids=["message", "status"],
)
def test_a_signature_over_the_url_with_our_retry_fragment_is_accepted_and_another_fragment_is_not(
    client: FlaskClient, redis_client: redis.Redis, name: str, query: str
) -> None:
    # Our webhook URLs carry Twilio's retry overrides as a fragment, which never reaches us: a signature
    # over the URL we saw or over it with exactly that fragment is Twilio's; any other fragment is not.
    raw = body(name)
    path = "/webhooks/twilio" + query
    url = PUBLIC_URL + path
    assert post(client, raw, signed_headers(raw, url=url + "#rc=1"), path).status_code == 403
    assert post(client, raw, signed_headers(raw, url=url + "#rc=5&rp=5xx,ct"), path).status_code == 403
    assert redis_client.dbsize() == 0

    assert post(client, raw, signed_headers(raw, url=url + "#rc=5&rp=5xx,ct,rt"), path).status_code == 200
    assert post(client, raw, signed_headers(raw, url=url), path).status_code == 200
    queue = "inbound" if name.startswith("inbound") else "status"
    assert redis_client.llen(queue) == 1  # the second is Twilio's retry of the first: a duplicate


def test_no_auth_token_refuses_everything(redis_client: redis.Redis) -> None:
    client = make_app(twilio_auth_token=None).test_client()
    raw = body("inbound_text.txt")
    response = post(client, raw, signed_headers(raw))
    assert response.status_code == 403
    assert "TWILIO_AUTH_TOKEN" in response.get_json()["error"]["message"]
    assert redis_client.dbsize() == 0


def test_insecure_mode_skips_the_check(redis_client: redis.Redis) -> None:
    client = make_app(twilio_auth_token=None, insecure_skip_signatures=True).test_client()
    assert post(client, body("inbound_text.txt"), {}).status_code == 200
    assert redis_client.llen("inbound") == 1


def test_malformed_payload_is_400_and_nothing_enqueued(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    raw = body("malformed_no_sid.txt")
    response = post(client, raw, signed_headers(raw))
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed_payload"
    assert "MessageSid" in response.get_json()["error"]["message"]
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize(
    ("name", "next_key", "queue"),
    [("inbound_text.txt", "MessageType", "inbound"), ("status_delivered.txt", "MessageStatus", "status")],
)
def test_a_replay_with_the_sid_boundary_shifted_is_400_and_not_a_second_job(
    client: FlaskClient, redis_client: redis.Redis, name: str, next_key: str, queue: str
) -> None:
    raw = body(name)
    signature = signed_headers(raw)
    assert post(client, raw, signature).status_code == 200
    # Twilio signs key1value1key2value2... unseparated: folding the next key into MessageSid keeps the
    # signed string, so the original signature verifies, but the SID would be new and pass the dedupe.
    params = dict(parse_qsl(raw, keep_blank_values=True))
    params["MessageSid"] += next_key + params.pop(next_key)
    forged = urlencode(params)
    assert signed_headers(forged) == signature
    response = post(client, forged, signature)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed_payload"
    assert "MessageSid" in response.get_json()["error"]["message"]
    assert redis_client.llen(queue) == 1


def test_json_body_signed_with_body_sha256(client: FlaskClient, redis_client: redis.Redis) -> None:
    params = dict(parse_qsl(body("inbound_text.txt"), keep_blank_values=True))
    raw = json.dumps(params).encode()
    digest = RequestValidator(TOKEN).compute_hash(raw.decode())
    url = f"{URL}?bodySHA256={digest}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    response = client.post(
        f"/webhooks/twilio?bodySHA256={digest}",
        data=raw,
        content_type="application/json",
        headers={"X-Twilio-Signature": signature},
    )
    assert response.status_code == 200
    assert redis_client.llen("inbound") == 1
    # The same signature and hash over a different body: refused.
    response = client.post(
        f"/webhooks/twilio?bodySHA256={digest}",
        data=raw.replace(b"Hola", b"Adios"),
        content_type="application/json",
        headers={"X-Twilio-Signature": signature},
    )
    assert response.status_code == 403


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_down_is_503_never_200() -> None:
    client = make_app(redis_url=f"redis://127.0.0.1:{closed_port()}/0").test_client()
    raw = body("inbound_text.txt")
    response = post(client, raw, signed_headers(raw))
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.get_json()["error"]["code"] == "queue_unavailable"
