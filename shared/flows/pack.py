"""Flow packs: a TOML file defining a menu and step-by-step forms, validated at start.

A pack is data: the menu is the list of ``[[flows]]`` in file order; each flow has ``[[flows.steps]]``
(a prompt plus a validator: ``choice``, ``regex``, ``number`` or ``text``, and optionally a registered
``lookup``) and one ``[flows.action]`` (a registered final action and the ``reply`` template, and for
an action that counts what it found, optionally ``reply_empty`` for when it found nothing). See
``packs/shopfloor.toml`` for a complete, commented example.

Every problem is reported with the line of the pack file it is on (``shopfloor.toml:42: ...``): TOML
syntax errors by tomllib, shape errors by pydantic (mapped back to lines by :mod:`toml_lines`), and
references (unknown lookup/action, a ``{placeholder}`` no earlier step or function provides) by us.
"""

from __future__ import annotations

import functools
import math
import re
import string
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from shared.flows import registry
from shared.flows.toml_lines import Path as KeyPath
from shared.flows.toml_lines import key_lines, line_of
from shared.flows.words import keyword
from shared.logging import get_logger
from shared.wire.outbound_api import (
    INTERACTIVE_BODY_MAX,
    LIST_BUTTON_MAX,
    ROW_DESCRIPTION_MAX,
    ROW_TITLE_MAX,
    ROWS_MAX,
)

PACKS_DIR = Path(__file__).with_name("packs")

Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
# WhatsApp's limits (shared/wire/outbound_api.py) bound what the menu and the choices are sent as: a
# flow is a menu row (its title and description), a choice a row or reply button (shared/flows/engine.py),
# `menu_button` the list's opening button.
# The values each [pack] text that is a template may name: {flow_title}, the form's title, {minutes}, the
# session's time to live in minutes (a number), and {duration}, those minutes with their unit
# (`minutes_one` for 1, else `minutes_many`, themselves rendered with {minutes}), rendered by the engine
# (shared/flows/engine.py); the values of what a wrong answer is told, rendered by
# shared/flows/validators.py ({number} is `number_whole` or `number_decimal`);
# {value}, the answer a shipped lookup did not find, and {time}, a time left or overdue (``5h 20m``),
# rendered by shared/flows/builtin.py.
PACK_TEXT_VALUES: dict[str, frozenset[str]] = {
    "form_timed_out": frozenset({"flow_title", "minutes", "duration"}),
    "minutes_one": frozenset({"minutes"}),
    "minutes_many": frozenset({"minutes"}),
    "cancelled": frozenset({"flow_title"}),
    "not_understood": frozenset(),
    "choice_invalid": frozenset({"count"}),
    "regex_invalid_example": frozenset({"example"}),
    "regex_invalid": frozenset(),
    "number_between": frozenset({"number", "min", "max"}),
    "number_at_least": frozenset({"number", "min"}),
    "number_at_most": frozenset({"number", "max"}),
    "number_invalid": frozenset({"number"}),
    "number_whole": frozenset(),
    "number_decimal": frozenset(),
    "text_length_invalid": frozenset({"min_length", "max_length"}),
    "text_optional_invalid": frozenset({"max_length", "skip_word"}),
    "text_required": frozenset(),
    "location_not_an_answer": frozenset(),
    "flow_reply_not_an_answer": frozenset(),
    "media_not_an_answer": frozenset(),
    "no_text_not_an_answer": frozenset(),
    "order_not_found": frozenset({"value"}),
    "machine_not_found": frozenset({"value"}),
    "ticket_not_found": frozenset({"value"}),
    "not_set": frozenset(),
    "time_left": frozenset({"time"}),
    "overdue_by": frozenset({"time"}),
}
# The [pack] texts a wrong answer was told in the release before the keys below: a pack that sets any of
# them words its wrong answers itself, most likely in another language than the English defaults.
_WRONG_ANSWER_TEXTS = frozenset(
    {
        "choice_invalid",
        "regex_invalid_example",
        "regex_invalid",
        "number_between",
        "number_at_least",
        "number_at_most",
        "number_invalid",
        "number_whole",
        "number_decimal",
        "text_length_invalid",
        "location_not_an_answer",
        "flow_reply_not_an_answer",
    }
)
# The [pack] keys added since, each with an English default that such a pack, written before them, leaves
# as it is: told at load, one warning each (parse_pack), and not said to its users where a text of its own
# can stand instead (Meta.left_english).
UPGRADE_KEYS = (
    "text_optional_invalid",
    "skip_words",
    "media_not_an_answer",
    "no_text_not_an_answer",
    "number_words",
    "text_required",
)
# Each of those values as its renderer gives it (a number or a text): each [pack] text is rendered with
# them once as it loads, so that a format or conversion its value cannot take ({min:.0f}, {min} being a
# text such as "1.5") stops the pack at start, not the reply to a user's first wrong answer.
_SAMPLE_VALUES: dict[str, Any] = {
    "flow_title": "Report a defect",
    "minutes": 30,
    "duration": "30 minutes",
    "count": 3,
    "example": "ORD-12345",
    "number": "a number",
    "min": "1",
    "max": "10",
    "min_length": 1,
    "max_length": 500,
    "skip_word": "skip",
    "value": "ORD-12345",
    "time": "5h 20m",
}


