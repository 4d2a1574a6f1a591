"""Issue 3's end-to-end test: the project bot over Twilio turns free text into a stored proposal.

Real worker processes (inbound; verify, commands, ai, persist, notify) on the session's PostgreSQL and
Redis, the ingress through Flask's test client with webhooks signed by the twilio SDK, and the replies
sent by the real twilio SDK to a fake Twilio API. The host application links the number through the API,
the user sends ``VERIFY <code>``, ``/project mobile`` and then free text; the proposal and its items are
stored once and the user gets one reply with the link ``{WAPIPE_APP_URL}/proposals/{id}``. Then the same
with a fake OpenAI-compatible server: a valid proposal (recorded as made by the model), malformed JSON (the
offline parser answers, recorded as offline) and 429s (retried, then the model's answer).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from flask.testing import FlaskClient

from ingress import create_app
from shared.commands.seed_demo import DEMO_USER_ID, seed
from shared.settings import load_settings
from tests.fakes.openai_api import VALID_PROPOSAL, FakeOpenAI
from tests.fakes.twilio_api import WHATSAPP_NUMBER, FakeTwilioAPI
from tests.integration.test_e2e_project_bot import API_KEY, PHONE, PUBLIC_URL, send_whatsapp

APP_URL = "https://app.example.com"
TEXT = "Need to add login page and user dashboard by Friday. Should take about 8 hours."
MODEL = "kimi-k2-e2e"
AUTH = {"X-API-Key": API_KEY}


class Bot:
    """The pieces one scenario drives: the ingress test client and the fake Twilio API's replies."""

    def __init__(self, fake: FakeTwilioAPI, wait_for: Callable[..., Any]) -> None:
        self.fake = fake
        self.wait_for = wait_for
        settings = load_settings(
            api_keys=API_KEY,
            public_url=PUBLIC_URL,
            twilio_account_sid=fake.account_sid,
            twilio_auth_token=fake.auth_token,
            twilio_whatsapp_number=WHATSAPP_NUMBER,
        )
        self.client: FlaskClient = create_app(settings).test_client()

    def send(self, text: str, sid: str | None = None) -> str:
        return send_whatsapp(self.client, self.fake.auth_token, text, sid)

    def replies(self) -> list[str]:
        return [r.form["Body"] for r in self.fake.created() if r.form.get("To") == f"whatsapp:{PHONE}"]

    def wait_reply(self, predicate: Callable[[str], bool], what: str) -> list[str]:
        return self.wait_for(
            lambda: [text for text in self.replies() if predicate(text)], timeout=60, what=what
        )

    def link_and_pick_project(self) -> None:
        """API code -> ``VERIFY <code>`` on WhatsApp -> linked; ``/project mobile`` -> the current project."""
        assert self.client.delete(f"/api/v1/links/{DEMO_USER_ID}", headers=AUTH).status_code == 204
        created = self.client.post(
            "/api/v1/links", json={"user_id": str(DEMO_USER_ID), "phone": PHONE}, headers=AUTH
        )
        assert created.status_code == 201, created.get_data(as_text=True)
        self.send(f"VERIFY {created.get_json()['code']}")
        self.wait_reply(lambda text: text == "✅ WhatsApp linked to your account", "the linked reply")
        self.send("/project mobile")
        self.wait_reply(lambda text: text.startswith("✅ Project: Mobile App"), "the project switch")


def start_pipeline(start_worker: Callable[..., Any], env: dict[str, str]) -> None:
    start_worker(["inbound"], env=env)
    start_worker(["verify", "commands", "ai", "persist", "notify"], concurrency=2, env=env)


def proposal_for(db: psycopg.Connection, sid: str) -> dict[str, Any] | None:
    """The proposal made from the inbound message Twilio sent as ``sid``, with its item titles."""
    row = db.execute(
        "SELECT p.id, p.parser, p.project_id, p.total_estimated_hours, p.user_id FROM proposals p"
        " JOIN messages m ON m.id = p.source_message_id"
        " WHERE m.provider = 'twilio' AND m.provider_message_id = %s",
        (sid,),
    ).fetchone()
    if row is None:
        return None
    items = db.execute(
        "SELECT title FROM proposal_items WHERE proposal_id = %s ORDER BY position", (row["id"],)
    ).fetchall()
    return {**row, "titles": [item["title"] for item in items]}


def link_reply(bot: Bot, proposal_id: Any) -> list[str]:
    link = f"{APP_URL}/proposals/{proposal_id}"
    return bot.wait_reply(lambda text: text.endswith(link), f"the reply with {link}")


def count(db: psycopg.Connection, sql: str, *params: Any) -> int:
    return db.execute(sql, params).fetchone()["n"]


