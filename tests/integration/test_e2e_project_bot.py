"""End to end with real worker processes: the host app gets a code from the API, the user sends
``VERIFY <code>`` on WhatsApp (a signed Twilio webhook), the workers link the number and the reply reaches
the fake Twilio API through the real SDK; then ``/project mobile`` switches the project.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import psycopg
import redis
from flask.testing import FlaskClient
from twilio.request_validator import RequestValidator

from ingress import create_app
from shared.commands.seed_demo import DEMO_USER_ID, seed
from shared.sessions import Sessions
from shared.settings import load_settings
from tests.fakes.twilio_api import WHATSAPP_NUMBER, FakeTwilioAPI

API_KEY = "e2e-api-key"
PUBLIC_URL = "https://hooks.example.com"
PHONE = "+14155550123"
_sids = itertools.count(1)


def send_whatsapp(client: FlaskClient, token: str, text: str, sid: str | None = None) -> str:
    """What Twilio POSTs when the user sends ``text``: a form, signed over our public URL. Pass the
    ``sid`` of an earlier call to deliver the same message again; returns the MessageSid."""
    sid = sid or f"SM{next(_sids):032x}"
    form = {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": f"whatsapp:{PHONE}",
        "To": f"whatsapp:{WHATSAPP_NUMBER}",
        "Body": text,
        "NumMedia": "0",
        "ProfileName": "Demo",
        "WaId": PHONE.lstrip("+"),
        "ApiVersion": "2010-04-01",
    }
    # Signed by the twilio SDK itself, independently of our own check (shared/providers/twilio/signature.py).
    signature = RequestValidator(token).compute_signature(PUBLIC_URL + "/webhooks/twilio", form)
    headers = {"X-Twilio-Signature": signature}
    response = client.post("/webhooks/twilio", data=form, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return sid


def test_link_verify_and_switch_project(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    seed(PHONE)
    with FakeTwilioAPI() as fake:
        env = fake.credentials_env()
        start_worker(["inbound"], env=env)
        start_worker(["verify", "commands", "notify"], env=env)
        settings = load_settings(
            api_keys=API_KEY,
            public_url=PUBLIC_URL,
            twilio_account_sid=fake.account_sid,
            twilio_auth_token=fake.auth_token,
            twilio_whatsapp_number=WHATSAPP_NUMBER,
        )
        client = create_app(settings).test_client()
        auth = {"X-API-Key": API_KEY}

        # The demo link is removed, then the host application links the number again with a code.
        assert client.delete(f"/api/v1/links/{DEMO_USER_ID}", headers=auth).status_code == 204
        created = client.post(
            "/api/v1/links", json={"user_id": str(DEMO_USER_ID), "phone": PHONE}, headers=auth
        )
        assert created.status_code == 201
        code = created.get_json()["code"]

        def replies() -> list[str]:
            return [r.form["Body"] for r in fake.created() if r.form.get("To") == f"whatsapp:{PHONE}"]

        send_whatsapp(client, fake.auth_token, f"verify  {code}")
        wait_for(
            lambda: "✅ WhatsApp linked to your account" in replies(), timeout=60, what="the linked reply"
        )
        assert client.get(f"/api/v1/links/{DEMO_USER_ID}", headers=auth).get_json()["verified"] is True

        send_whatsapp(client, fake.auth_token, "/project mobile")
        switched = wait_for(
            lambda: [text for text in replies() if text.startswith("✅ Project: Mobile App")],
            timeout=60,
            what="the project switch reply",
        )
        assert len(switched) == 1
        assert replies()[0] == "✅ WhatsApp linked to your account"
        project_id = Sessions(redis_client).load(PHONE)["project_id"]
        name = db.execute("SELECT name FROM projects WHERE id = %s", (project_id,)).fetchone()["name"]
        assert name == "Mobile App"
