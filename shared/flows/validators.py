"""Check one answer against one step: the normalised value, or what the user should send instead.

Pure functions, no I/O. A tapped button or list row arrives as its id (``defect_type:2``) and usually
its title as the body too; both are accepted, exactly like the typed number or label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from shared.flows.pack import DEFAULT_TEXTS, Meta, Step, render
from shared.flows.words import keyword


@dataclass(frozen=True)
class Answer:
    """What the user sent: the text (typed, or the tapped title) and the tapped id, if any."""

    text: str
    reply_id: str | None = None
    location: bool = False  # a shared location: no text, and nothing a step accepts
    flow_reply: bool = False  # a submitted WhatsApp Flow: its own answers, none of them this step's
    media: bool = False  # a photo, video, voice note, sticker or document; its caption, if any, is the text
    # False for any other kind of message than a text (a shared contact, an order, a tap): only its text
    # (a caption, an order's note, a tapped title) or its tapped id can answer.
    text_message: bool = True

    @property
    def clean(self) -> str:
        return " ".join(self.text.split())


class Invalid(Exception):
    """The answer does not fit the step; ``message`` says what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def choice_id(step_name: str, index: int) -> str:
    """The id of a step's choice when sent as a button or list row (1-based, like the typed number)."""
    return f"{step_name}:{index}"


def numbered(labels: list[str]) -> str:
    """The choices as the plain text of a question lists them, one a line: ``1. Low``."""
    return "\n".join(f"{number}. {label}" for number, label in enumerate(labels, start=1))


def allowed(step: Step, texts: Meta = DEFAULT_TEXTS) -> str:
    """One sentence saying what a valid answer looks like, in the words of the pack's ``texts``: a step's
    own ``error`` text if it has one, and for a choice its numbered choices after it."""
    if step.kind == "choice":
        # After a step's own error text too: it says what the question is about, not what to send, and a
        # re-prompt sent as plain text (Twilio, or too long for buttons) has no buttons to show the choices.
        head = step.error or render(texts.choice_invalid, {"count": len(step.choices)})
        if numbered(step.choices) in head:
            # An error text written before, listing the choices itself as the bot numbers them: once is
            # enough. Listed any other way, they are shown twice (the pack's header says to drop them).
            return head
        return f"{head}\n{numbered(step.choices)}"
    if step.error:
        return step.error
    if step.kind == "regex":
        # Never the pattern itself: "ORD-\d+" means nothing to the person typing; a pack whose step has
        # no example should give it an error text that says what is wanted.
        if step.example:
            return render(texts.regex_invalid_example, {"example": step.example})
        return render(texts.regex_invalid, {})
    if step.kind == "number":
        values = {
            "number": render(texts.number_whole if step.integer else texts.number_decimal, {}),
            "min": _fmt(step.min) if step.min is not None else "",
            "max": _fmt(step.max) if step.max is not None else "",
        }
        if step.min is not None and step.max is not None:
            return render(texts.number_between, values)
        if step.min is not None:
            return render(texts.number_at_least, values)
        if step.max is not None:
            return render(texts.number_at_most, values)
        return render(texts.number_invalid, values)
    # A pack that words text_length_invalid itself, written before text_optional_invalid, keeps its own
    # words ("0 to 500", as then), not an English text naming an English skip word its prompts never do.
    own_length_text = "text_length_invalid" in texts.model_fields_set
    if step.min_length == 0 and not (own_length_text and texts.left_english("text_optional_invalid")):
        # Not "a text of 0 to 500 characters": nobody can send an empty one, a skip word is how.
        values = {"max_length": step.max_length, "skip_word": texts.skip_words[0]}
        return render(texts.text_optional_invalid, values)
    values = {"min_length": step.min_length, "max_length": step.max_length}
    return render(texts.text_length_invalid, values)


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


_CHOICE_DIGITS = 3  # no menu has a thousand choices
# The number as people also type it: copied with the dot or bracket of a numbered line ("2." of "2. Order
# status", "2)"), or as "#2". \d is any decimal digit, as isdecimal below; a short run, for the same reason.
_TYPED_NUMBER = re.compile(rf"#?(\d{{1,{_CHOICE_DIGITS}}})[.)]?")


