"""Every outbound type through the notify API with WAPIPE_PROVIDER=twilio: accepted by
``POST /api/v1/messages``, sent by notify.send's path (``workers.notify.dispatch``) to a local fake Twilio
API, which records the parameters as Twilio documents them (``MediaUrl``, ``Body`` as the caption,
``ContentSid``, ``ContentVariables`` as a JSON string). What Twilio cannot send is a 422 naming the field
(or the type and the provider) before anything is stored.

- https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource
- https://www.twilio.com/docs/whatsapp/guidance-whatsapp-media-messages
- https://www.twilio.com/docs/content/send-templates-created-with-the-content-template-builder
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import psycopg
import pytest
from flask.testing import FlaskClient

from ingress import create_app
from shared.providers.base import OutboundMessage
from shared.providers.twilio.client import TwilioSender
from shared.settings import Settings, SettingsError, load_settings
from tests.fakes.twilio_api import ACCOUNT_SID, AUTH_TOKEN, WHATSAPP_NUMBER, FakeTwilioAPI, Received
from tests.integration.test_inbound_routing import event
from workers.inbound import route
from workers.notify import dispatch

KEY = "twilio-typed-key"
PHONE = "+14155550123"
ORDER_SID = "HX" + "a1" * 16
WELCOME_SID = "HX" + "b2" * 16
EXPLICIT_SID = "HX" + "c3" * 16
CALLBACK = "https://bot.example.com/webhooks/twilio"


@pytest.fixture
def fake() -> Iterator[FakeTwilioAPI]:
    with FakeTwilioAPI() as api:
        yield api


def twilio_settings(fake: FakeTwilioAPI, **overrides: object) -> Settings:
    return load_settings(
        api_keys=KEY,
        provider="twilio",
        twilio_api_url=fake.url,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_whatsapp_number=WHATSAPP_NUMBER,
        public_url="https://bot.example.com",
        **overrides,
    )


@pytest.fixture
def settings(fake: FakeTwilioAPI) -> Settings:
    # As an operator writes it in the environment: name:language=SID, or name=SID for any language.
    return twilio_settings(fake, twilio_content_sids=f"order_update:es={ORDER_SID}, welcome={WELCOME_SID}")


@pytest.fixture
def api(settings: Settings, db: psycopg.Connection, redis_client: Any) -> FlaskClient:
    return create_app(settings).test_client()


def post(api: FlaskClient, content: dict[str, Any], to: str = PHONE) -> Any:
    return api.post("/api/v1/messages", json={"to": to, **content}, headers={"X-API-Key": KEY})


def open_window(phone: str = PHONE) -> None:
    """The recipient wrote to us just now: free-form messages may be sent (WhatsApp's 24-hour window)."""
    route(event("hello", phone=phone), load_settings())


def sent(api: FlaskClient, settings: Settings, fake: FakeTwilioAPI, content: dict[str, Any]) -> Received:
    """Accept ``content`` through the API, send it as notify.send does; what Twilio got."""
    response = post(api, content)
    assert response.status_code == 202, response.get_json()
    message_id = response.get_json()["id"]
    assert dispatch(message_id, settings=settings, sender=TwilioSender(settings)) == "sent"
    [created] = fake.created()
    # The callback names our message, so its receipts can settle it should this answer be lost, and asks
    # Twilio to retry a receipt the ingress could not take.
    assert created.form["StatusCallback"] == f"{CALLBACK}?wapipe_message={message_id}#rc=5&rp=5xx,ct,rt"
    return created


def outbound_rows(db: psycopg.Connection) -> list[dict[str, Any]]:
    return db.execute("SELECT * FROM messages WHERE direction = 'out' ORDER BY id").fetchall()


def refused(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, response.get_json()
    return response.get_json()["error"]


# --- media ---------------------------------------------------------------------------------------------


def test_an_image_goes_as_one_media_url_with_its_caption_as_the_body(api, settings, fake, db) -> None:
    open_window()
    created = sent(
        api,
        settings,
        fake,
        {"type": "image", "media": {"url": "https://cdn.example.com/part.jpg", "caption": "The part"}},
    )

    assert created.form == {
        "From": f"whatsapp:{WHATSAPP_NUMBER}",
        "To": f"whatsapp:{PHONE}",
        "Body": "The part",
        "MediaUrl": "https://cdn.example.com/part.jpg",
        "StatusCallback": created.form["StatusCallback"],  # checked by sent()
    }
    assert created.media_urls == ["https://cdn.example.com/part.jpg"]  # exactly one attachment
    [row] = outbound_rows(db)
    assert (row["status"], row["provider_message_id"]) == ("sent", created.sid)


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("video", "https://cdn.example.com/clip.mp4"),
        ("audio", "https://cdn.example.com/note.ogg"),
        ("sticker", "https://cdn.example.com/hi.webp"),
        ("document", "https://cdn.example.com/files/report.pdf"),
    ],
)
def test_each_media_kind_without_caption_sends_only_its_media_url(api, settings, fake, kind, url) -> None:
    open_window()
    created = sent(api, settings, fake, {"type": kind, "media": {"url": url}})

    assert created.media_urls == [url]
    assert "Body" not in created.form
    assert created.content_sid is None


