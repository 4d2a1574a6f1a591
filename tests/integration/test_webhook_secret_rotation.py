"""Rotating a provider's signing secret without refusing its webhooks meanwhile.

A provider switches to its new secret at once (Twilio promoting its secondary auth token, Meta resetting the
app secret, Kapso regenerating the webhook secret), and our processes take the new value only when they
restart. A webhook refused in between is lost for good with Twilio, which does not retry a 403. So each
secret has a second one accepted beside it while the rotation lasts.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import redis
from flask.testing import FlaskClient
from twilio.request_validator import RequestValidator

from ingress import create_app
from shared.providers.kapso import signature as kapso_signature
from shared.providers.meta import signature as meta_signature
from shared.settings import SettingsError, load_settings

DATA = Path(__file__).resolve().parents[1] / "data"
OLD, NEW, STRANGER = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210", "f" * 32
PUBLIC_URL = "https://hooks.example.com"


def twilio_client(**secrets: str) -> FlaskClient:
    return create_app(load_settings(public_url=PUBLIC_URL, **secrets)).test_client()


def post_twilio(client: FlaskClient, token: str) -> int:
    body = (DATA / "twilio" / "inbound_text.txt").read_text()
    params = dict(parse_qsl(body, keep_blank_values=True))
    signature = RequestValidator(token).compute_signature(PUBLIC_URL + "/webhooks/twilio", params)
    response = client.post(
        "/webhooks/twilio",
        data=body,
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": signature},
    )
    return response.status_code


def post_meta(client: FlaskClient, secret: str) -> int:
    body = (DATA / "meta" / "text.json").read_bytes()
    headers = {meta_signature.HEADER: meta_signature.sign(secret, body)}
    return client.post(
        "/webhooks/meta", data=body, content_type="application/json", headers=headers
    ).status_code


def post_kapso(client: FlaskClient, secret: str) -> int:
    body = (DATA / "kapso" / "message_received.json").read_bytes()
    headers = {
        kapso_signature.HEADER: kapso_signature.sign(secret, body),
        "X-Webhook-Event": "whatsapp.message.received",
    }
    return client.post(
        "/webhooks/kapso", data=body, content_type="application/json", headers=headers
    ).status_code


def test_twilio_accepts_its_secondary_auth_token_beside_the_primary(redis_client: redis.Redis) -> None:
    client = twilio_client(twilio_auth_token=OLD, twilio_secondary_auth_token=NEW)
    assert post_twilio(client, NEW) == 200
    assert post_twilio(client, OLD) == 200
    assert post_twilio(client, STRANGER) == 403
    assert post_twilio(twilio_client(twilio_auth_token=OLD), NEW) == 403


def test_meta_accepts_its_secondary_app_secret_beside_the_primary(redis_client: redis.Redis) -> None:
    client = create_app(load_settings(meta_app_secret=OLD, meta_secondary_app_secret=NEW)).test_client()
    assert post_meta(client, NEW) == 200
    assert post_meta(client, OLD) == 200
    assert post_meta(client, STRANGER) == 403
    assert post_meta(create_app(load_settings(meta_app_secret=OLD)).test_client(), NEW) == 403


def test_kapso_accepts_its_secondary_webhook_secret_beside_the_primary(redis_client: redis.Redis) -> None:
    settings = load_settings(kapso_webhook_secret=OLD, kapso_secondary_webhook_secret=NEW)
    client = create_app(settings).test_client()
    assert post_kapso(client, NEW) == 200
    assert post_kapso(client, OLD) == 200
    assert post_kapso(client, STRANGER) == 403
    assert post_kapso(create_app(load_settings(kapso_webhook_secret=OLD)).test_client(), NEW) == 403


@pytest.mark.parametrize(
    ("secondary", "primary"),
    [
        ("twilio_secondary_auth_token", "TWILIO_AUTH_TOKEN"),
        ("meta_secondary_app_secret", "META_APP_SECRET"),
        ("kapso_secondary_webhook_secret", "KAPSO_WEBHOOK_SECRET"),
    ],
)
def test_a_secondary_secret_without_its_primary_stops_the_process(secondary: str, primary: str) -> None:
    # Webhooks checked by the secondary alone would outlive the rotation it is for, unnoticed.
    with pytest.raises(SettingsError, match=primary):
        load_settings(**{secondary: NEW})


def test_an_empty_secondary_secret_accepts_no_signature(redis_client: redis.Redis) -> None:
    # A variable left set but empty after a rotation (``WAPIPE_TWILIO_SECONDARY_AUTH_TOKEN=``) is no secret:
    # taken as one, anybody could sign a webhook with the empty key.
    client = twilio_client(twilio_auth_token=OLD, twilio_secondary_auth_token="")
    assert post_twilio(client, "") == 403
    assert post_twilio(client, OLD) == 200
    client = create_app(load_settings(meta_app_secret=OLD, meta_secondary_app_secret="")).test_client()
    assert post_meta(client, "") == 403
    settings = load_settings(kapso_webhook_secret=OLD, kapso_secondary_webhook_secret="")
    assert post_kapso(create_app(settings).test_client(), "") == 403