def match_choice(
    labels: list[str],
    answer: Answer,
    id_of: list[str],
    number_words: Sequence[str] = DEFAULT_TEXTS.number_words,
) -> int | None:
    """The 0-based index the answer picks: a tapped id, the number, the label (any case), then the number
    typed as ``2.``, ``2)`` or ``#2``, the label with punctuation or emoji around it when no other label
    is the same without them, and last one of the pack's ``number_words``, unless a label names one."""
    if answer.reply_id and answer.reply_id in id_of:
        return id_of.index(answer.reply_id)
    text = answer.clean
    # isdecimal, not isdigit: "²" and "①" are digits int() refuses. Any decimal digits convert ("٢" from an
    # Arabic keyboard is 2), but only a short run: int() refuses more than 4,300 of them. Either would
    # escape as a ValueError and fail the step, instead of the re-prompt any wrong choice gets.
    if text.isdecimal() and len(text) <= _CHOICE_DIGITS and 1 <= int(text) <= len(labels):
        return int(text) - 1
    folded = text.casefold()
    for index, label in enumerate(labels):
        if " ".join(label.split()).casefold() == folded:
            return index
    # After the labels: a choice labelled "Two" is that choice, whatever its number.
    typed = _TYPED_NUMBER.fullmatch(text)
    if typed and 1 <= int(typed.group(1)) <= len(labels):
        return int(typed.group(1)) - 1
    word = keyword(text)
    # Folded as a cancel word is: "*Two*" or "two 🙏" is the choice labelled "Two", not choice 2.
    folded_labels = [keyword(label) for label in labels]
    if folded_labels.count(word) == 1:
        return folded_labels.index(word)
    if word in folded_labels:
        # Labels that differ only in what is stripped ("O+" and "O-" are both "o", "C++" and "C#" "c"):
        # "O-." names neither more than the other, so it is asked again rather than given to the first.
        return None
    if _names_a_number_word(folded_labels, number_words):
        # Choices such as "None", "One", "Two", "Three or more": "three" would pick "Two", the third,
        # which the user did not name. Where no label names one, a number word names only a position.
        return None
    shown = list(number_words[: len(labels)])
    return shown.index(word) if word in shown else None


def _names_a_number_word(folded_labels: list[str], number_words: Sequence[str]) -> bool:
    """Whether a label has one of the number words as a word of its own ("Three or more", "Two-tone"),
    any of them, not only those of the numbers shown: "ten" of "Ten or more" could mean that label."""
    return any(
        re.search(rf"(?<!\w){re.escape(word)}(?!\w)", label)
        for label in folded_labels
        for word in number_words
    )


def validate(step: Step, answer: Answer, texts: Meta = DEFAULT_TEXTS) -> str | int | float:
    """The normalised value of a valid answer; raise :class:`Invalid` otherwise, saying what is allowed
    in the words of the pack's ``texts``."""
    text = answer.clean
    if step.kind == "choice":
        ids = [choice_id(step.name, number) for number in range(1, len(step.choices) + 1)]
        index = match_choice(step.choices, answer, ids, texts.number_words)
        if index is None:
            raise Invalid(allowed(step, texts))
        return step.choices[index]
    if step.kind == "regex":
        if not step.compiled.fullmatch(text):
            raise Invalid(allowed(step, texts))
        return {"upper": text.upper(), "lower": text.lower(), "keep": text}[step.case]
    if step.kind == "number":
        return _number(step, text, texts)
    if keyword(answer.text) in texts.skip_words:
        if step.min_length == 0:
            # WhatsApp sends no empty text: a skip word is how an optional text is left empty.
            return ""
        # A required question asked to be skipped: told so, not the word saved as its answer. A pack in its
        # own words written before text_required is told only what the step takes, not an English sentence.
        required = "" if texts.left_english("text_required") else render(texts.text_required, {})
        raise Invalid(" ".join(part for part in (required, allowed(step, texts)) if part))
    stripped = answer.text.strip()
    if not step.min_length <= len(stripped) <= step.max_length:
        raise Invalid(allowed(step, texts))
    return stripped


# At most 15 digits each side of the point, which no real answer needs: a longer number would lose its
# last digits as a float, or become inf, which JSON (the flow's record) cannot hold. \d is any decimal
# digit ("٣" from an Arabic keyboard), which float() converts.
_NUMBER = re.compile(r"^[+-]?\d{1,15}(?:[.,]\d{1,15})?$")


def _number(step: Step, text: str, texts: Meta) -> int | float:
    if not _NUMBER.match(text):
        raise Invalid(allowed(step, texts))
    value: int | float = float(text.replace(",", "."))
    if step.integer:
        if not float(value).is_integer():
            raise Invalid(allowed(step, texts))
        value = int(value)
    if (step.min is not None and value < step.min) or (step.max is not None and value > step.max):
        raise Invalid(allowed(step, texts))
    return value
