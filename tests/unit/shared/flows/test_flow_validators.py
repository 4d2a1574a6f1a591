"""Answer validators and SLA states: what a user may type or tap, and how deadlines read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.flows import sla
from shared.flows.pack import Meta, Step
from shared.flows.validators import Answer, Invalid, allowed, validate

CHOICE = Step(name="severity", prompt="?", kind="choice", choices=["Low", "Medium", "High"])
ORDER = Step(name="order", prompt="?", kind="regex", pattern=r"ORD-\d+", example="ORD-12345")
QTY = Step(name="qty", prompt="?", kind="number", min=1, max=10)
TEXT = Step(name="what", prompt="?", kind="text", max_length=10)


@pytest.mark.parametrize(
    "answer",
    [Answer("3"), Answer(" high "), Answer("HIGH"), Answer("High", "severity:3"), Answer("", "severity:3")],
)
def test_choice_accepts_number_label_any_case_and_tapped_id(answer: Answer) -> None:
    assert validate(CHOICE, answer) == "High"


@pytest.mark.parametrize("text", ["4", "0", "urgent", "", "Hig"])
def test_choice_rejects_with_the_allowed_options(text: str) -> None:
    with pytest.raises(Invalid) as caught:
        validate(CHOICE, Answer(text))
    assert "1 to 3" in caught.value.message
    assert "3. High" in caught.value.message


@pytest.mark.parametrize("text", ["²", "³", "①", "1" * 4301, "0" * 5000 + "1"])
def test_odd_digits_are_a_wrong_choice_not_a_crash(text: str) -> None:
    # "²" is a long press of 2 on a phone keyboard: str.isdigit() takes it, int() does not.
    with pytest.raises(Invalid, match="1 to 3"):
        validate(CHOICE, Answer(text))


def test_a_choice_typed_with_native_digits_is_that_choice() -> None:
    assert validate(CHOICE, Answer("٢")) == "Medium"  # Arabic-Indic 2
    assert validate(CHOICE, Answer("３")) == "High"  # full-width 3


@pytest.mark.parametrize("text", ["2.", "2)", "#2", " 2 ", "two", "Two", "TWO.", "*two*", "two 🙏"])
def test_a_choice_typed_as_people_type_numbers_is_that_choice(text: str) -> None:
    assert validate(CHOICE, Answer(text)) == "Medium"


@pytest.mark.parametrize("text", ["four", "zero", "4.", "#0", "0)", "2.5", "-2", "2..", "##2", "twoo"])
def test_a_number_the_choices_do_not_show_or_no_number_is_still_refused(text: str) -> None:
    with pytest.raises(Invalid, match="1 to 3"):
        validate(CHOICE, Answer(text))


def test_a_choice_labelled_as_a_number_word_is_its_label_first() -> None:
    counts = Step(name="count", prompt="?", kind="choice", choices=["Two", "Four"])
    assert validate(counts, Answer("two")) == "Two"
    assert validate(counts, Answer("2.")) == "Four"


# A step of a pack of the release before number words: its labels are numbers themselves.
HOW_MANY = Step(name="how_many", prompt="?", kind="choice", choices=["None", "One", "Two", "Three or more"])


@pytest.mark.parametrize("text", ["three", "four", "Four!", "five"])
def test_a_number_word_is_not_read_where_the_choices_are_numbers_themselves(text: str) -> None:
    # Before: "three" stored "Two" (choice 3) and "four" stored "Three or more" (choice 4), neither
    # the choice the user named; before number words were read, both were asked again.
    with pytest.raises(Invalid, match="1 to 4"):
        validate(HOW_MANY, Answer(text))


@pytest.mark.parametrize(
    ("text", "stored"),
    [("one", "One"), ("*Two*", "Two"), ("two 🙏", "Two"), ("three or more!", "Three or more"), ("3", "Two")],
)
def test_a_label_that_is_a_number_word_is_its_label_and_digits_still_count(text: str, stored: str) -> None:
    # Before: "*Two*" and "two 🙏" stored "One", the choice numbered two.
    assert validate(HOW_MANY, Answer(text)) == stored


@pytest.mark.parametrize(
    "labels", [["Low", "Two-tone"], ["Under ten", "Ten or more"], ["A", "Pick two", "B"]]
)
def test_a_number_word_is_not_read_where_a_label_names_a_number_word_anywhere(labels: list[str]) -> None:
    step = Step(name="pick", prompt="?", kind="choice", choices=labels)
    for text in ("one", "two", "three"):
        with pytest.raises(Invalid):
            validate(step, Answer(text))


BLOOD = Step(
    name="blood", prompt="?", kind="choice", choices=["A+", "A-", "B+", "B-", "AB+", "AB-", "O+", "O-"]
)


@pytest.mark.parametrize("text", ["O-.", "*O-*", "o- 🙏", "AB-!"])
def test_labels_alike_once_stripped_are_asked_again_not_given_to_the_first(text: str) -> None:
    # Before: stripped of punctuation, "O-" and "O+" are both "o", so "O-." stored "O+", "AB-!" "AB+".
    with pytest.raises(Invalid, match="1 to 8"):
        validate(BLOOD, Answer(text))


@pytest.mark.parametrize(("text", "stored"), [("O-", "O-"), ("o-", "O-"), ("ab+", "AB+"), ("8", "O-")])
def test_labels_alike_once_stripped_are_still_chosen_as_written(text: str, stored: str) -> None:
    assert validate(BLOOD, Answer(text)) == stored


def test_a_stripped_label_alike_no_other_is_still_its_choice() -> None:
    languages = Step(name="lang", prompt="?", kind="choice", choices=["C++", "C#", "Go"])
    with pytest.raises(Invalid):
        validate(languages, Answer("C#!"))  # before: "C++", the first label stripped to "c"
    assert validate(languages, Answer("C#")) == "C#"
    assert validate(languages, Answer("*go*")) == "Go"


def test_a_choice_takes_the_number_words_of_the_packs_language() -> None:
    spanish = Meta(name="taller", number_words=["Uno", "Dos", "Tres"])
    assert validate(CHOICE, Answer("dos"), spanish) == "Medium"
    with pytest.raises(Invalid):
        validate(CHOICE, Answer("two"), spanish)


@pytest.mark.parametrize("text", ["#2", "2.", "2)", "two"])
def test_a_number_or_regex_steps_answer_is_not_read_as_a_typed_choice(text: str) -> None:
    digit = Step(name="digit", prompt="?", kind="regex", pattern=r"\d", example="2")
    for step in (QTY, digit):
        with pytest.raises(Invalid):
            validate(step, Answer(text))


def test_a_tapped_id_of_another_step_is_not_a_choice() -> None:
    with pytest.raises(Invalid):
        validate(CHOICE, Answer("", "defect_type:1"))


def test_regex_is_case_insensitive_and_normalised_to_upper() -> None:
    assert validate(ORDER, Answer(" ord-12345 ")) == "ORD-12345"
    for bad in ("12345", "ORD-12345x", "ORD-", "order ORD-1"):
        with pytest.raises(Invalid, match="ORD-12345"):
            validate(ORDER, Answer(bad))


def test_a_wrong_format_is_explained_by_its_example_never_by_the_raw_pattern() -> None:
    # A WhatsApp user cannot read "ORD-\d+"; the example says the same to them.
    assert allowed(ORDER) == "That doesn't look right. Please send it like ORD-12345."
    bare = Step(name="code", prompt="?", kind="regex", pattern=r"[A-Z]{3}\d{4}")
    assert allowed(bare) == "That doesn't look right. Please check it and send it again."


def test_number_range() -> None:
    assert validate(QTY, Answer("7")) == 7
    for bad in ("0", "11", "2.5", "seven", ""):
        with pytest.raises(Invalid, match="from 1 to 10"):
            validate(QTY, Answer(bad))
    decimal = Step(name="kg", prompt="?", kind="number", min=0.5, max=2, integer=False)
    assert validate(decimal, Answer("1,5")) == 1.5


@pytest.mark.parametrize("text", ["9" * 400, "1" * 16, "1." + "5" * 16, "²"])
def test_an_absurdly_long_number_is_refused_not_stored_as_inf(text: str) -> None:
    # Unbounded, "9" * 400 became float("inf"), which the flow's JSON record cannot hold.
    unbounded = Step(name="kg", prompt="?", kind="number", integer=False)
    with pytest.raises(Invalid, match="Please send a number"):
        validate(unbounded, Answer(text))
    assert validate(unbounded, Answer("9" * 15)) == 999_999_999_999_999
    assert validate(unbounded, Answer("١٢")) == 12  # Arabic-Indic digits


def test_free_text_length_limit() -> None:
    assert validate(TEXT, Answer("  scratched ")) == "scratched"
    for bad in ("", "   ", "x" * 11):
        with pytest.raises(Invalid, match="1 to 10 characters"):
            validate(TEXT, Answer(bad))


SPANISH = Meta(
    name="taller",
    regex_invalid_example="No parece correcto. Envíalo como {example}.",
    regex_invalid="No parece correcto. Revísalo y envíalo otra vez.",
    number_between="Envía {number} entre {min} y {max}.",
    number_at_least="Envía {number} de al menos {min}.",
    number_at_most="Envía {number} de como mucho {max}.",
    number_invalid="Envía {number}.",
    number_whole="un número entero",
    number_decimal="un número",
    text_length_invalid="Envía un texto de {min_length} a {max_length} caracteres.",
)


@pytest.mark.parametrize(
    ("step", "answer", "told"),
    [
        (ORDER, "12345", "No parece correcto. Envíalo como ORD-12345."),
        (
            Step(name="c", prompt="?", kind="regex", pattern="X"),
            "Y",
            "No parece correcto. Revísalo y envíalo otra vez.",
        ),
        (QTY, "11", "Envía un número entero entre 1 y 10."),
        (
            Step(name="kg", prompt="?", kind="number", min=0.5, integer=False),
            "0",
            "Envía un número de al menos 0.5.",
        ),
        (Step(name="n", prompt="?", kind="number", max=3), "4", "Envía un número entero de como mucho 3."),
        (Step(name="n", prompt="?", kind="number"), "x", "Envía un número entero."),
        (TEXT, "x" * 11, "Envía un texto de 1 a 10 caracteres."),
    ],
)
def test_a_wrong_answer_is_told_in_the_packs_words(step: Step, answer: str, told: str) -> None:
    with pytest.raises(Invalid) as caught:
        validate(step, Answer(answer), SPANISH)
    assert caught.value.message == told


def test_a_steps_own_error_text_wins_over_the_packs() -> None:
    own = Step(name="o", prompt="?", kind="regex", pattern="X", error="Solo X.")
    assert allowed(own, SPANISH) == "Solo X."


NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_ticket_sla_ok_warning_breached() -> None:
    created = NOW - timedelta(hours=10)
    assert sla.ticket_state(created, created + timedelta(hours=24), NOW) == "OK"  # 14 of 24 h left
    assert sla.ticket_state(created, created + timedelta(hours=12), NOW) == "WARNING"  # 2 of 12 h left
    assert sla.ticket_state(created, NOW, NOW) == "BREACHED"
    assert sla.describe_remaining(NOW + timedelta(hours=5, minutes=20), NOW) == "5h 20m left"
    assert sla.describe_remaining(NOW - timedelta(days=2, hours=3), NOW) == "overdue by 2d 3h"


def test_order_sla_on_track_at_risk_breached_and_done() -> None:
    created = NOW - timedelta(days=9)
    assert sla.order_state("IN PRODUCTION", 50, created, created + timedelta(days=20), NOW) == "on track"
    assert sla.order_state("IN PRODUCTION", 50, created, created + timedelta(days=10), NOW) == "at risk"
    assert sla.order_state("IN PRODUCTION", 50, created, created + timedelta(days=8), NOW) == "breached"
    assert sla.order_state("COMPLETED", 100, created, created + timedelta(days=8), NOW) == "on track"


OPTIONAL = Step(name="note", prompt="Anything to add? (optional)", kind="text", min_length=0, max_length=10)


@pytest.mark.parametrize("word", ["skip", "Skip", "*SKIP*", " skip! "])
def test_the_skip_word_leaves_an_optional_text_empty(word: str) -> None:
    # Before: stored as the note itself; WhatsApp sends no empty text, so nothing left the step empty.
    assert validate(OPTIONAL, Answer(word)) == ""


def test_an_optional_text_is_told_how_to_skip_it_not_to_send_0_characters() -> None:
    with pytest.raises(Invalid) as caught:
        validate(OPTIONAL, Answer("x" * 11))
    # Before: "Please send a text of 0 to 10 characters.", which nobody can send.
    assert (
        caught.value.message
        == "Please send a text of at most 10 characters, or *skip* to skip this question."
    )


@pytest.mark.parametrize("word", ["skip", "*Skip*"])
def test_a_skip_word_on_a_required_text_is_told_the_question_needs_an_answer(word: str) -> None:
    # It was saved as the answer "skip".
    with pytest.raises(Invalid) as info:
        validate(TEXT, Answer(word))
    assert info.value.message == (
        "This question needs an answer, it can't be skipped. Please send a text of 1 to 10 characters."
    )


def test_a_skip_word_on_a_required_text_is_told_so_in_the_packs_own_words() -> None:
    texts = Meta(name="taller", skip_words=["Omitir"], text_required="Esta pregunta no se puede omitir.")
    with pytest.raises(Invalid) as info:
        validate(TEXT, Answer("omitir"), texts)
    assert info.value.message == "Esta pregunta no se puede omitir. Please send a text of 1 to 10 characters."
    # Not one of this pack's skip words: an answer like any other.
    assert validate(TEXT, Answer("skip"), texts) == "skip"


def test_a_pack_in_its_own_words_without_the_required_text_is_told_only_what_the_step_takes() -> None:
    # A pack of a release before text_required, in Spanish: no English sentence in front of its own.
    texts = Meta(
        name="taller", text_length_invalid="Envía un texto de {min_length} a {max_length} caracteres."
    )
    with pytest.raises(Invalid) as info:
        validate(TEXT, Answer("skip"), texts)
    assert info.value.message == "Envía un texto de 1 a 10 caracteres."


def test_an_optional_text_is_skipped_and_told_so_in_the_packs_own_words() -> None:
    texts = Meta(
        name="taller",
        skip_words=["Omitir"],
        text_optional_invalid="Envía hasta {max_length} caracteres, o *{skip_word}* para saltarla.",
    )
    assert validate(OPTIONAL, Answer("omitir"), texts) == ""
    assert validate(OPTIONAL, Answer("skip"), texts) == "skip"
    assert allowed(OPTIONAL, texts) == "Envía hasta 10 caracteres, o *omitir* para saltarla."


def test_a_pack_that_translated_the_length_text_but_has_no_optional_one_keeps_its_own_words() -> None:
    # A pack of the release before text_optional_invalid, in Spanish, as it was written then.
    texts = Meta(
        name="taller", text_length_invalid="Envía un texto de {min_length} a {max_length} caracteres."
    )
    # Before: "Please send a text of at most 10 characters, or *skip* to skip this question.", in English.
    assert allowed(OPTIONAL, texts) == "Envía un texto de 0 a 10 caracteres."
    assert allowed(TEXT, texts) == "Envía un texto de 1 a 10 caracteres."


def test_a_choices_own_error_text_listing_the_choices_is_not_followed_by_them_again() -> None:
    # A pack of the release before 9a6f8e7, whose error text listed the choices as the bot numbers them.
    listed = Step(
        name="nivel", prompt="?", kind="choice", choices=["Bajo", "Alto"], error="Elige:\n1. Bajo\n2. Alto"
    )
    # Before: "Elige:\n1. Bajo\n2. Alto\n1. Bajo\n2. Alto".
    assert allowed(listed) == "Elige:\n1. Bajo\n2. Alto"
    worded = Step(
        name="nivel", prompt="?", kind="choice", choices=["Bajo", "Alto"], error="¿Qué tan urgente?"
    )
    assert allowed(worded) == "¿Qué tan urgente?\n1. Bajo\n2. Alto"
