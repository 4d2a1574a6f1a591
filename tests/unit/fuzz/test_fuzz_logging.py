"""No phone number survives ``mask_phone`` or ``scrub``, whatever text or structure it sits in.

The numbers are phonenumbers' example numbers of every region (mobile and fixed line), written as the
numbering plan writes them (E.164, international, national) with the separators people use, inside hostile
text. A number counts as leaked when its national significant digits can be read off the line with the
separators left out. ``scrub`` runs on every log call's fields: it must also take any nested value
without raising (the log call would raise in the middle of a task) and give the same on a second pass.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

import phonenumbers
from hypothesis import example, given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from shared.logging import mask_phone, scrub
from tests.unit.fuzz.strategies import FUZZ, hostile_text, json_values

EXAMPLE_NUMBERS = [
    number
    for region in sorted(phonenumbers.SUPPORTED_REGIONS)
    for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)
    if (number := phonenumbers.example_number_for_type(region, kind)) is not None
    # Shorter numbers are left readable on purpose (ids, counts, codes); see shared/logging.py.
    and len(phonenumbers.national_significant_number(number)) >= 8
]
FORMATS = st.sampled_from(
    [PhoneNumberFormat.E164, PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.NATIONAL]
)
# What people and contacts apps put between groups, in place of the plan's spaces.
SEPARATORS = st.sampled_from([" ", "-", ".", "\u00a0", "\u202f", "  ", " - ", "\u2011", "\u2013"])
# What ends a word before and after the number (a letter or digit glued on makes an id of it).
_BOUNDARY_CHARACTERS = st.characters(categories=["P", "S", "Z", "Cc", "Cf"])
# Not a bare % or backslash: glued to the digits they would read as an escape (``%02``), which logs write.
BEFORE = st.one_of(
    _BOUNDARY_CHARACTERS.filter(lambda char: char not in "%\\"),
    st.sampled_from([" ", "\n", ": ", "=", "tel:", "whatsapp:", "%3A", "\\n", " ("]),
)
AFTER = st.one_of(_BOUNDARY_CHARACTERS.filter(lambda char: char != "x"), st.sampled_from(["\\n", "%0A"]))
_BRACKETED = re.compile(r"(\([^)]*\))")
_SEPARATOR_CHARACTERS = re.compile(r"[ \-.()/+\u00a0\u202f\u2010\u2011\u2013]")


def _digits_shown(text: str) -> str:
    return _SEPARATOR_CHARACTERS.sub("", text)


# A loose gap (a spaced dash or two spaces) between groups, as ranges and padded columns are written.
_LOOSE_GAP = re.compile(r" - |  ")


def _kept_on_purpose(written: str) -> bool:
    """Numbers written the ways shared/logging.py keeps readable, as nothing in the text tells them apart
    from what a log line must keep: an IPv4 address (``12.34.56.78``, as Danes write theirs), a decimal
    (``3600.1234``), and a range or padded column (``8123 - 4567`` as ``ports 8000 - 8080``, ``2 - 2123456``
    as ``rows 1 - 5000000``): a loose gap between two groups of equal length or from one of 1 or 2 digits,
    without a +, a trunk 0 or a bracket first."""
    try:
        ipaddress.IPv4Address(written)
    except ValueError:
        pass
    else:
        return True
    if re.fullmatch(r"(?:0|[1-9]\d*)\.\d*[1-9]\d*", written):
        return True
    if _LOOSE_GAP.search(written) and not written.startswith(("+", "0", "(")):
        groups = re.findall(r"\d+", written)
        if len(groups) != 2 or max(len(group) for group in groups) >= 8:
            return False
        return len(groups[0]) == len(groups[1]) or len(groups[0]) <= 2
    return False


@st.composite
def written_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """(national significant number, the number as written)."""
    number = draw(st.sampled_from(EXAMPLE_NUMBERS))
    separator = draw(SEPARATORS)
    # A bracketed trunk prefix and area code keep the plan's one separator: "(06 1)", "(0-612)".
    parts = _BRACKETED.split(phonenumbers.format_number(number, draw(FORMATS)))
    written = "".join(part if _BRACKETED.fullmatch(part) else part.replace(" ", separator) for part in parts)
    return phonenumbers.national_significant_number(number), written


@FUZZ
@given(number=written_numbers(), before=hostile_text, after=hostile_text, start=BEFORE, end=AFTER)
# National formats that bracket the trunk prefix with the area code: Hungary, Lithuania, Turkmenistan.
@example(number=("12345678", "(06 1) 234 5678"), before="", after="", start=" ", end=" ")
@example(number=("61234567", "(0-612) 34567"), before="", after="", start=" ", end=" ")
@example(number=("12345678", "(8 12) 34-56-78"), before="", after="", start=" ", end=" ")
def test_a_written_phone_in_any_text_is_masked(
    number: tuple[str, str], before: str, after: str, start: str, end: str
) -> None:
    national, written = number
    if _kept_on_purpose(written):
        return
    masked = mask_phone(before + start + written + end + after)
    assert national not in _digits_shown(masked), masked


@FUZZ
@given(number=written_numbers(), text=hostile_text, cut=st.integers(0, 200))
def test_masking_twice_is_masking_once(number: tuple[str, str], text: str, cut: int) -> None:
    once = mask_phone(text[:cut] + " " + number[1] + " " + text[cut:])
    assert mask_phone(once) == once


def _placed(how: str, number: phonenumbers.PhoneNumber) -> Any:
    """The number as a log field may carry it."""
    written = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    digits = int(phonenumbers.format_number(number, PhoneNumberFormat.E164))
    return {
        "text": {"note": f"from {written}"},
        "bytes": {"body": f"From={written}".encode()},
        "str key": {written: "x"},
        "bytes key": {written.encode(): "x"},  # a Redis hash read back, keyed by number
        "tuple key": {(written, 1): "x"},
        "int": {"wa": digits},
        "int key": {digits: "x"},
        "float": {"wa": float(digits)},
        "float key": {float(digits): "x"},
        "object": {"error": ValueError(f"bad number {written}")},
        "set": {"to": frozenset([written])},
    }[how]


PLACES = st.sampled_from(
    [
        "text",
        "bytes",
        "str key",
        "bytes key",
        "tuple key",
        "int",
        "int key",
        "float",
        "float key",
        "object",
        "set",
    ]
)


@FUZZ
@given(
    number=st.sampled_from(EXAMPLE_NUMBERS),
    how=PLACES,
    wrappers=st.lists(st.sampled_from([list, tuple, lambda value: {"data": value}]), max_size=3),
)
@example(number=phonenumbers.parse("+971501234567"), how="bytes key", wrappers=[])
def test_no_phone_survives_scrub_wherever_it_sits(
    number: phonenumbers.PhoneNumber, how: str, wrappers: list[Callable[[Any], Any]]
) -> None:
    value = _placed(how, number)
    for wrap in wrappers:
        value = wrap([value]) if wrap is list else wrap((value,)) if wrap is tuple else wrap(value)
    rendered = repr(scrub(value))
    assert phonenumbers.national_significant_number(number) not in _digits_shown(rendered), rendered


# Field values of every shape a log call is given: JSON, bytes, tuples, sets, exceptions, odd keys.
_KEYS = st.one_of(
    st.sampled_from(["phone", "to", "wa_id", "message_id", "token", "verify_code", "error_code", "url"]),
    hostile_text,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.none(),
    st.binary(max_size=16),
    st.tuples(hostile_text, st.integers()),
)
_LEAVES = st.one_of(
    json_values,
    st.binary(max_size=40),
    st.builds(bytearray, st.binary(max_size=16)),
    st.builds(ValueError, hostile_text),
    st.uuids(),
)
field_values = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.frozensets(st.one_of(hostile_text, st.integers(), st.binary(max_size=8)), max_size=3),
        st.dictionaries(_KEYS, children, max_size=4),
    ),
    max_leaves=15,
)


def _containers(value: Any) -> list[list[Any] | dict[Any, Any]]:
    found: list[list[Any] | dict[Any, Any]] = []
    if isinstance(value, list | dict):
        found.append(value)
    for item in (
        value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else []
    ):
        found += _containers(item)
    return found


@st.composite
def log_fields(draw: st.DrawFn) -> dict[str, Any]:
    """An event's fields; some hold themselves (an object graph with a back reference, a parent's list of
    children pointing back at it), which repr() writes as ``[...]``."""
    fields = {"payload": draw(field_values)}
    if draw(st.booleans()):
        holder = draw(st.sampled_from(_containers(fields)))
        if isinstance(holder, list):
            holder.append(fields)
        else:
            holder[draw(_KEYS)] = fields
    return fields


_HOLDS_ITSELF: dict[str, Any] = {"payload": []}
_HOLDS_ITSELF["payload"].append(_HOLDS_ITSELF)


@FUZZ
@given(fields=log_fields())
@example(fields=_HOLDS_ITSELF)
def test_scrub_takes_any_fields_and_a_second_pass_changes_nothing(fields: dict[str, Any]) -> None:
    once = scrub(fields)
    # repr: NaN is unequal to itself, and repr is what the console renderer writes.
    assert repr(scrub(once)) == repr(once)
