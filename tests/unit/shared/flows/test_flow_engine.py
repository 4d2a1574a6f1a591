"""The engine with a pack of its own: words a pack author spells as people write them still work."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.flows import registry
from shared.flows.engine import Outcome, advance, menu_text, timed_out
from shared.flows.pack import Pack, parse_pack
from shared.flows.registry import FlowContext, Rejected
from shared.flows.validators import Answer
from shared.providers.base import OutboundMessage
from shared.providers.meta.client import build_payload
from shared.wire.outbound_api import INTERACTIVE_BODY_MAX

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
    state, text = _send(pack, state, "")  # an answer with no text at all
    assert state["flow"] == "urgencia"
    assert "1 to 2" in text
    state, _ = _send(pack, state, "#")
    assert state == {"pack": "taller", "flow": None}


def test_a_number_word_picks_no_menu_option_where_a_title_names_a_number() -> None:
    titled = SPANISH.replace('title = "Urgencia"', 'title = "Dos minutos"').replace(
        'greeting = "¡Hola!"', 'greeting = "¡Hola!"\nnumber_words = ["uno", "dos"]'
    )
    pack = parse_pack(titled + SPANISH[SPANISH.index("[[flows]]") :].replace("urgencia", "otra"))
    # Before: "dos" started the second option ("Urgencia"), not "Dos minutos", which the user named.
    state, text = _send(pack, {"pack": "taller", "flow": None}, "dos")
    assert state == {"pack": "taller", "flow": None}
    assert "1. Dos minutos" in text
    assert _send(pack, {"pack": "taller", "flow": None}, "Dos minutos")[0]["flow"] == "urgencia"


def test_menu_titles_alike_once_stripped_are_asked_again_not_given_to_the_first() -> None:
    titled = SPANISH.replace('title = "Urgencia"', 'title = "C++"')
    pack = parse_pack(
        titled + SPANISH[SPANISH.index("[[flows]]") :].replace("urgencia", "otra").replace("Urgencia", "C#")
    )
    # Before: "C#!" started "C++", the first title that is "c" once stripped of its symbols.
    state, text = _send(pack, {"pack": "taller", "flow": None}, "C#!")
    assert state == {"pack": "taller", "flow": None}
    assert "2. C#" in text
    assert _send(pack, {"pack": "taller", "flow": None}, "c#")[0]["flow"] == "otra"


@pytest.mark.timeout(10)
def test_a_long_answer_of_punctuation_between_words_is_read_at_once() -> None:
    # The strip of punctuation around a word was tried from every character of such a run to its end:
    # 16,000 of them took 2.5 s, a message's 65,536 about 40 s, holding the conversation's flow worker.
    pack = parse_pack(SPANISH)
    state, _ = _send(pack, {}, "1")
    state, text = _send(pack, state, "a" + "!" * 65_534 + "a")
    assert state["flow"] == "urgencia"
    assert "1 to 2" in text


@pytest.mark.parametrize(
    ("minutes", "said"), [(1, "after 1 minute without"), (30, "after 30 minutes without")]
)
def test_a_form_timed_out_says_its_minutes_in_the_singular_or_the_plural(minutes: int, said: str) -> None:
    outcome = timed_out(parse_pack(SPANISH), {"flow": "urgencia", "title": "Urgencia"}, minutes=minutes)
    assert said in outcome.text


@pytest.mark.parametrize(("minutes", "said"), [(1, "en 1 minuto."), (5, "en 5 minutos.")])
def test_a_form_timed_out_says_its_minutes_in_the_packs_own_words(minutes: int, said: str) -> None:
    texts = (
        'form_timed_out = "⏱️ *{flow_title}*: sin respuesta en {duration}."\n'
        'minutes_one = "{minutes} minuto"\nminutes_many = "{minutes} minutos"'
    )
    pack = parse_pack(SPANISH.replace('greeting = "¡Hola!"', f'greeting = "¡Hola!"\n{texts}'))
    outcome = timed_out(pack, {"flow": "urgencia", "title": "Urgencia"}, minutes=minutes)
    assert outcome.text.startswith(f"⏱️ *Urgencia*: sin respuesta {said}\n")


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


# A choice whose prompt repeats an earlier free-text answer: a prompt well within WhatsApp's 1,024
# characters at load can render past them.
REPEATED = """\
[pack]
name = "workshop"

