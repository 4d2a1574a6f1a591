"""Flow packs: the shipped pack validates, and every kind of mistake is reported with its line."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from shared.flows.pack import PackError, get_pack, load_pack, parse_pack, resolve
from shared.flows.validators import Answer, Invalid, validate

GOOD = """\
[pack]
name = "tiny"

[[flows]]
id = "ask"
title = "Ask"

  [[flows.steps]]
  name = "qty"
  prompt = "How many?"
  kind = "number"
  min = 1
  max = 10

  [flows.action]
  name = "reply"
  reply = "You asked for {qty}."
"""


def _lines(error: PackError) -> list[int | None]:
    return [line for line, _ in error.problems]


def test_shipped_shopfloor_pack_is_valid_with_six_options() -> None:
    pack = load_pack("shopfloor")
    assert [flow.title for flow in pack.flows] == [
        "Report a defect",
        "Order status",
        "Report maintenance",
        "My open tickets",
        "SLA status of a ticket",
        "Talk to a person",
    ]


def test_wapipe_flows_takes_a_shipped_name_or_a_toml_path(tmp_path: Path) -> None:
    custom = tmp_path / "custom.toml"
    custom.write_text(GOOD, encoding="utf-8")
    assert resolve("shopfloor").name == "shopfloor.toml"
    assert load_pack(str(custom)).name == "tiny"
    get_pack.cache_clear()
    assert get_pack(str(custom)).flows[0].steps[0].max == 10
    with pytest.raises(PackError, match=r"shipped packs: .*shopfloor"):
        load_pack("nope")


def test_unknown_key_is_reported_on_its_line() -> None:
    text = GOOD.replace('  prompt = "How many?"', '  promt = "How many?"')
    with pytest.raises(PackError) as caught:
        parse_pack(text, "tiny.toml")
    assert 10 in _lines(caught.value)
    assert "tiny.toml:10: flows[0].steps[0].promt" in str(caught.value)


def test_bad_regex_and_unknown_lookup_name_their_lines() -> None:
    text = GOOD.replace(
        '  kind = "number"\n  min = 1\n  max = 10\n',
        '  kind = "regex"\n  pattern = "ORD-(\\\\d+"\n  lookup = "nope_lookup"\n',
    )
    with pytest.raises(PackError) as caught:
        parse_pack(text, "tiny.toml")
    message = str(caught.value)
    assert "tiny.toml:12: flows[0].steps[0].pattern" in message
    assert "regular expression" in message
    assert "tiny.toml:13: flows[0].steps[0].lookup" in message
    assert "unknown lookup 'nope_lookup'" in message


def test_unknown_action_and_missing_field_in_second_flow() -> None:
    text = GOOD + '\n[[flows]]\nid = "two"\n\n  [flows.action]\n  name = "explode"\n  reply = "x"\n'
    with pytest.raises(PackError) as caught:
        parse_pack(text, "tiny.toml")
    message = str(caught.value)
    # The second flow starts on line 19: its missing title is reported there, the bad action on line 23.
    assert "tiny.toml:19: flows[1].title: Field required" in message
    assert "tiny.toml:23: flows[1].action.name" in message


def test_placeholder_nothing_provides_names_the_template_line() -> None:
    text = GOOD.replace('reply = "You asked for {qty}."', 'reply = "You asked for {qtty}."')
    with pytest.raises(PackError) as caught:
        parse_pack(text, "tiny.toml")
    assert _lines(caught.value) == [17]
    assert "{qtty} is not provided" in str(caught.value)


def test_choice_step_without_choices_names_the_step() -> None:
    text = GOOD.replace('kind = "number"', 'kind = "choice"')
    with pytest.raises(PackError) as caught:
        parse_pack(text, "tiny.toml")
    assert _lines(caught.value) == [8]
    assert "needs `choices`" in str(caught.value)


def test_a_number_answer_that_is_also_a_cancel_word_is_refused() -> None:
    # The engine reads a cancel word before the step's answer: with "0" a cancel word (the default), a step
    # taking 0 could never be given it, and the user would be sent back to the menu instead.
    text = GOOD.replace("min = 1", "min = 0")
    with pytest.raises(PackError) as caught:
        parse_pack(text, "tiny.toml")
    assert _lines(caught.value) == [8]
    assert "'0' is a cancel word" in str(caught.value)
    # Valid once "0" no longer cancels.
    parse_pack(text.replace('name = "tiny"', 'name = "tiny"\ncancel_words = ["x"]'))


def test_a_choice_whose_number_is_a_cancel_word_is_refused() -> None:
    text = GOOD.replace('kind = "number"', 'kind = "choice"\n  choices = ["a", "b"]').replace(
        'name = "tiny"', 'name = "tiny"\ncancel_words = ["2", "stop"]'
    )
    with pytest.raises(PackError, match="'2' is a cancel word"):
        parse_pack(text, "tiny.toml")


def test_toml_syntax_error_names_the_line() -> None:
    text = GOOD.replace('title = "Ask"', 'title = "Ask')
    with pytest.raises(PackError) as caught:
        parse_pack(text, "tiny.toml")
    assert _lines(caught.value) == [6]


def test_multiline_strings_do_not_confuse_line_numbers() -> None:
    text = GOOD.replace('reply = "You asked for {qty}."', 'reply = """You asked\n[[flows]]\nfor {qty}."""')
    text += '\n[[flows]]\nid = "Bad Id"\ntitle = "x"\n[flows.action]\nname = "reply"\nreply = "x"\n'
    with pytest.raises(PackError) as caught:
        parse_pack(text, "tiny.toml")
    # A header-looking line inside the string (line 18) neither counts as a flow nor shifts the lines.
    assert "tiny.toml:22: flows[1].id" in str(caught.value)


def test_a_timed_out_notice_naming_an_unknown_value_names_its_line() -> None:
    text = GOOD.replace('name = "tiny"', 'name = "tiny"\nform_timed_out = "{flow_title} expired at {when}"')
    with pytest.raises(PackError) as caught:
        parse_pack(text, "tiny.toml")
    assert "tiny.toml:3: pack.form_timed_out" in str(caught.value)
    assert "{when}" in str(caught.value)


@pytest.mark.parametrize(
    ("line", "field", "unknown"),
    [
        ('cancelled = "{flow_title} cancelled at {step}"', "cancelled", "{step}"),
        ('not_understood = "Sorry, {flow_title}?"', "not_understood", "{flow_title}"),
        ('choice_invalid = "Del 1 al {max}:"', "choice_invalid", "{max}"),
        ('number_between = "Entre {min} y {hasta}"', "number_between", "{hasta}"),
        ('order_not_found = "Pedido {order_number}?"', "order_not_found", "{order_number}"),
    ],
)
def test_a_pack_text_naming_an_unknown_value_names_its_line(line: str, field: str, unknown: str) -> None:
    with pytest.raises(PackError) as caught:
        parse_pack(GOOD.replace('name = "tiny"', f'name = "tiny"\n{line}'), "tiny.toml")
    assert f"tiny.toml:3: pack.{field}" in str(caught.value)
    assert unknown in str(caught.value)


def test_a_stray_brace_in_a_pack_text_is_found_when_the_pack_loads() -> None:
    with pytest.raises(PackError) as caught:
        parse_pack(GOOD.replace('name = "tiny"', 'name = "tiny"\nnot_understood = "Sorry :-{"'), "tiny.toml")
    assert "tiny.toml:3: pack.not_understood" in str(caught.value)
    assert "{{" in str(caught.value)  # how to write a brace of its own


def test_a_pack_setting_the_unused_menu_hint_is_told_so_and_still_loads() -> None:
    """menu_hint was never shown to anyone (each action's reply says "Send *menu* ..." in its own words):
    an author who set it hears, at start and with its line, that it does nothing, and the pack loads."""
    text = GOOD.replace('name = "tiny"', 'name = "tiny"\nmenu_hint = "Send *menu* again."')
    with structlog.testing.capture_logs() as logs:
        pack = parse_pack(text, "tiny.toml")
    assert pack.name == "tiny"
    warned = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(entry["key"], entry["where"]) for entry in warned] == [("pack.menu_hint", "tiny.toml:3")]
    assert not hasattr(pack.pack, "menu_hint")


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('number_between = "De {min:.0f} a {max:.0f}."', "number_between"),
        ('choice_invalid = "Del 1 al {count!z}:"', "choice_invalid"),
        ('time_left = "{time.days} left"', "time_left"),
        ('form_timed_out = "{flow_title:d} ended"', "form_timed_out"),
    ],
)
def test_a_pack_text_its_values_cannot_fill_in_is_refused_when_the_pack_loads(line: str, field: str) -> None:
    """A format its value cannot take ({min} is text) loaded, then stopped the reply to the first wrong
    answer: the user was never told what to send."""
    with pytest.raises(PackError) as caught:
        parse_pack(GOOD.replace('name = "tiny"', f'name = "tiny"\n{line}'), "tiny.toml")
    assert f"tiny.toml:3: pack.{field}" in str(caught.value)


def test_a_pack_text_formatting_its_values_as_they_are_loads_and_renders() -> None:
    texts = 'number_between = "Send {number} in [{min:>3}, {max:<3}]."\nform_timed_out = "{minutes:d} min."'
    pack = parse_pack(GOOD.replace('name = "tiny"', f'name = "tiny"\n{texts}'), "tiny.toml")
    step = pack.flows[0].steps[0]
    with pytest.raises(Invalid) as caught:
        validate(step, Answer("eleven", None), pack.pack)
    assert caught.value.message == "Send a whole number in [  1, 10 ]."


def test_a_skip_word_that_is_also_a_cancel_word_is_refused() -> None:
    # The engine reads a cancel word first: the user sending it to skip a question would lose the form.
    with pytest.raises(PackError) as caught:
        parse_pack(GOOD.replace('name = "tiny"', 'name = "tiny"\nskip_words = ["0", "Pass"]'), "tiny.toml")
    assert "tiny.toml:3: pack.skip_words" in str(caught.value)
    assert "'0' is a cancel word" in str(caught.value)
    pack = parse_pack(GOOD.replace('name = "tiny"', 'name = "tiny"\nskip_words = ["Pass"]'))
    assert pack.pack.skip_words == ["pass"]


def test_a_pack_with_no_skip_word_is_refused() -> None:
    # An optional text step could then never be skipped, and its re-prompt would have no word to name.
    with pytest.raises(PackError) as caught:
        parse_pack(GOOD.replace('name = "tiny"', 'name = "tiny"\nskip_words = []'), "tiny.toml")
    assert "tiny.toml:3: pack.skip_words: List should have at least 1 item" in str(caught.value)


def test_a_reply_for_nothing_found_needs_an_action_that_counts_what_it_found() -> None:
    reply = 'reply = "You asked for {qty}."'
    text = GOOD.replace(reply, f'{reply}\n  reply_empty = "None."')
    with pytest.raises(PackError) as caught:
        parse_pack(text, source="tiny.toml")
    assert "tiny.toml:18: flows[0].action.reply_empty: action 'reply' counts nothing" in str(caught.value)


def test_a_reply_for_nothing_found_names_only_values_the_flow_provides() -> None:
    text = GOOD.replace('name = "reply"', 'name = "list_open_tickets"').replace(
        'reply = "You asked for {qty}."', 'reply = "{tickets}"\n  reply_empty = "None for {who}."'
    )
    with pytest.raises(PackError) as caught:
        parse_pack(text, source="tiny.toml")
    assert "tiny.toml:18: flows[0].action.reply_empty: {who} is not provided" in str(caught.value)


@pytest.mark.parametrize(
    ("setting", "told"),
    [
        ('number_words = ["one", "two"]\ncancel_words = ["cancel", "Two"]', "'two' is a cancel word"),
        ('number_words = ["uno", "dos"]\nmenu_words = ["hola", "uno"]', "'uno' is a menu word"),
        ('number_words = ["uno", "Uno"]', "'uno' is number 1 and 2"),
    ],
)
def test_a_number_word_the_engine_would_read_otherwise_is_refused(setting: str, told: str) -> None:
    with pytest.raises(PackError) as caught:
        parse_pack(GOOD.replace('name = "tiny"', f'name = "tiny"\n{setting}'), "tiny.toml")
    assert f"tiny.toml:3: pack.number_words: {told}" in str(caught.value)


NEW_KEYS = [
    "text_optional_invalid",
    "skip_words",
    "media_not_an_answer",
    "no_text_not_an_answer",
    "number_words",
    "text_required",
]


def _warned(text: str) -> list[tuple[str, str]]:
    with structlog.testing.capture_logs() as logs:
        parse_pack(text, "tiny.toml")
    return [(entry["key"], entry["where"]) for entry in logs if entry["log_level"] == "warning"]


def test_a_pack_in_its_own_words_leaving_a_new_text_in_english_is_told_each_at_load() -> None:
    spanish = 'name = "tiny"\ntext_length_invalid = "Envía de {min_length} a {max_length} caracteres."'
    # Before: nothing said, and its users were told the English defaults of these keys.
    assert _warned(GOOD.replace('name = "tiny"', spanish)) == [
        (f"pack.{key}", "tiny.toml:1") for key in NEW_KEYS
    ]


def test_a_pack_setting_the_new_texts_or_no_text_for_a_wrong_answer_is_told_nothing() -> None:
    every = (
        'name = "tiny"\nnumber_between = "De {min} a {max}."\ntext_optional_invalid = "Hasta {max_length}."\n'
        'skip_words = ["omitir"]\nmedia_not_an_answer = "📎"\nno_text_not_an_answer = "💬"\n'
        'number_words = ["uno"]\ntext_required = "Esta pregunta no se puede omitir."'
    )
    assert _warned(GOOD.replace('name = "tiny"', every)) == []
    assert _warned(GOOD.replace('name = "tiny"', 'name = "tiny"\ngreeting = "¡Hola!"')) == []
    with structlog.testing.capture_logs() as logs:
        load_pack("shopfloor")
    assert [entry for entry in logs if entry["log_level"] == "warning"] == []