class PackError(Exception):
    """A flow pack that cannot be used; ``problems`` are ``(line or None, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[int | None, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [
            f"{source}:{line}: {message}" if line else f"{source}: {message}" for line, message in problems
        ]
        super().__init__("invalid flow pack\n" + "\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    """One question of a form, and what counts as a valid answer."""

    name: Identifier
    # At most an interactive message's body; rendered longer, it goes as plain text (shared/flows/engine.py).
    prompt: str = Field(min_length=1, max_length=INTERACTIVE_BODY_MAX)
    kind: Literal["choice", "regex", "number", "text"]
    # Shown to a wrong answer instead of the pack's generated text; a choice's numbered choices follow it,
    # unless it lists them itself exactly as the bot numbers them ("1. Low\n2. High").
    error: str | None = None
    lookup: str | None = None
    # kind = "choice"
    choices: list[Annotated[str, StringConstraints(min_length=1, max_length=ROW_TITLE_MAX)]] = Field(
        default_factory=list, max_length=ROWS_MAX
    )
    # kind = "regex": matched in full, case-insensitively; `case` normalises the stored value
    pattern: str | None = None
    case: Literal["upper", "lower", "keep"] = "upper"
    example: str | None = None
    # kind = "number"
    min: float | None = None
    max: float | None = None
    integer: bool = True
    # kind = "text"; min_length = 0 makes it optional, left empty by one of the pack's skip_words
    min_length: int = Field(default=1, ge=0)
    max_length: int = Field(default=500, ge=1, le=4096)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("lookup")
    @classmethod
    def _known_lookup(cls, value: str | None) -> str | None:
        if value is not None and value not in registry.LOOKUPS:
            raise ValueError(f"unknown lookup {value!r} (registered: {', '.join(sorted(registry.LOOKUPS))})")
        return value

    @property
    def compiled(self) -> re.Pattern[str]:
        return _compile(self.pattern or "")


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


class Action(BaseModel):
    """The final action of a flow; keys other than ``name`` and ``reply`` are options for the action."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    reply: str = Field(min_length=1, max_length=4096)
    # The reply instead when the action found nothing (what it `counts` is 0): "You have no open tickets."
    # said once, not under a heading counting none of them.
    reply_empty: str | None = Field(default=None, min_length=1, max_length=4096)

    @field_validator("name")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value not in registry.ACTIONS:
            raise ValueError(f"unknown action {value!r} (registered: {', '.join(sorted(registry.ACTIONS))})")
        return value

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Flow(_Strict):
    """One menu option: its form (possibly empty) and its final action."""

    id: Identifier
    title: str = Field(min_length=1, max_length=ROW_TITLE_MAX)
    description: str | None = Field(default=None, max_length=ROW_DESCRIPTION_MAX)
    steps: list[Step] = Field(default_factory=list)
    action: Action


_ENGLISH_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


