"""The rule-based assistant: intents and language from the user's words, EN and ES."""

from __future__ import annotations

import pytest

from shared.ai.offline_assistant import TEXTS, Intent, intent_of, language_of, offline_reply


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("hi", Intent.greeting),
        ("Hello there!", Intent.greeting),
        ("Buenas tardes", Intent.greeting),
        ("¡Hola!", Intent.greeting),
        ("menu", Intent.menu),
        ("Menú", Intent.menu),
        ("help", Intent.menu),
        ("?", Intent.menu),
        ("I'd like to talk to a person", Intent.handoff),
        ("can I speak to someone from support", Intent.handoff),
        ("Human please", Intent.handoff),
        ("quiero hablar con un humano", Intent.handoff),
        ("¿Me pasas con un asesor?", Intent.handoff),
        ("Necesito comunicarme con alguien", Intent.handoff),
        ("are you human?", Intent.other),
        ("the person who delivered was late", Intent.other),
        ("thanks!", Intent.thanks),
        ("Muchas gracias", Intent.thanks),
        ("what are your prices", Intent.other),
    ],
)
def test_intents(text: str, intent: Intent) -> None:
    assert intent_of(text) is intent


@pytest.mark.parametrize(
    ("text", "language"),
    [("hi", "en"), ("menu", "en"), ("hola", "es"), ("¿precio?", "es"), ("necesito ayuda", "es")],
)
def test_language(text: str, language: str) -> None:
    assert language_of(text) == language


def test_a_greeting_uses_the_first_name_and_shows_the_menu() -> None:
    reply = offline_reply("hola", "María José López")
    assert reply.text == "👋 ¡Hola María! Soy el asistente automático.\n\n" + TEXTS["es"]["menu"]
    assert not reply.handoff


def test_a_greeting_without_a_name() -> None:
    assert offline_reply("hi", None).text.startswith("👋 Hi! I'm the automated assistant.")


def test_a_handoff_reply_is_the_confirmation_alone() -> None:
    reply = offline_reply("talk to a person")
    assert reply.handoff
    assert reply.text == TEXTS["en"][Intent.handoff]
