"""The engine with a pack of its own: words a pack author spells as people write them still work."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.flows.engine import advance, timed_out
from shared.flows.pack import Pack, parse_pack
from shared.flows.registry import FlowContext
from shared.flows.validators import Answer

# Capitalised words, as they would read in the pack's own language: a choice step and the "reply" action
# touch no database, so the context needs no connection.
SPANISH = """\
[pack]
name = "taller"
greeting = "¡Hola!"
menu_words = ["Hola", "Menú"]
cancel_words = ["Cancelar", "Menú"]
cancel_hint = "(envía *Cancelar* para volver al menú)"

[[flows]]
id = "urgencia"
title = "Urgencia"

  [[flows.steps]]
  name = "nivel"
  prompt = "¿Qué tan urgente?"
  kind = "choice"
  choices = ["Baja", "Alta"]

  [flows.action]
  name = "reply"
  reply = "Urgencia {nivel}."
"""


def _send(pack: Pack, state: dict[str, Any], text: str) -> tuple[dict[str, Any], str]:
    ctx = FlowContext(conn=None, contact_id=1, conversation_id=1, message_id=1, now=datetime.now(UTC))  # type: ignore[arg-type]
    outcome = advance(pack, state, Answer(text), ctx)
    return outcome.state, outcome.text


@pytest.mark.parametrize("word", ["Cancelar", "cancelar", "CANCELAR", "menú"])
def test_a_capitalised_cancel_word_of_the_pack_leaves_the_form(word: str) -> None:
    pack = parse_pack(SPANISH)
    state, _ = _send(pack, {}, "1")
    assert state["flow"] == "urgencia"
    state, text = _send(pack, state, word)
    assert state == {"pack": "taller", "flow": None}
    assert "1. Urgencia" in text


def test_a_capitalised_menu_word_of_the_pack_greets() -> None:
    pack = parse_pack(SPANISH)
    _, text = _send(pack, {"pack": "taller", "flow": None}, "hola")
    assert text.startswith("¡Hola!")


def test_a_pack_word_of_punctuation_alone_is_not_matched_by_an_empty_answer() -> None:
    pack = parse_pack(SPANISH.replace('cancel_words = ["Cancelar", "Menú"]', 'cancel_words = ["#"]'))
    state, _ = _send(pack, {}, "1")
    state, text = _send(pack, state, "")  # a photo without a caption
    assert state["flow"] == "urgencia"
    assert "1 to 2" in text
    state, _ = _send(pack, state, "#")
    assert state == {"pack": "taller", "flow": None}


@pytest.mark.timeout(10)
def test_a_long_answer_of_punctuation_between_words_is_read_at_once() -> None:
    # The strip of punctuation around a word was tried from every character of such a run to its end:
    # 16,000 of them took 2.5 s, a message's 65,536 about 40 s, holding the conversation's flow worker.
    pack = parse_pack(SPANISH)
    state, _ = _send(pack, {}, "1")
    state, text = _send(pack, state, "a" + "!" * 65_534 + "a")
    assert state["flow"] == "urgencia"
    assert "1 to 2" in text


def test_a_timed_out_form_is_told_in_the_packs_own_words_before_its_menu() -> None:
    pack = parse_pack(
        SPANISH.replace(
            'greeting = "¡Hola!"',
            'greeting = "¡Hola!"\nform_timed_out = "⏱️ *{flow_title}*: sin respuesta en {minutes} minutos."',
        )
    )
    outcome = timed_out(pack, {"flow": "urgencia", "title": "Urgencia"}, minutes=30)
    assert outcome.state == {"pack": "taller", "flow": None}
    assert outcome.text.startswith("⏱️ *Urgencia*: sin respuesta en 30 minutos.\n")
    assert "1. Urgencia" in outcome.text


SPANISH_TEXTS = SPANISH.replace(
    'greeting = "¡Hola!"',
    'greeting = "¡Hola!"\n'
    'cancelled = "Vale, *{flow_title}* cancelado."\n'
    'not_understood = "Perdona, no te entendí."',
)


def test_a_cancelled_form_is_told_in_the_packs_own_words() -> None:
    pack = parse_pack(SPANISH_TEXTS)
    state, _ = _send(pack, {}, "1")
    state, text = _send(pack, state, "Cancelar")
    assert state == {"pack": "taller", "flow": None}
    assert text.startswith("Vale, *Urgencia* cancelado.\n")
    assert "OK, cancelled." not in text


def test_an_answer_the_menu_does_not_know_is_told_in_the_packs_own_words() -> None:
    pack = parse_pack(SPANISH_TEXTS)
    state, text = _send(pack, {"pack": "taller", "flow": None}, "quizá")
    assert state == {"pack": "taller", "flow": None}
    assert text.startswith("Perdona, no te entendí.\n")
    assert "1. Urgencia" in text
    assert "Sorry" not in text


def test_a_pack_without_these_texts_answers_in_english() -> None:
    pack = parse_pack(SPANISH)
    state, _ = _send(pack, {}, "1")
    assert _send(pack, state, "Cancelar")[1].startswith("OK, cancelled.\n")
    assert _send(pack, {"pack": "taller", "flow": None}, "quizá")[1].startswith("Sorry, I didn't get that.\n")


def test_a_wrong_choice_is_told_in_the_packs_own_words() -> None:
    pack = parse_pack(
        SPANISH.replace(
            'greeting = "¡Hola!"', 'greeting = "¡Hola!"\nchoice_invalid = "Responde del 1 al {count}:"'
        )
    )
    state, _ = _send(pack, {}, "1")
    state, text = _send(pack, state, "quizá")
    assert state["step"] == 0
    assert text.startswith("⚠️ Responde del 1 al 2:\n1. Baja\n2. Alta\n")
    assert "Please" not in text