class Meta(_Strict):
    """The ``[pack]`` table: name, the bot's own texts and the words that open the menu or leave a form."""

    name: Identifier
    greeting: str = "👋 Hello!"
    menu_prompt: str = "What would you like to do? Reply with a number:"
    menu_button: str = Field(default="Options", max_length=LIST_BUTTON_MAX)
    cancel_hint: str = "(send *cancel* to go back to the menu)"
    # Before the menu, to the first message of a conversation whose form was left unanswered past the
    # session's time to live (shared/flows/service.py): that message answered a question no longer asked.
    form_timed_out: str = (
        "⏱️ Your *{flow_title}* form timed out after {duration} without an answer, so nothing was"
        " submitted and its answers were not kept."
    )
    # Its {duration}: a session's TTL under 90 s is 1 minute, which "{minutes} minutes" misspoke. A pack
    # whose form_timed_out names {minutes} itself keeps its own words around the number.
    minutes_one: str = "1 minute"
    minutes_many: str = "{minutes} minutes"
    # Before the menu, to a cancel word sent during a form, and to an answer the menu does not know.
    cancelled: str = "OK, cancelled."
    not_understood: str = "Sorry, I didn't get that."
    # To an answer a step does not accept (unless the step has an `error` of its own): a choice (the
    # numbered choices follow), a regex step with or without an `example`, a number (in `min` and `max`),
    # a text (in `min_length` and `max_length`), or an optional text (`min_length` = 0), which names the
    # first of the `skip_words` instead of asking for a text of 0 characters, which nobody can send.
    choice_invalid: str = "Please reply with a number from 1 to {count}:"
    regex_invalid_example: str = "That doesn't look right. Please send it like {example}."
    regex_invalid: str = "That doesn't look right. Please check it and send it again."
    number_between: str = "Please send {number} from {min} to {max}."
    number_at_least: str = "Please send {number} of at least {min}."
    number_at_most: str = "Please send {number} of at most {max}."
    number_invalid: str = "Please send {number}."
    number_whole: str = "a whole number"
    number_decimal: str = "a number"
    text_length_invalid: str = "Please send a text of {min_length} to {max_length} characters."
    text_optional_invalid: str = (
        "Please send a text of at most {max_length} characters, or *{skip_word}* to skip this question."
    )
    # Before what the step accepts, to a skip word sent to a text question that is not optional: taken
    # as the answer, the word "skip" was saved for a question that needs one.
    text_required: str = "This question needs an answer, it can't be skipped."
    # Before what the step accepts, to a location shared in answer to a form's question: no step takes one,
    # and read as its (empty) text it could pass for an optional answer, the place lost.
    location_not_an_answer: str = "📍 A shared location can't answer this question."
    # Likewise to a WhatsApp Flow submitted meanwhile (one a template's button opened): its answers are
    # that Flow's, and read as its (empty) text it too could pass for an optional answer.
    flow_reply_not_an_answer: str = "📋 A form sent in WhatsApp can't answer this question."
    # Likewise to a photo, video, voice note, sticker or document sent without a caption: no step reads
    # one, and as its (empty) text it too could pass for an optional answer, sent and silently dropped.
    media_not_an_answer: str = "📎 A photo, video, voice note, sticker or file can't answer this question."
    # Likewise to any other kind of message with no text of its own and no tap: a shared contact card, an
    # order (a cart) sent without a note, a reply whose tap did not parse.
    no_text_not_an_answer: str = (
        "💬 A shared contact or another message without text can't answer this question."
    )
    # The shipped lookups' words (shared/flows/builtin.py): an order, machine or ticket not found, a date
    # not set, and an SLA's time left or overdue.
    order_not_found: str = "Order {value} was not found. Please check the number and send it again."
    machine_not_found: str = "Machine {value} was not found. Please check the id on the machine's plate."
    ticket_not_found: str = "Ticket {value} was not found. Please check the reference and send it again."
    not_set: str = "not set"
    time_left: str = "{time} left"
    overdue_by: str = "overdue by {time}"
    menu_words: list[str] = Field(default_factory=lambda: ["hi", "hello", "menu", "start"])
    cancel_words: list[str] = Field(default_factory=lambda: ["cancel", "menu", "0"])
    # What leaves an optional text step (`min_length` = 0) empty: WhatsApp sends no empty text, so without
    # one such a step could not be skipped. At least one, for its re-prompt to name.
    skip_words: list[str] = Field(default_factory=lambda: ["skip"], min_length=1)
    # The numbers as words, the first one 1: the menu and a choice take them as the typed number, as
    # people write "two" for 2. In the pack's language (none of them a menu or cancel word: those are read
    # first); only those of the numbers shown count, so "seven" picks nothing of six, and none where a
    # label of the choices or menu has one as a word of its own ("Three or more"), which it could mean.
    number_words: list[str] = Field(default_factory=lambda: list(_ENGLISH_NUMBERS))

    @field_validator(*PACK_TEXT_VALUES)
    @classmethod
    def _known_values(cls, template: str, info: ValidationInfo) -> str:
        known = PACK_TEXT_VALUES[info.field_name or ""]
        try:
            unknown = placeholders(template) - known
        except ValueError:
            # Rendered as a template: a brace of its own would stop the reply when it is sent, not here.
            raise ValueError("a lone { or }: write {{ or }} for a brace of its own") from None
        if unknown:
            allowed = f"only {_braced(known)} are known here" if known else "no {values} are known here"
            raise ValueError(f"{_braced(unknown)}: {allowed}")
        try:
            render(template, {name: _SAMPLE_VALUES[name] for name in known})
        except (ValueError, TypeError, AttributeError, LookupError) as problem:
            raise ValueError(f"a format its values cannot take: {problem}") from None
        return template

    @field_validator("menu_words", "cancel_words", "skip_words", "number_words")
    @classmethod
    def _folded(cls, words: list[str]) -> list[str]:
        # The engine compares them with the answer folded the same way: a word written "Cancelar" in the
        # pack would otherwise match nothing anyone sends, and no form could be left.
        return [keyword(word) for word in words]

    def left_english(self, key: str) -> bool:
        """Whether this pack words its wrong answers itself yet leaves ``key``, one of the UPGRADE_KEYS, at
        its English default: a pack in another language written before that key existed."""
        return key not in self.model_fields_set and bool(self.model_fields_set & _WRONG_ANSWER_TEXTS)


