"""Every text fits the active provider's limit: Twilio's Messages API refuses a body over 1,600 characters
for good (WhatsApp itself takes 4,096), so a longer one would reach the user as nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ingress import create_app
from shared.replies import queue_reply
from shared.settings import get_settings, load_settings
from tests.integration.test_inbound_routing import event
from workers.inbound import route

TWILIO_ENV = {
    "WAPIPE_PROVIDER": "twilio",
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "t" * 32,
    "TWILIO_WHATSAPP_NUMBER": "+14155238886",
}
LONG = ("The assistant had a lot to say about this. " * 60).strip()  # about 2,600 characters


@pytest.fixture
def on_twilio(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in TWILIO_ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def stored_body(db, message_id: int) -> str:  # type: ignore[no-untyped-def]
    return db.execute("SELECT body FROM messages WHERE id = %s", (message_id,)).fetchone()["body"]


def test_a_reply_longer_than_twilio_takes_is_cut_at_a_word(db, redis_client, on_twilio: None) -> None:
    inbound = route(event("tell me everything"), get_settings()).message_id
    assert inbound is not None

    body = stored_body(db, queue_reply(inbound, LONG))

    assert len(body) <= 1600
    assert body.endswith("…")
    assert LONG.startswith(body.removesuffix("…"))
    assert LONG[len(body) - 1] == " "  # cut where a word ended


def test_a_reply_within_whatsapps_limit_is_kept_whole_on_other_providers(db, redis_client) -> None:
    inbound = route(event("tell me everything"), get_settings()).message_id
    assert inbound is not None

    assert stored_body(db, queue_reply(inbound, LONG)) == LONG


def test_the_api_refuses_a_text_twilio_would_refuse_before_storing_it(db, redis_client) -> None:
    settings = load_settings(
        api_keys="key",
        provider="twilio",
        twilio_account_sid=TWILIO_ENV["TWILIO_ACCOUNT_SID"],
        twilio_auth_token=TWILIO_ENV["TWILIO_AUTH_TOKEN"],
        twilio_whatsapp_number=TWILIO_ENV["TWILIO_WHATSAPP_NUMBER"],
    )
    client = create_app(settings).test_client()

    response = client.post(
        "/api/v1/messages",
        json={"to": "+14155550123", "type": "text", "text": LONG},
        headers={"X-API-Key": "key"},
    )

    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["field"] == "text"
    assert "at most 1600 characters" in response.get_json()["error"]["message"]
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0


def test_an_interactive_reply_whatsapp_would_refuse_goes_as_its_plain_text(db, redis_client) -> None:
    # A menu step's body with the user's answers quoted back can pass an interactive body's 1,024
    # characters: refused for good by the provider, it reached the user as nothing.
    inbound = route(event("report a defect"), get_settings()).message_id
    assert inbound is not None
    rows = [{"id": "menu:a", "title": "Report a defect"}]

    def menu(body: str) -> dict:
        interactive = {"kind": "list", "body": body, "button_text": "Options", "sections": [{"rows": rows}]}
        return {"type": "interactive", "interactive": interactive}

    fits = queue_reply(inbound, "1. Report a defect", key="fits", payload=menu("Choose one"))
    too_long = queue_reply(inbound, "1. Report a defect", key="too-long", payload=menu("x" * 1025))

    rows = db.execute("SELECT id, type, payload FROM messages WHERE id = ANY(%s)", ([fits, too_long],))
    stored = {row["id"]: (row["type"], "interactive" in row["payload"]) for row in rows}
    assert stored == {fits: ("interactive", True), too_long: ("text", False)}