def test_a_document_filename_equal_to_the_urls_name_is_accepted_and_not_sent(api, settings, fake) -> None:
    # Twilio has no filename parameter: WhatsApp shows the URL's last path segment, which is this name.
    open_window()
    url = "https://cdn.example.com/invoices/Invoice%2042.pdf"
    created = sent(
        api, settings, fake, {"type": "document", "media": {"url": url, "filename": "Invoice 42.pdf"}}
    )

    assert created.media_urls == [url]
    assert set(created.form) == {"From", "To", "MediaUrl", "StatusCallback"}


def test_a_document_filename_twilio_cannot_show_is_a_422_before_storing(api, db, fake) -> None:
    response = post(
        api,
        {
            "type": "document",
            "media": {"url": "https://cdn.example.com/f/8f3a.pdf", "filename": "Invoice-42.pdf"},
        },
    )

    error = refused(response)
    assert (error["code"], error["field"]) == ("unsupported_content", "media.filename")
    assert error["message"].startswith("media.filename: Twilio cannot name a WhatsApp document")
    assert "'8f3a.pdf'" in error["message"]
    assert "'Invoice-42.pdf'" in error["message"]
    assert outbound_rows(db) == []
    assert fake.requests() == []


def test_a_document_caption_is_a_422_twilio_drops_it(api, db) -> None:
    response = post(
        api,
        {"type": "document", "media": {"url": "https://cdn.example.com/r.pdf", "caption": "Your report"}},
    )

    error = refused(response)
    assert (error["code"], error["field"]) == ("unsupported_content", "media.caption")
    assert "no caption with a WhatsApp document" in error["message"]
    assert outbound_rows(db) == []


# --- templates -----------------------------------------------------------------------------------------


def test_a_template_with_its_content_sid_sends_content_sid_and_positional_variables(
    api, settings, fake, db
) -> None:
    # No inbound from this recipient: a template is what may open a conversation.
    created = sent(
        api,
        settings,
        fake,
        {
            "type": "template",
            "template": {
                "name": "ticket_assigned",
                "language": "en_US",
                "variables": ["Ana", "#42"],
                "content_sid": EXPLICIT_SID,
            },
        },
    )

    assert created.form == {
        "From": f"whatsapp:{WHATSAPP_NUMBER}",
        "To": f"whatsapp:{PHONE}",
        "ContentSid": EXPLICIT_SID,
        "ContentVariables": '{"1":"Ana","2":"#42"}',
        "StatusCallback": created.form["StatusCallback"],  # checked by sent()
    }
    assert created.content_variables == {"1": "Ana", "2": "#42"}


def test_a_template_named_in_the_setting_is_sent_by_its_sid(api, settings, fake) -> None:
    created = sent(
        api,
        settings,
        fake,
        {
            "type": "template",
            "template": {
                "name": "order_update",
                "language": "es",
                "variables": {"order": "ORD-7", "eta": "mañana"},
            },
        },
    )

    assert created.content_sid == ORDER_SID
    assert created.content_variables == {"order": "ORD-7", "eta": "mañana"}
    assert "Body" not in created.form


def test_a_name_only_entry_serves_every_language_and_no_variables_sends_none(api, settings, fake) -> None:
    created = sent(
        api, settings, fake, {"type": "template", "template": {"name": "welcome", "language": "pt_BR"}}
    )

    assert created.content_sid == WELCOME_SID
    assert "ContentVariables" not in created.form


def test_a_template_twilio_cannot_name_is_a_422_saying_what_to_configure(api, db, fake) -> None:
    response = post(api, {"type": "template", "template": {"name": "order_update", "language": "en"}})

    error = refused(response)
    assert (error["code"], error["field"]) == ("unsupported_content", "template.content_sid")
    assert "order_update:en=HX..." in error["message"]
    assert "WAPIPE_TWILIO_CONTENT_SIDS" in error["message"]
    assert outbound_rows(db) == []
    assert fake.requests() == []