# The English texts, for what runs without a pack's (a validator called on its own, a lookup's context
# built outside the engine).
DEFAULT_TEXTS = Meta(name="default")


class _Values(dict):
    # A template never fails at run time over a value a lookup did not return: it renders empty.
    def __missing__(self, key: str) -> str:
        return ""


def render(template: str, values: Mapping[str, Any]) -> str:
    """A pack's template with ``values`` (``{{`` and ``}}`` for braces of its own)."""
    return template.format_map(_Values(values))


class Pack(_Strict):
    pack: Meta
    flows: list[Flow] = Field(min_length=1, max_length=ROWS_MAX)

    @property
    def name(self) -> str:
        return self.pack.name

    def flow(self, flow_id: str) -> Flow | None:
        return next((flow for flow in self.flows if flow.id == flow_id), None)


def _braced(names: set[str] | frozenset[str]) -> str:
    return ", ".join(f"{{{name}}}" for name in sorted(names))


def placeholders(template: str) -> set[str]:
    """The ``{names}`` a template uses (``{a.b}`` and ``{a[0]}`` count as ``a``)."""
    names = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            names.add(re.split(r"[.\[]", field, maxsplit=1)[0])
    return names


def _check_references(pack: Pack) -> list[tuple[tuple[str | int, ...], str]]:
    """What pydantic cannot see: duplicate names, placeholders nothing provides, and answers, skip words or
    number words the engine would read as something else."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for word in pack.pack.skip_words:
        if word in pack.pack.cancel_words:
            # The engine reads a cancel word first: sent to skip a question, it would leave the form.
            problems.append(
                (("pack", "skip_words"), f"{word!r} is a cancel word, so it could skip no question")
            )
    problems += [(("pack", "number_words"), problem) for problem in _misread_numbers(pack.pack)]
    seen_flows: set[str] = set()
    for f_index, flow in enumerate(pack.flows):
        where: tuple[str | int, ...] = ("flows", f_index)
        if flow.id in seen_flows:
            problems.append(((*where, "id"), f"flow id {flow.id!r} is used twice"))
        seen_flows.add(flow.id)
        known = {"flow_title"}
        for s_index, step in enumerate(flow.steps):
            at = (*where, "steps", s_index)
            if step.name in known:
                problems.append(((*at, "name"), f"step name {step.name!r} is used twice in flow {flow.id!r}"))
            needs = {
                "choice": ("choices", bool(step.choices)),
                "regex": ("pattern", step.pattern is not None),
            }.get(step.kind)
            if needs and not needs[1]:
                problems.append((at, f"a {step.kind} step needs `{needs[0]}`"))
            if (
                step.kind == "number"
                and step.min is not None
                and step.max is not None
                and step.min > step.max
            ):
                problems.append(((*at, "min"), "min is greater than max"))
            for word in _unanswerable(step, pack.pack.cancel_words):
                problems.append((at, f"{word!r} is a cancel word, so nobody could give it as this answer"))
            for name in sorted(placeholders(step.prompt) - known):
                problems.append(((*at, "prompt"), f"{{{name}}} is not provided by an earlier step or lookup"))
            known.add(step.name)
            if step.lookup:
                known |= registry.LOOKUPS[step.lookup].provides
        finishing = registry.ACTIONS[flow.action.name]
        known |= finishing.provides
        replies = {"reply": flow.action.reply, "reply_empty": flow.action.reply_empty}
        for key, reply in replies.items():
            for name in sorted(placeholders(reply or "") - known):
                problems.append(
                    ((*where, "action", key), f"{{{name}}} is not provided by a step or the action")
                )
        if flow.action.reply_empty is not None and finishing.counts is None:
            problems.append(
                (
                    (*where, "action", "reply_empty"),
                    f"action {finishing.name!r} counts nothing, so this reply is never sent",
                )
            )
    return problems


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _unanswerable(step: Step, cancel_words: list[str]) -> list[str]:
    """The cancel words this step would take as an answer: the engine reads a cancel word first, so the
    user sending one is sent back to the menu instead (a range with 0 when "0" cancels, as by default)."""
    numbers = [word for word in cancel_words if _PLAIN_NUMBER.fullmatch(word)]
    if step.kind == "choice":
        return [word for word in numbers if "." not in word and 1 <= int(word) <= len(step.choices)]
    if step.kind != "number":
        return []
    low = step.min if step.min is not None else -math.inf
    high = step.max if step.max is not None else math.inf
    return [
        word
        for word in numbers
        if low <= float(word) <= high and not (step.integer and not float(word).is_integer())
    ]


def _misread_numbers(meta: Meta) -> list[str]:
    """Why some of the pack's number words would not be read as their numbers: a cancel word leaves the
    form it was meant to answer (read first), a menu word picks a menu option instead of greeting, and a
    word given twice stands for only the first of its numbers."""
    problems = []
    for number, word in enumerate(meta.number_words, start=1):
        if word in meta.cancel_words:
            problems.append(f"{word!r} is a cancel word, so it could pick no choice")
        if word in meta.menu_words:
            problems.append(f"{word!r} is a menu word, so it would pick option {number} instead of greeting")
        first = meta.number_words.index(word) + 1
        if first != number:
            problems.append(f"{word!r} is number {first} and {number}")
    return problems


def _describe(location: tuple[str | int, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# [pack] keys that once existed and did nothing: a pack setting one still loads, its author told so.
# menu_hint was never shown; each action's `reply` says "Send *menu* ..." itself, in the pack's words (and
# not after a hand-off, whose chat the bot no longer answers).
_RETIRED_PACK_KEYS = {"menu_hint": "it is not shown: end the action replies with such a hint instead"}


def _drop_retired(document: dict[str, Any], lines: dict[KeyPath, int], source: str) -> None:
    meta = document.get("pack")
    if not isinstance(meta, dict):
        return
    for key, instead in _RETIRED_PACK_KEYS.items():
        if key in meta:
            del meta[key]
            line = line_of(lines, ("pack", key))
            where = f"{source}:{line}" if line else source
            # A logger made here, not at import: the pack is loaded once per process, at start.
            get_logger(__name__).warning(
                "flows.pack_key_unused", key=f"pack.{key}", where=where, instead=instead
            )


def _warn_left_english(meta: Meta, lines: dict[KeyPath, int], source: str) -> None:
    """One warning per key added since the pack was written that it leaves in English, though it words its
    wrong answers itself: its users would be told English beside its own words, or not told at all."""
    line = line_of(lines, ("pack",))
    where = f"{source}:{line}" if line else source
    for key in UPGRADE_KEYS:
        if meta.left_english(key):
            get_logger(__name__).warning("flows.pack_key_left_english", key=f"pack.{key}", where=where)


def parse_pack(text: str, source: str = "<pack>") -> Pack:
    """Validate pack text; raise :class:`PackError` naming the line of each problem."""
    registry.ensure_builtins()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise PackError(source, [(int(found.group(1)) if found else None, str(exc))]) from None
    lines = key_lines(text)
    _drop_retired(document, lines, source)
    try:
        pack = Pack.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            location = tuple(error["loc"])
            problems.append((line_of(lines, location), f"{_describe(location)}: {error['msg']}"))
        raise PackError(source, problems) from None
    references = _check_references(pack)
    if references:
        raise PackError(
            source,
            [(line_of(lines, where), f"{_describe(where)}: {message}") for where, message in references],
        )
    _warn_left_english(pack.pack, lines, source)
    return pack


def resolve(name_or_path: str) -> Path:
    """``WAPIPE_FLOWS``: a pack shipped in ``shared/flows/packs`` (``shopfloor``) or a .toml file's path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path:
        return Path(name_or_path).expanduser()
    return PACKS_DIR / f"{name_or_path}.toml"


def shipped() -> list[str]:
    return sorted(path.stem for path in PACKS_DIR.glob("*.toml"))


def load_pack(name_or_path: str) -> Pack:
    path = resolve(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PackError(
            str(path), [(None, f"no such flow pack (shipped packs: {', '.join(shipped())}, or a .toml path)")]
        ) from None
    return parse_pack(text, source=str(path))


DEFAULT_PACK = "shopfloor"


@functools.cache
def get_pack(name_or_path: str | None = None) -> Pack:
    """The process's pack: the one named, else ``WAPIPE_FLOWS``, else the shop-floor pack."""
    from shared.settings import get_settings

    return load_pack(name_or_path or get_settings().flows or DEFAULT_PACK)
