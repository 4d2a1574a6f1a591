"""The AI assistant (``ai.reply``) on real PostgreSQL and Redis, against a fake OpenAI-compatible server that
records what the real ``openai`` SDK sent it; then routing per business number and real worker processes.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from ingress import create_app
from shared import replies as replies_module
from shared.ai.assistant import DEFAULT_SYSTEM_PROMPT, MAX_HISTORY_MESSAGE_CHARS
from shared.ai.offline_assistant import TEXTS, Intent
from shared.db.errors import Unavailable
from shared.db.messages import get_inbound
from shared.providers.meta.client import MetaSender
from shared.providers.twilio.client import TwilioSender
from shared.queues import Job, Publisher
from shared.settings import Settings, load_settings
from shared.wire.events import InboundMessage
from shared.wire.meta import parse_webhook
from tests.fakes.meta_graph import FakeGraph
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.integration.test_inbound_routing import BUSINESS, event, queued
from workers import ai as ai_worker
from workers.inbound import route

PHONE = "+15551234567"
API_KEY = "assistant-test-key"
_ids = itertools.count(1)

OFFLINE = load_settings(ai="offline")
META_DATA = Path(__file__).resolve().parents[1] / "data" / "meta"


def model_settings(fake: FakeOpenAI, **overrides: Any) -> Settings:
    return load_settings(openai_api_key="sk-test", openai_base_url=fake.url, ai_model="gpt-test", **overrides)


# --- a conversation in the database --------------------------------------------------------------------


def conversation(
    db: psycopg.Connection, *, provider: str = "twilio", business: str = BUSINESS, phone: str = PHONE
) -> tuple[int, int]:
    """(contact id, live conversation id) for ``phone`` on ``business``."""
    contact = db.execute(
        "INSERT INTO contacts (phone, profile_name) VALUES (%s, 'Ana Pérez')"
        " ON CONFLICT (phone) DO UPDATE SET phone = EXCLUDED.phone RETURNING id",
        (phone,),
    ).fetchone()["id"]
    row = db.execute(
        "INSERT INTO conversations (contact_id, provider, business_number) VALUES (%s, %s, %s) RETURNING id",
        (contact, provider, business),
    ).fetchone()
    return contact, row["id"]


def say(
    db: psycopg.Connection,
    convo: tuple[int, int],
    direction: str,
    body: str | None,
    *,
    status: str = "sent",
    provider: str = "twilio",
    type: str = "text",
) -> int:
    """Store one message of the conversation (inbound as the router stores it, outbound as sent)."""
    contact, conversation_id = convo
    sid = f"SM{next(_ids):032d}" if direction == "in" else f"SMout{next(_ids):029d}"
    if provider == "meta" and direction == "in":
        sid = f"wamid.TEST{next(_ids)}"
    return db.execute(
        "INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id, type,"
        " body, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (conversation_id, contact, direction, provider, sid, type, body, status),
    ).fetchone()["id"]


def reply_row(db: psycopg.Connection, inbound_id: int) -> dict[str, Any] | None:
    return db.execute(
        "SELECT id, body, payload, conversation_id FROM messages WHERE idempotency_key = %s",
        (f"reply:{inbound_id}",),
    ).fetchone()


def outbound_count(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) AS n FROM messages WHERE direction = 'out'").fetchone()["n"]


def put_config(number: str, **body: Any) -> dict[str, Any]:
    """Store an assistant config the way the host application does: ``PUT /api/v1/assistant-configs``."""
    client = create_app(load_settings(api_keys=API_KEY)).test_client()
    response = client.put(f"/api/v1/assistant-configs/{number}", json=body, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


# --- the model with config and history -----------------------------------------------------------------


def test_the_model_gets_the_numbers_config_and_the_last_ten_messages_in_order(
    clean: None, db: psycopg.Connection
) -> None:
    put_config(BUSINESS, system_prompt="You are Bella, the bakery's assistant.", model="kimi-k2",
               max_tokens=120, temperature=0.9)  # fmt: skip
    convo = conversation(db)
    # 14 earlier messages, alternating, one failed reply the user never got, then the new message.
    history: list[tuple[str, str]] = []
    for turn in range(7):
        say(db, convo, "in", f"question {turn}")
        history.append(("user", f"question {turn}"))
        if turn == 3:
            say(db, convo, "out", "lost answer", status="failed")
        say(db, convo, "out", f"answer {turn}")
        history.append(("assistant", f"answer {turn}"))
    say(db, convo, "in", None, type="image")  # a photo alone
    history.append(("user", "[image]"))
    other = conversation(db, phone="+15559990000")
    say(db, other, "in", "someone else's message")
    message_id = say(db, convo, "in", "Do you have gluten-free bread?")
    history.append(("user", "Do you have gluten-free bread?"))
    later = say(db, convo, "in", "a message after the one answered")

    with FakeOpenAI() as fake:
        fake.reply("Yes! We bake gluten-free loaves every morning.")
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "kimi-k2"

    (call,) = fake.completions()
    sent = call.body
    assert sent["model"] == "kimi-k2"
    assert sent["max_completion_tokens"] == 120
    assert "max_tokens" not in sent
    assert sent["temperature"] == pytest.approx(0.9)
    assert sent["messages"][0] == {"role": "system", "content": "You are Bella, the bakery's assistant."}
    chat = [(m["role"], m["content"]) for m in sent["messages"][1:]]
    assert chat == history[-10:]
    assert chat[-1] == ("user", "Do you have gluten-free bread?")
    assert call.headers["authorization"] == "Bearer sk-test"

    reply = reply_row(db, message_id)
    assert reply["body"] == "Yes! We bake gluten-free loaves every morning."
    assert reply["payload"]["generated_by"] == "kimi-k2"
    assert reply["conversation_id"] == convo[1]
    assert reply_row(db, later) is None
    handled = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert handled["handled_at"] is not None


def test_each_message_of_the_history_is_at_most_a_whatsapp_text_long(
    clean: None, db: psycopg.Connection
) -> None:
    # One WhatsApp message may hold 65,536 characters. Sent whole, a few pasted texts put the history past
    # the model's context: every reply for the next ten messages was refused (context_length_exceeded, not
    # retried) and came from the offline assistant, each refused call still sending all of it.
    convo = conversation(db)
    pasted = "word " * 13_000
    for _ in range(3):
        say(db, convo, "in", pasted)
        say(db, convo, "out", "Thanks, noted.")
    question = "What did I send you?"
    message_id = say(db, convo, "in", question)
    with FakeOpenAI() as fake:
        fake.reply("Three long texts.")
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "gpt-test"
    chat = [m["content"] for m in fake.completions()[0].body["messages"][1:]]
    assert chat[0::2] == [chat[0]] * 3 + [question]
    assert len(chat[0]) == MAX_HISTORY_MESSAGE_CHARS
    assert chat[0].startswith("word word")
    assert chat[0].endswith("…")
    assert chat[1::2] == ["Thanks, noted."] * 3


def test_a_number_without_config_uses_the_defaults(clean: None, db: psycopg.Connection) -> None:
    convo = conversation(db)
    message_id = say(db, convo, "in", "What time do you open?")
    with FakeOpenAI() as fake:
        fake.content = "We open at 8."
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "gpt-test"
    sent = fake.completions()[0].body
    assert sent["model"] == "gpt-test"
    assert sent["max_completion_tokens"] == 300
    assert "max_tokens" not in sent
    assert sent["temperature"] == pytest.approx(0.3)
    assert sent["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "What time do you open?"},
    ]
    assert reply_row(db, message_id)["payload"]["generated_by"] == "gpt-test"


def test_the_model_reads_a_shared_location_and_a_flows_answers_as_text(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    # Stored as the router stores them, from Meta's own payloads.
    settings = load_settings(mode="assistant")
    flow = meta_message("interactive_flow_reply")
    route(flow.model_dump(mode="json"), settings)
    location = meta_message("location")
    message_id = route(location.model_dump(mode="json"), settings).message_id
    assert message_id is not None

    with FakeOpenAI() as fake:
        fake.reply("Thanks, we see you at Main Office.")
        ai_worker.reply_message(message_id, model_settings(fake))

    form, place = [m["content"] for m in fake.completions()[0].body["messages"][1:]]
    assert place == "[location: Main Office, 1 Hacker Way, Menlo Park, CA 94025 (37.483307, -122.148981)]"
    # The user's answers, without the flow_token we sent the Flow with (in the order jsonb keeps them).
    assert form.startswith("[form answers: {")
    assert form.endswith("}]")
    answers = json.loads(form.removeprefix("[form answers: ").removesuffix("]"))
    assert answers == {"date": "2026-12-09", "party_size": "4", "notes": "Mesa junto a la ventana"}


def meta_message(name: str) -> InboundMessage:
    payload = json.loads(
        (Path(__file__).resolve().parents[1] / "data" / "meta" / f"{name}.json").read_bytes()
    )
    [message] = parse_webhook(payload).messages
    return message


def test_a_redelivered_task_makes_one_reply_and_one_model_call(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    message_id = say(db, conversation(db), "in", "hello there")
    with FakeOpenAI() as fake:
        fake.content = "Hi! How can I help?"
        settings = model_settings(fake)
        assert ai_worker.reply_message(message_id, settings) == "gpt-test"
        assert ai_worker.reply_message(message_id, settings) == "done"
        assert ai_worker.reply_message(message_id, settings) == "done"
    assert len(fake.completions()) == 1
    assert outbound_count(db) == 1
    # Each run (re)enqueues the send of the one reply; notify.send sends it once.
    reply_id = reply_row(db, message_id)["id"]
    assert {kwargs["message_id"] for _, kwargs in queued(redis_client, "notify")} == {reply_id}


def test_no_database_connection_waits_in_a_transaction_for_the_model(
    clean: None, db: psycopg.Connection
) -> None:
    # The model call can take a minute with its retries: a transaction open across it holds a pooled
    # connection and its locks ("idle in transaction") all that time.
    put_config(BUSINESS, system_prompt="You are Bella.", model="kimi-k2")
    convo = conversation(db)
    say(db, convo, "in", "earlier question")
    message_id = say(db, convo, "in", "What time do you open?")
    waiting: list[list[tuple[str, str]]] = []

    def look() -> None:
        rows = db.execute(
            "SELECT state, query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND state LIKE 'idle in%%'"
        ).fetchall()
        waiting.append([(row["state"], row["query"]) for row in rows])

    with FakeOpenAI() as fake:
        fake.fail(500, retry_after=0)  # a retry too: no transaction across any attempt
        fake.content = "We open at 8."
        fake.while_answering = look
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "kimi-k2"

    assert waiting == [[], []]
    assert reply_row(db, message_id)["body"] == "We open at 8."


def test_a_reasoning_model_is_asked_with_max_completion_tokens(clean: None, db: psycopg.Connection) -> None:
    # o-series models refuse max_tokens with a 400 (not retried): every reply on a number configured with
    # one came from the offline assistant. max_completion_tokens is what current chat models all take.
    put_config(BUSINESS, system_prompt="You are Bella.", model="o3-mini", max_tokens=200)
    message_id = say(db, conversation(db), "in", "What time do you open?")
    with FakeOpenAI() as fake:
        fake.refuse("max_tokens")
        fake.reply("We open at 8.")
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "o3-mini"
    (call,) = fake.completions()
    assert call.body["max_completion_tokens"] == 200
    assert reply_row(db, message_id)["body"] == "We open at 8."


def test_a_server_not_knowing_max_completion_tokens_is_asked_with_max_tokens_and_then_never_with_it(
    clean: None, db: psycopg.Connection
) -> None:
    # An older Azure api-version answers max_completion_tokens with a 400: every reply came from offline.
    put_config(BUSINESS, system_prompt="You are Bella.", model="gpt-4o-azure-old", max_tokens=200)
    convo = conversation(db)
    first = say(db, convo, "in", "What time do you open?")
    with FakeOpenAI() as fake:
        fake.refuse_unknown("max_completion_tokens")
        fake.content = "We open at 8."
        settings = model_settings(fake)
        assert ai_worker.reply_message(first, settings) == "gpt-4o-azure-old"
        second = say(db, convo, "in", "And on Sundays?")
        assert ai_worker.reply_message(second, settings) == "gpt-4o-azure-old"
    sent = [
        (call.status, call.body.get("max_completion_tokens"), call.body.get("max_tokens"))
        for call in fake.completions()
    ]
    assert sent == [(400, 200, None), (200, None, 200), (200, None, 200)]
    assert reply_row(db, first)["body"] == reply_row(db, second)["body"] == "We open at 8."
    assert outbound_count(db) == 2


@pytest.mark.parametrize("code", ["unsupported_value", "unsupported_parameter"])
def test_a_model_refusing_the_temperature_is_asked_again_without_it_and_then_never_with_it(
    clean: None, db: psycopg.Connection, code: str
) -> None:
    # Reasoning models refuse any temperature but their default with a 400 (not retried): every reply on a
    # number configured with one came from the offline assistant.
    model = f"o3-mini-{code}"
    put_config(BUSINESS, system_prompt="You are Bella.", model=model, temperature=0.3)
    convo = conversation(db)
    first = say(db, convo, "in", "What time do you open?")
    with FakeOpenAI() as fake:
        fake.refuse("temperature", code)
        fake.content = "We open at 8."
        settings = model_settings(fake)
        assert ai_worker.reply_message(first, settings) == model
        second = say(db, convo, "in", "And on Sundays?")
        assert ai_worker.reply_message(second, settings) == model
    sent = [(call.status, "temperature" in call.body) for call in fake.completions()]
    assert sent == [(400, True), (200, False), (200, False)]
    assert reply_row(db, first)["body"] == reply_row(db, second)["body"] == "We open at 8."
    assert outbound_count(db) == 2


# --- model failing: the offline assistant answers, recorded as offline --------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_model_failing_every_attempt_gets_the_offline_reply(
    clean: None, db: psycopg.Connection, status: int
) -> None:
    message_id = say(db, conversation(db), "in", "hello")
    with FakeOpenAI() as fake:
        for _ in range(3):
            fake.fail(status, retry_after=0)
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "offline"
    assert [r.status for r in fake.completions()] == [status] * 3
    reply = reply_row(db, message_id)
    assert reply["payload"]["generated_by"] == "offline"
    assert reply["body"].startswith("👋 Hi Ana!")


def test_a_429_is_retried_after_retry_after_then_the_model_answers(
    clean: None, db: psycopg.Connection
) -> None:
    message_id = say(db, conversation(db), "in", "hello")
    with FakeOpenAI() as fake:
        fake.fail(429, retry_after=0)
        fake.fail(500, retry_after=0)
        fake.reply("Hello! What can I do for you?")
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "gpt-test"
    assert [r.status for r in fake.completions()] == [429, 500, 200]
    # The three attempts sent the same conversation.
    assert len({str(r.body["messages"]) for r in fake.completions()}) == 1
    assert reply_row(db, message_id)["body"] == "Hello! What can I do for you?"


@pytest.mark.parametrize(
    ("cut", "sent"),
    [
        ("We open at 8. On Sundays we open at ten, and the bak", "We open at 8."),
        ("Yes!\nThe gluten-free loaves come out of the ov", "Yes!"),
        ("We bake gluten-free loaves every mor", "We bake gluten-free loaves every mor…"),
        ("We open at 8.", "We open at 8."),
    ],
)
def test_a_reply_the_model_ran_out_of_tokens_in_ends_at_its_last_whole_sentence(
    clean: None, db: psycopg.Connection, cut: str, sent: str
) -> None:
    # The number's max_tokens stops the model mid-word (finish_reason "length"); the user read the cut.
    message_id = say(db, conversation(db), "in", "When do you open?")
    with FakeOpenAI() as fake:
        fake.reply(cut, finish_reason="length")
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "gpt-test"
    assert reply_row(db, message_id)["body"] == sent


def test_an_answer_the_provider_filtered_falls_back_to_offline(clean: None, db: psycopg.Connection) -> None:
    # finish_reason "content_filter": what came is a fragment the provider stopped, not a reply to send.
    message_id = say(db, conversation(db), "in", "menu")
    with FakeOpenAI() as fake:
        fake.reply("Sure, here is how to", finish_reason="content_filter")
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "offline"
    assert reply_row(db, message_id)["body"] == TEXTS["en"]["menu"]


def test_an_empty_model_answer_falls_back_to_offline(clean: None, db: psycopg.Connection) -> None:
    message_id = say(db, conversation(db), "in", "menu")
    with FakeOpenAI() as fake:
        fake.reply("   ")
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "offline"
    assert reply_row(db, message_id)["body"] == TEXTS["en"]["menu"]


def test_a_200_that_is_not_a_completion_falls_back_to_offline(clean: None, db: psycopg.Connection) -> None:
    message_id = say(db, conversation(db), "in", "menu")
    with FakeOpenAI() as fake:
        fake.answer_raw(b"<html><body>502 Bad Gateway</body></html>", "text/html")  # a proxy's page
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "offline"
    assert reply_row(db, message_id)["body"] == TEXTS["en"]["menu"]


@pytest.mark.parametrize(
    "message",
    [
        "a plain string",
        {"role": "assistant", "content": [{"type": "text", "text": "We open at 8."}]},
        {"role": "assistant", "content": 42},
    ],
    ids=["message is a string", "content is a list of parts", "content is a number"],
)
def test_an_answer_of_the_wrong_shape_falls_back_to_offline(
    clean: None, db: psycopg.Connection, message: object
) -> None:
    # An OpenAI-compatible server's odd answer must not kill the task: the user would get the apology,
    # and "send it again" would fail the same way.
    message_id = say(db, conversation(db), "in", "menu")
    with FakeOpenAI() as fake:
        fake.answer_message(message)
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "offline"
    assert reply_row(db, message_id)["body"] == TEXTS["en"]["menu"]


@pytest.mark.parametrize(
    "body", [{"choices": []}, {"choices": None}, {}], ids=["empty choices", "null choices", "no choices key"]
)
def test_an_answer_without_choices_falls_back_to_offline(
    clean: None, db: psycopg.Connection, body: dict[str, Any]
) -> None:
    # OpenAI-compatible gateways (OPENAI_BASE_URL) send a 200 so when the model produced nothing: a task
    # failing on it would send the apology, and fail the same way for every message after.
    message_id = say(db, conversation(db), "in", "menu")
    with FakeOpenAI() as fake:
        fake.answer_json({"id": "chatcmpl-none", "object": "chat.completion", **body})
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "offline"
    assert len(fake.completions()) == 1
    assert reply_row(db, message_id)["body"] == TEXTS["en"]["menu"]


def test_control_characters_are_taken_out_of_the_models_reply(clean: None, db: psycopg.Connection) -> None:
    # PostgreSQL refuses text holding NUL, and WhatsApp shows the other control characters as boxes.
    message_id = say(db, conversation(db), "in", "What time do you open?")
    with FakeOpenAI() as fake:
        fake.reply(
            "We open\u0000 at 8.\u0007\nSee you\ud800!\u001b"
        )  # and a lone surrogate, which UTF-8 lacks
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "gpt-test"
    assert reply_row(db, message_id)["body"] == "We open at 8.\nSee you\ufffd!"


# --- offline (no key) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "starts", "contains"),
    [
        ("hi", "👋 Hi Ana! I'm the automated assistant.", "Send *talk to a person*"),
        ("Hola, buenos días", "👋 ¡Hola Ana! Soy el asistente automático.", "*hablar con una persona*"),
        ("MENU", "Here's what I can do:", "Send *menu*"),
        ("menú", "Esto es lo que puedo hacer:", "Envía *BAJA*"),
        ("what is the meaning of life", "🤖 I can't answer that myself right now.", "Send *menu*"),
        ("gracias!", "😊 ¡Con gusto!", "Envía *menú*"),
    ],
)
def test_offline_replies_greet_and_show_the_menu_in_the_users_language(
    clean: None, db: psycopg.Connection, text: str, starts: str, contains: str
) -> None:
    message_id = say(db, conversation(db), "in", text)
    assert ai_worker.reply_message(message_id, OFFLINE) == "offline"
    reply = reply_row(db, message_id)
    assert reply["body"].startswith(starts)
    assert contains in reply["body"]
    assert reply["payload"]["generated_by"] == "offline"
    status = db.execute("SELECT status FROM conversations").fetchone()["status"]
    assert status == "open"


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("I want to talk to a person please", "en"),
        ("Can I speak with someone?", "en"),
        ("human", "en"),
        ("Quiero hablar con una persona", "es"),
        ("¿Me pasas con un asesor?", "es"),
    ],
)
def test_a_handoff_phrase_hands_the_conversation_to_a_person(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis, text: str, language: str
) -> None:
    convo = conversation(db)
    message_id = say(db, convo, "in", text)
    assert ai_worker.reply_message(message_id, OFFLINE) == "offline"
    assert reply_row(db, message_id)["body"] == TEXTS[language][Intent.handoff]
    status = db.execute("SELECT status FROM conversations WHERE id = %s", (convo[1],)).fetchone()["status"]
    assert status == "handoff"
    # The router now stores the user's messages without answering them.
    assert route(event("are you there?"), OFFLINE).action == "handoff"


def test_a_handoff_phrase_is_honoured_without_asking_the_model(clean: None, db: psycopg.Connection) -> None:
    convo = conversation(db)
    message_id = say(db, convo, "in", "talk to a human")
    with FakeOpenAI() as fake:
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "offline"
    assert fake.completions() == []
    assert db.execute("SELECT status FROM conversations").fetchone()["status"] == "handoff"


def test_a_handoff_and_its_confirmation_commit_together_once(
    clean: None, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The handoff and its confirmation are one statement: a run that dies before it leaves the
    # conversation open and the rerun makes both; none leaves a handoff without its confirmation.
    convo = conversation(db)
    message_id = say(db, convo, "in", "I want to talk to a person please")

    def lost_database(*args: object, **kwargs: object) -> None:
        raise Unavailable("connection refused")

    with monkeypatch.context() as outage:
        outage.setattr(replies_module.answers, "store_handoff_reply", lost_database)
        with pytest.raises(Unavailable):
            ai_worker.reply_message(message_id, OFFLINE)
    status = db.execute("SELECT status FROM conversations WHERE id = %s", (convo[1],)).fetchone()["status"]
    assert status == "open"

    assert ai_worker.reply_message(message_id, OFFLINE) == "offline"
    assert ai_worker.reply_message(message_id, OFFLINE) == "done"
    assert reply_row(db, message_id)["body"] == TEXTS["en"][Intent.handoff]
    assert outbound_count(db) == 1
    assert handled(db, message_id)


def test_a_second_request_for_a_person_is_not_confirmed_again(clean: None, db: psycopg.Connection) -> None:
    # "I want to talk to a person", then "human please", both routed while the conversation was open: the
    # first hands it over and is confirmed; the second finds it handed over and the bot says nothing.
    convo = conversation(db)
    first = say(db, convo, "in", "I want to talk to a person")
    second = say(db, convo, "in", "human please")

    assert ai_worker.reply_message(first, OFFLINE) == "offline"
    assert ai_worker.reply_message(second, OFFLINE) == "silent"
    assert outbound_count(db) == 1
    assert handled(db, second)


def test_a_request_for_a_person_in_a_conversation_an_operator_took_over_is_not_confirmed(
    clean: None, db: psycopg.Connection
) -> None:
    convo = conversation(db)
    message_id = say(db, convo, "in", "I want to talk to a person please")
    db.execute("UPDATE conversations SET status = 'handoff' WHERE id = %s", (convo[1],))

    assert ai_worker.reply_message(message_id, OFFLINE) == "silent"
    assert outbound_count(db) == 0
    assert handled(db, message_id)


def test_a_handoff_request_from_an_opted_out_contact_is_not_confirmed(
    clean: None, db: psycopg.Connection
) -> None:
    convo = conversation(db)
    message_id = say(db, convo, "in", "I want to talk to a person please")
    db.execute("UPDATE conversations SET status = 'handoff' WHERE id = %s", (convo[1],))
    db.execute("UPDATE contacts SET opted_out = true, opted_out_at = now()")
    assert ai_worker.reply_message(message_id, OFFLINE) == "silent"
    assert outbound_count(db) == 0
    assert handled(db, message_id)


def test_are_you_human_is_not_a_handoff(clean: None, db: psycopg.Connection) -> None:
    message_id = say(db, conversation(db), "in", "are you human?")
    ai_worker.reply_message(message_id, OFFLINE)
    assert db.execute("SELECT status FROM conversations").fetchone()["status"] == "open"


def handled(db: psycopg.Connection, message_id: int) -> bool:
    row = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    return row["handled_at"] is not None


def test_a_message_routed_before_the_handoff_it_waited_behind_gets_no_ai_reply(
    clean: None, db: psycopg.Connection
) -> None:
    # "I want a person", then "hurry please" while the assistant still answers the first: the second was
    # routed to the assistant while the conversation was open, and runs once the first set 'handoff'.
    convo = conversation(db)
    first = say(db, convo, "in", "I want to talk to a person")
    second = say(db, convo, "in", "hurry please")
    assert ai_worker.reply_message(first, OFFLINE) == "offline"

    with FakeOpenAI() as fake:
        assert ai_worker.reply_message(second, model_settings(fake)) == "silent"
    assert fake.completions() == []
    assert reply_row(db, second) is None
    assert outbound_count(db) == 1  # the handoff confirmation only
    assert handled(db, second)  # its turn is over: the conversation's next message is not held up


def test_an_opted_out_contact_gets_no_ai_reply(clean: None, db: psycopg.Connection) -> None:
    convo = conversation(db)
    message_id = say(db, convo, "in", "hello")
    db.execute("UPDATE contacts SET opted_out = true, opted_out_at = now()")
    with FakeOpenAI() as fake:
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "silent"
    assert fake.completions() == []
    assert outbound_count(db) == 0
    assert handled(db, message_id)


def test_a_message_of_a_conversation_closed_before_its_turn_gets_no_ai_reply(
    clean: None, db: psycopg.Connection
) -> None:
    convo = conversation(db)
    message_id = say(db, convo, "in", "What time do you open?")
    db.execute("UPDATE conversations SET status = 'closed', closed_at = now() WHERE id = %s", (convo[1],))
    with FakeOpenAI() as fake:
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "silent"
    assert fake.completions() == []
    assert outbound_count(db) == 0
    assert handled(db, message_id)


class ClosingWhileTyping:
    """A Meta sender whose typing indicator call stands for an operator closing the conversation (through
    the API) just after the assistant started on the message."""

    name = "meta"

    def __init__(self, db: psycopg.Connection, conversation_id: int) -> None:
        self.db, self.conversation_id = db, conversation_id

    def mark_read(
        self, provider_message_id: str, *, typing: bool = True, from_number: str | None = None
    ) -> None:
        self.db.execute(
            "UPDATE conversations SET status = 'closed', closed_at = now() WHERE id = %s",
            (self.conversation_id,),
        )


def test_a_handoff_asked_for_in_a_conversation_closed_meanwhile_is_neither_made_nor_confirmed(
    clean: None, db: psycopg.Connection
) -> None:
    convo = conversation(db, provider="meta", business="106540352242922")
    message_id = say(db, convo, "in", "I want to talk to a person", provider="meta")
    settings = load_settings(ai="offline", provider="meta", meta_access_token="t", meta_phone_number_id="9")

    assert ai_worker.reply_message(message_id, settings, sender=ClosingWhileTyping(db, convo[1])) == "silent"
    assert outbound_count(db) == 0
    status = db.execute("SELECT status FROM conversations WHERE id = %s", (convo[1],)).fetchone()["status"]
    assert status == "closed"
    assert handled(db, message_id)


@pytest.mark.parametrize(
    "meanwhile",
    [
        "UPDATE conversations SET status = 'handoff'",  # an agent took the conversation over
        "UPDATE contacts SET opted_out = true, opted_out_at = now()",  # STOP was routed
        "UPDATE conversations SET status = 'closed', closed_at = now()",  # closed through the API
    ],
)
def test_a_reply_is_dropped_when_the_conversation_is_taken_over_during_the_model_call(
    clean: None, db: psycopg.Connection, meanwhile: str
) -> None:
    message_id = say(db, conversation(db), "in", "What time do you open?")
    with FakeOpenAI() as fake:
        fake.content = "We open at 8."
        fake.while_answering = lambda: db.execute(meanwhile)
        assert ai_worker.reply_message(message_id, model_settings(fake)) == "silent"
    assert len(fake.completions()) == 1
    assert outbound_count(db) == 0
    assert handled(db, message_id)


# --- read receipt + typing indicator -------------------------------------------------------------------


def test_meta_marks_the_message_read_with_a_typing_indicator(clean: None, db: psycopg.Connection) -> None:
    convo = conversation(db, provider="meta", business="106540352242922")
    message_id = say(db, convo, "in", "hi", provider="meta")
    wamid = db.execute("SELECT provider_message_id FROM messages WHERE id = %s", (message_id,)).fetchone()
    with FakeGraph("meta-token") as graph:
        settings = load_settings(
            ai="offline",
            provider="meta",
            meta_access_token="meta-token",
            meta_phone_number_id="999999",
            meta_graph_url=graph.url,
        )
        assert ai_worker.reply_message(message_id, settings, sender=MetaSender(settings)) == "offline"
    (request,) = graph.received
    assert request.path == "/v21.0/106540352242922/messages"  # from the number the user wrote to
    assert request.json == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": wamid["provider_message_id"],
        "typing_indicator": {"type": "text"},
    }
    assert reply_row(db, message_id) is not None


@pytest.mark.parametrize(
    "refusal",
    [
        {"error": {"message": "Invalid parameter", "code": 100}},
        {"error": "Invalid API key"},  # a proxy's error bodies, not shaped like Graph's
        ["not", "an", "object"],
        {"error": {"code": 100, "error_data": "no details"}},
    ],
)
def test_a_refused_typing_indicator_does_not_stop_the_reply(
    clean: None, db: psycopg.Connection, refusal: Any
) -> None:
    convo = conversation(db, provider="meta", business="106540352242922")
    message_id = say(db, convo, "in", "hi", provider="meta")
    with FakeGraph("meta-token") as graph:
        graph.respond(400, refusal)
        settings = load_settings(
            ai="offline", provider="meta", meta_access_token="meta-token", meta_phone_number_id="999999",
            meta_graph_url=graph.url,
        )  # fmt: skip
        assert ai_worker.reply_message(message_id, settings, sender=MetaSender(settings)) == "offline"
    assert len(graph.received) == 1
    assert reply_row(db, message_id) is not None


def test_twilio_has_no_typing_indicator_call(clean: None, db: psycopg.Connection) -> None:
    message_id = say(db, conversation(db), "in", "hi")
    with FakeTwilioAPI() as fake:
        settings = load_settings(
            ai="offline", provider="twilio", twilio_account_sid=fake.account_sid,
            twilio_auth_token=fake.auth_token, twilio_whatsapp_number=BUSINESS,
            twilio_api_url=fake.url,
        )  # fmt: skip
        record = get_inbound(message_id)
        assert ai_worker.show_typing(record, settings, TwilioSender(settings)) is False
    assert fake.requests() == []


# --- routing per business number -----------------------------------------------------------------------


def test_a_number_with_an_assistant_config_routes_to_the_assistant_in_any_mode(
    clean: None, redis_client: redis.Redis
) -> None:
    project = load_settings(mode="project")
    assert route(event("hello"), project).handler == "commands.handle"
    assert route(event("hello", phone="+15550001111"), load_settings(mode="menu")).handler == "flows.step"

    put_config(BUSINESS, system_prompt="You answer for the shop.")
    assert route(event("hello", phone="+15550002222"), project).handler == "ai.reply"
    assert route(event("/help", phone="+15550003333"), load_settings(mode="menu")).handler == "ai.reply"
    # Linking still works on an assistant number.
    assert route(event("VERIFY 123456", phone="+15550004444"), project).handler == "verify.check_code"
    assert [task for task, _ in queued(redis_client, "ai")] == ["ai.reply", "ai.reply"]


# --- real worker processes -----------------------------------------------------------------------------


def test_workers_answer_an_assistant_number_with_history_and_once_on_redelivery(
    clean: None,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
    test_servers: dict[str, str],
) -> None:
    put_config(BUSINESS, system_prompt="You are the shop's assistant.", model="kimi-k2", max_tokens=64)
    publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
    with FakeOpenAI() as fake:
        fake.content = "Sure, we ship to Bogotá."
        start_worker(
            ["inbound", "ai"],
            env={
                "WAPIPE_MODE": "project",  # the number's config makes it an assistant anyway
                "OPENAI_API_KEY": "sk-worker",
                "OPENAI_BASE_URL": fake.url,
                "WAPIPE_AI": "openai",
            },
        )
        first = event("Hi, do you ship to Colombia?", sid=f"SM{uuid.uuid4().hex}")
        publisher.publish([Job("inbound.route", {"event": first})])
        first_reply = wait_for(
            lambda: db.execute(
                "SELECT m.body, m.payload FROM messages m WHERE m.direction = 'out'"
            ).fetchone(),
            what="the assistant's reply",
        )
        assert first_reply["body"] == "Sure, we ship to Bogotá."
        assert first_reply["payload"]["generated_by"] == "kimi-k2"

        fake.content = "Delivery takes 5 days."
        second = event("How long does it take?", sid=f"SM{uuid.uuid4().hex}")
        publisher.publish([Job("inbound.route", {"event": second})])
        wait_for(lambda: outbound_count(db) == 2, what="the second reply")
        message_id = db.execute("SELECT max(id) AS id FROM messages WHERE direction = 'in'").fetchone()["id"]
        # The task delivered twice more (a redelivery): no new reply, no new model call.
        redelivery = Job("ai.reply", {"message_id": message_id})
        publisher.publish([redelivery, redelivery])
        # Each run enqueues the send of its reply (again): 2 first runs + 2 redeliveries = 4 sends queued.
        wait_for(lambda: len(queued(redis_client, "notify")) == 4, what="the redelivered tasks' runs")

    assert len(fake.completions()) == 2
    assert outbound_count(db) == 2
    sent = fake.completions()[1].body
    assert sent["model"] == "kimi-k2"
    assert sent["max_completion_tokens"] == 64
    assert "max_tokens" not in sent
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", "You are the shop's assistant."),
        ("user", "Hi, do you ship to Colombia?"),
        ("assistant", "Sure, we ship to Bogotá."),
        ("user", "How long does it take?"),
    ]