def test_variable_names_twilio_refuses_are_a_422(api, db) -> None:
    response = post(
        api,
        {
            "type": "template",
            "template": {"name": "welcome", "language": "en", "variables": {"customer_first_name": "Ana"}},
        },
    )

    error = refused(response)
    assert error["field"] == "template.variables"
    assert "'customer_first_name'" in error["message"]
    assert outbound_rows(db) == []


def test_a_template_unsendable_by_the_time_it_is_sent_fails_at_once_without_a_call(
    api, settings, fake, db
) -> None:
    # Accepted while the setting mapped it; the worker runs with a configuration that no longer does.
    response = post(api, {"type": "template", "template": {"name": "order_update", "language": "es"}})
    assert response.status_code == 202
    changed = twilio_settings(fake)

    assert dispatch(response.get_json()["id"], settings=changed, sender=TwilioSender(changed)) == "failed"

    [row] = outbound_rows(db)
    assert (row["status"], row["error_code"]) == ("failed", "unsupported_content")
    assert "WAPIPE_TWILIO_CONTENT_SIDS" in row["error_message"]
    assert fake.requests() == []


def test_a_malformed_content_sid_setting_fails_at_start_naming_it(fake) -> None:
    with pytest.raises(SettingsError, match="WAPIPE_TWILIO_CONTENT_SIDS") as raised:
        twilio_settings(fake, twilio_content_sids="order_update:es=HX123")
    assert "order_update:es=HX123" in str(raised.value)


# --- interactive and reactions -------------------------------------------------------------------------


BUTTONS = {
    "kind": "buttons",
    "body": "Ticket #42 is assigned to you. Accept it?",
    "header": "New ticket",
    "buttons": [{"id": "accept", "title": "Accept"}, {"id": "decline", "title": "Decline"}],
}
LIST = {
    "kind": "list",
    "body": "Pick a slot",
    "button_text": "Slots",
    "sections": [{"title": "Today", "rows": [{"id": "m9", "title": "9:00"}, {"id": "a3", "title": "15:00"}]}],
}


@pytest.mark.parametrize(
    ("interactive", "body"),
    [
        (BUTTONS, "New ticket\nTicket #42 is assigned to you. Accept it?\n1. Accept\n2. Decline"),
        (LIST, "Pick a slot\n1. 9:00\n2. 15:00"),
    ],
    ids=["buttons", "list"],
)
def test_interactive_goes_as_its_numbered_plain_text(api, settings, fake, interactive, body) -> None:
    open_window()
    created = sent(api, settings, fake, {"type": "interactive", "interactive": interactive})

    assert created.form == {
        "From": f"whatsapp:{WHATSAPP_NUMBER}",
        "To": f"whatsapp:{PHONE}",
        "Body": body,
        "StatusCallback": created.form["StatusCallback"],  # checked by sent()
    }


def test_a_reaction_is_a_422_naming_the_type_and_the_provider(api, db, fake) -> None:
    response = post(api, {"type": "reaction", "reaction": {"message_id": "SM" + "0" * 32, "emoji": "👍"}})

    error = refused(response)
    assert (error["code"], error["field"]) == ("unsupported_type", "type")
    assert "(twilio) cannot send reaction messages" in error["message"]
    assert outbound_rows(db) == []
    assert fake.requests() == []


# --- the notify worker's batch path sends the same parameters --------------------------------------------


IMAGE_URL = "https://cdn.example.com/p.jpg"
VARIABLES = ["ORD-7", "mañana"]


def test_the_batch_path_sends_the_same_form_as_the_sdk(settings, fake) -> None:
    messages = [
        OutboundMessage.from_record(
            id=1,
            to=PHONE,
            type="media",
            body="The part",
            payload={"media": {"kind": "image", "url": IMAGE_URL, "caption": "The part"}},
            from_number=None,
        ),
        OutboundMessage.from_record(
            id=2,
            to=PHONE,
            type="template",
            body=None,
            payload={"template": {"name": "order_update", "language": "es", "variables": VARIABLES}},
            from_number=None,
        ),
    ]
    sender = TwilioSender(settings)

    async def batch() -> None:
        async with aiohttp.ClientSession() as session:
            for message in messages:
                await sender.send_async(message, session)

    for message in messages:
        sender.send(message)
    asyncio.run(batch())

    sdk, batched = fake.created()[:2], fake.created()[2:]
    assert [r.fields for r in batched] == [r.fields for r in sdk]
    assert sdk[0].media_urls == [IMAGE_URL]
    assert (sdk[1].content_sid, sdk[1].content_variables) == (ORDER_SID, {"1": "ORD-7", "2": "mañana"})
