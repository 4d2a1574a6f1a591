"""One person, one contact: a Mexican mobile that writes in as WhatsApp's +52 1 form and is sent to by an
API caller in the numbering plan's +52 form is the same contact, so an opt-out from one stops the other."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import parse_qsl

from ingress import create_app
from shared.settings import load_settings
from shared.wire.twilio import parse
from workers.inbound import route

KEY = "forms-key"
DATA = Path(__file__).parents[1] / "data" / "twilio"


def twilio_inbound(text: str, sender: str) -> dict:
    params = dict(parse_qsl((DATA / "inbound_text.txt").read_text().strip(), keep_blank_values=True))
    sid = f"SM{uuid.uuid4().hex}"
    params |= {"Body": text, "From": f"whatsapp:{sender}", "WaId": sender.removeprefix("+")}
    params |= {"MessageSid": sid, "SmsMessageSid": sid, "SmsSid": sid}
    return parse(params).model_dump(mode="json")


def test_a_stop_from_whatsapps_form_opts_out_the_number_an_api_caller_sends_to(db, redis_client) -> None:
    settings = load_settings(api_keys=KEY)
    route(twilio_inbound("STOP", "+5215512345678"), settings)

    client = create_app(settings).test_client()
    response = client.post(
        "/api/v1/messages",
        json={"to": "+52 55 1234 5678", "type": "text", "text": "Your order shipped"},
        headers={"X-API-Key": KEY},
    )
    assert response.status_code == 202, response.get_json()

    recipient = db.execute(
        "SELECT c.phone, c.opted_out FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.id = %s",
        (response.get_json()["id"],),
    ).fetchone()
    assert (recipient["phone"], recipient["opted_out"]) == ("+525512345678", True)
    assert db.execute("SELECT count(*) AS n FROM contacts").fetchone()["n"] == 1


def test_an_event_queued_in_the_older_form_still_reaches_the_one_contact(db, redis_client) -> None:
    # An ingress of an earlier release (or one still rolling out) queued the number as WhatsApp wrote it;
    # the router gives it the plan's form before it looks the contact up.
    route(twilio_inbound("hola", "+525512345678"), load_settings())
    queued_earlier = twilio_inbound("otra vez", "+525512345678") | {"sender_phone": "+5215512345678"}

    route(queued_earlier, load_settings())

    [contact] = db.execute("SELECT phone FROM contacts").fetchall()
    assert contact["phone"] == "+525512345678"
    assert db.execute("SELECT count(*) AS n FROM messages WHERE direction = 'in'").fetchone()["n"] == 2