def test_link_verify_project_then_free_text_becomes_one_proposal_and_one_reply(
    clean: None, db: psycopg.Connection, start_worker: Callable[..., Any], wait_for: Callable[..., Any]
) -> None:
    seed(PHONE)
    with FakeTwilioAPI() as fake:
        start_pipeline(
            start_worker, {**fake.credentials_env(), "WAPIPE_APP_URL": APP_URL, "WAPIPE_AI": "offline"}
        )
        bot = Bot(fake, wait_for)
        bot.link_and_pick_project()

        # Twilio delivers the same webhook three times (its retries): 200 each time, one effect.
        sid = bot.send(TEXT)
        bot.send(TEXT, sid)
        bot.send(TEXT, sid)

        proposal = wait_for(lambda: proposal_for(db, sid), timeout=60, what="the stored proposal")
        (reply,) = link_reply(bot, proposal["id"])
        assert reply.startswith("✅ Proposal saved to Mobile App: 2 items, 8h total")
        assert "Add login page" in reply
        assert "Add user dashboard" in reply

        # Another message and its answer: by then a duplicate of the free text would have been handled too.
        answered = len(bot.replies())
        bot.send("/status")
        wait_for(lambda: len(bot.replies()) > answered, timeout=60, what="the /status reply")
        assert "Mobile App" in bot.replies()[-1]

    assert proposal["parser"] == "offline"
    assert proposal["titles"] == ["Add login page", "Add user dashboard"]
    assert float(proposal["total_estimated_hours"]) == 8
    assert proposal["user_id"] == DEMO_USER_ID
    project = db.execute("SELECT name FROM projects WHERE id = %s", (proposal["project_id"],)).fetchone()
    assert project["name"] == "Mobile App"
    assert count(db, "SELECT count(*) AS n FROM proposals") == 1
    assert count(db, "SELECT count(*) AS n FROM proposal_items") == 2
    assert count(db, "SELECT count(*) AS n FROM messages WHERE provider_message_id = %s", sid) == 1
    assert len([text for text in bot.replies() if "/proposals/" in text]) == 1
    sent = db.execute(
        "SELECT status FROM messages WHERE direction = 'out' AND body LIKE %s",
        (f"%/proposals/{proposal['id']}",),
    ).fetchall()
    assert [row["status"] for row in sent] == ["sent"]


def test_proposals_from_an_openai_compatible_model_valid_malformed_and_rate_limited(
    clean: None, db: psycopg.Connection, start_worker: Callable[..., Any], wait_for: Callable[..., Any]
) -> None:
    seed(PHONE)
    with FakeTwilioAPI() as fake, FakeOpenAI() as model:
        env = {
            **fake.credentials_env(),
            "WAPIPE_APP_URL": APP_URL,
            "WAPIPE_AI": "openai",
            "OPENAI_API_KEY": "sk-e2e",
            "OPENAI_BASE_URL": model.url,
            "WAPIPE_AI_MODEL": MODEL,
        }
        start_pipeline(start_worker, env)
        bot = Bot(fake, wait_for)
        bot.link_and_pick_project()
        assert model.completions() == []  # commands and linking never ask the model

        # 1. The model answers a valid proposal: stored as the model's.
        model.reply(json.dumps(VALID_PROPOSAL))
        first = bot.send(TEXT)
        valid = wait_for(lambda: proposal_for(db, first), timeout=60, what="the model's proposal")
        link_reply(bot, valid["id"])
        assert valid["parser"] == MODEL
        assert valid["titles"] == [item["title"] for item in VALID_PROPOSAL["items"]]
        (call,) = model.completions()
        assert call.body["model"] == MODEL
        assert call.body["messages"][-1] == {"role": "user", "content": TEXT}
        assert call.body["response_format"]["type"] == "json_schema"

        # 2. Malformed JSON: the offline parser answers, and the proposal says so.
        model.reply('{"summary": "2 items", "items": [')
        second = bot.send("Fix the checkout bug and write the release notes tomorrow, 3 hours each.")
        malformed = wait_for(lambda: proposal_for(db, second), timeout=60, what="the offline proposal")
        link_reply(bot, malformed["id"])
        assert malformed["parser"] == "offline"
        assert malformed["titles"] == ["Fix the checkout bug", "Write the release notes"]
        assert float(malformed["total_estimated_hours"]) == 6

        # 3. 429s (Retry-After honoured): retried, then the model's answer.
        model.fail(429, retry_after=0)
        model.fail(429, retry_after=0)
        third = bot.send("Add a settings page and an export button, 5 hours total")
        limited = wait_for(lambda: proposal_for(db, third), timeout=60, what="the proposal after 429s")
        link_reply(bot, limited["id"])
        assert limited["parser"] == MODEL

    assert [r.status for r in model.completions()] == [200, 200, 429, 429, 200]
    assert count(db, "SELECT count(*) AS n FROM proposals") == 3
    assert len([text for text in bot.replies() if "/proposals/" in text]) == 3