[[flows]]
id = "defect"
title = "Defect"

  [[flows.steps]]
  name = "place"
  prompt = "Where is it?"
  kind = "text"
  max_length = 2000

  [[flows.steps]]
  name = "severity"
  prompt = "{place}: how severe is it?"
  kind = "choice"
  choices = ["Low", "High"]

  [flows.action]
  name = "reply"
  reply = "Noted: {severity}."
"""


def _advanced(pack: Pack, state: dict[str, Any], text: str) -> Outcome:
    ctx = FlowContext(conn=None, contact_id=1, conversation_id=1, message_id=1, now=datetime.now(UTC))  # type: ignore[arg-type]
    return advance(pack, state, Answer(text), ctx)


def _sent_by_meta(outcome: Outcome) -> dict[str, Any]:
    """The Cloud API request the reply becomes: the one the Meta sender makes, or its SendError."""
    kind = outcome.payload["type"] if outcome.payload else "text"
    message = OutboundMessage.from_record(
        id=1, to="+15550100001", type=kind, body=outcome.text, payload=outcome.payload or {}, from_number=None
    )
    return build_payload(message)


def test_a_prompt_rendered_past_whatsapps_body_limit_is_sent_as_its_plain_text() -> None:
    pack = parse_pack(REPEATED)
    state = _advanced(pack, {}, "1").state
    asked = _advanced(pack, state, "by the press " * 90)  # 1,170 characters

    # Before: reply buttons with a body of 1,189 characters, which the Meta sender refused for good
    # (body_too_long): the user got nothing, the form stuck at a question never asked.
    assert asked.payload is None
    assert _sent_by_meta(asked)["type"] == "text"
    assert "\n1. Low\n2. High\n" in asked.text
    assert _advanced(pack, asked.state, "2").text == "Noted: High."


def test_a_prompt_within_whatsapps_body_limit_keeps_its_buttons() -> None:
    pack = parse_pack(REPEATED)
    state = _advanced(pack, {}, "1").state
    asked = _advanced(pack, state, "by the press")
    assert asked.payload is not None
    assert _sent_by_meta(asked)["interactive"]["action"]["buttons"][1]["reply"]["title"] == "High"


def test_a_first_prompt_of_the_full_length_with_its_flows_title_is_sent_as_its_plain_text() -> None:
    longest = f'prompt = "{"W" * INTERACTIVE_BODY_MAX}"\n  kind = "choice"\n  choices = ["Line 1", "Line 2"]'
    pack = parse_pack(
        REPEATED.replace('prompt = "Where is it?"\n  kind = "text"\n  max_length = 2000', longest)
    )
    started = _advanced(pack, {}, "1")  # "*Defect*" before the prompt: 1,033 characters
    assert started.payload is None
    assert _sent_by_meta(started)["type"] == "text"
    assert "\n1. Line 1\n2. Line 2\n" in started.text


def test_a_menu_whose_notice_takes_it_past_whatsapps_body_limit_is_sent_as_its_plain_text() -> None:
    pack = parse_pack(
        REPEATED.replace('name = "workshop"', f'name = "workshop"\nmenu_prompt = "{"M" * 950}"')
    )
    assert _sent_by_meta(menu_text(pack, preface="Hello!"))["type"] == "interactive"

    told = timed_out(pack, {"flow": "defect", "title": "Defect"}, minutes=30)
    assert told.payload is None
    assert _sent_by_meta(told)["type"] == "text"
    assert told.text.endswith("\n1. Defect")


# The choice with an `error` text of its own, which says what the question is about rather than what to send.
OWN_ERROR = REPEATED.replace(
    'choices = ["Low", "High"]', 'choices = ["Low", "High"]\n  error = "Tell us how severe it is."'
)


def test_a_wrong_choice_told_a_steps_own_error_text_is_shown_the_choices_again() -> None:
    pack = parse_pack(OWN_ERROR)
    state = _advanced(pack, {}, "1").state
    asked = _advanced(pack, state, "by the press")
    told = _advanced(pack, asked.state, "very")

    # Before: "⚠️ Tell us how severe it is." and the cancel hint alone, which is all a provider sending
    # plain text (Twilio) sends: nothing said the answer is 1 or 2.
    assert told.text.startswith("⚠️ Tell us how severe it is.\n1. Low\n2. High\n")
    assert told.payload is not None
    assert _advanced(pack, told.state, "2").text == "Noted: High."


def test_a_steps_own_error_text_too_long_for_buttons_is_sent_with_its_choices() -> None:
    wordy = "Tell us how severe it is. " * 40  # 1,040 characters
    pack = parse_pack(OWN_ERROR.replace("Tell us how severe it is.", wordy))
    state = _advanced(pack, {}, "1").state
    told = _advanced(pack, _advanced(pack, state, "by the press").state, "very")

    # Before: sent as plain text (too long for an interactive body) without the choices the buttons held.
    assert told.payload is None
    assert _sent_by_meta(told)["type"] == "text"
    assert "\n1. Low\n2. High\n" in told.text


@registry.lookup("severity_open")
def _severity_open(ctx: FlowContext, value: str, data: Mapping[str, Any]) -> dict[str, Any]:
    if value == "Low":
        raise Rejected("Low-severity reports are closed this week.")
    return {}


def test_a_choice_a_lookup_rejects_is_shown_the_choices_again() -> None:
    pack = parse_pack(
        REPEATED.replace('choices = ["Low", "High"]', 'choices = ["Low", "High"]\n  lookup = "severity_open"')
    )
    state = _advanced(pack, {}, "1").state
    told = _advanced(pack, _advanced(pack, state, "by the press").state, "1")

    # Before: the lookup's words and the cancel hint alone, in plain text nothing to say what to send.
    assert told.text.startswith("⚠️ Low-severity reports are closed this week.\n1. Low\n2. High\n")
    assert told.state["step"] == 1
    assert _advanced(pack, told.state, "High").text == "Noted: High."


# A Spanish pack of the release before media_not_an_answer, no_text_not_an_answer, text_optional_invalid,
# skip_words and number_words: it words a wrong answer itself.
OWN_WORDS = SPANISH.replace(
    'greeting = "¡Hola!"', 'greeting = "¡Hola!"\nchoice_invalid = "Responde del 1 al {count}:"'
)


def _advanced_by(pack: Pack, state: dict[str, Any], answer: Answer) -> Outcome:
    ctx = FlowContext(conn=None, contact_id=1, conversation_id=1, message_id=1, now=datetime.now(UTC))  # type: ignore[arg-type]
    return advance(pack, state, answer, ctx)


@pytest.mark.parametrize(
    "answer", [Answer("", media=True), Answer("", text_message=False)], ids=["media", "contact"]
)
def test_a_pack_in_its_own_words_is_told_no_english_notice_it_does_not_set(answer: Answer) -> None:
    pack = parse_pack(OWN_WORDS)
    state, _ = _send(pack, {}, "1")
    told = _advanced_by(pack, state, answer)

    # Before: "⚠️ 📎 A photo, video, voice note, sticker or file can't answer this question. Responde ...",
    # English before the pack's own words.
    assert told.text.startswith("⚠️ Responde del 1 al 2:\n1. Baja\n2. Alta\n")
    assert told.state["step"] == 0


def test_a_pack_in_its_own_words_that_sets_the_notice_is_told_it() -> None:
    pack = parse_pack(
        OWN_WORDS.replace("[[flows]]", 'media_not_an_answer = "📎 Una foto no vale."\n\n[[flows]]', 1)
    )
    state, _ = _send(pack, {}, "1")
    told = _advanced_by(pack, state, Answer("", media=True))
    assert told.text.startswith("⚠️ 📎 Una foto no vale. Responde del 1 al 2:\n")


def test_a_pack_in_english_is_still_told_the_notice() -> None:
    pack = parse_pack(SPANISH)  # sets no text for a wrong answer: those are English
    state, _ = _send(pack, {}, "1")
    told = _advanced_by(pack, state, Answer("", media=True))
    assert told.text.startswith("⚠️ 📎 A photo, video, voice note, sticker or file can't answer")
