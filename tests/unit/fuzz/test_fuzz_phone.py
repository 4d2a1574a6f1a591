"""Any text -> one E.164 number or :class:`InvalidPhone`, and one person -> one stored number.

``normalize`` reads what API callers and operators type, ``provider_number`` what a provider delivered,
``contact_phone`` what an older release queued: anything else escaping them would be a 500 or a failed
task, and two forms of one person's number would be two contacts (an opt-out sent from one form would not
stop messages to the other).
"""

from __future__ import annotations

import re

import phonenumbers
from hypothesis import example, given
from hypothesis import strategies as st

from shared.phone import InvalidPhone, contact_phone, normalize, provider_number
from tests.unit.fuzz.strategies import FUZZ, hostile_text

# What E.164 allows: a plus, a country code that does not start with 0, at most 15 digits in all.
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
REGIONS = st.sampled_from(["US", "CO", "MX", "BR", "GB", "DE", "IN", "AR", "ZZ"])
# Digits of every kind, with what people put between and around them.
_PHONE_CHARACTERS = st.one_of(
    st.characters(categories=["Nd", "No", "Zs", "Pd", "Mn", "Cf"]),
    st.sampled_from(list("+()0123456789.-/ xX#*;:=whatsapp")),
)
phone_text = st.one_of(
    hostile_text,
    st.text(_PHONE_CHARACTERS, max_size=30),
    st.integers(0, 10**16).map(str),
    st.integers(0, 10**16).map(lambda number: f"+{number}"),
)
# Mexican mobiles of three area codes and Brazilian mobiles of every area code, written as the plan does
# (and WhatsApp the old way: +52 1, or no ninth digit). Subscriber numbers starting with 6, 8 or 9: an
# eight-digit one starting with 7 may be a radio line of its own, which the plan keeps.
MX_MOBILES = st.tuples(st.sampled_from(["55", "33", "81"]), st.integers(0, 10**8 - 1)).map(
    lambda parts: f"{parts[0]}{parts[1]:08d}"
)
BR_AREAS = [11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 24, 27, 28, 31, 32, 33, 34, 35, 37, 38, 41, 42]
BR_AREAS += [43, 44, 45, 46, 47, 48, 49, 51, 53, 54, 55, 61, 62, 63, 64, 65, 66, 67, 68, 69, 71, 73, 74]
BR_AREAS += [75, 77, 79, 81, 82, 83, 84, 85, 86, 87, 88, 89, 91, 92, 93, 94, 95, 96, 97, 98, 99]
BR_MOBILES = st.tuples(st.sampled_from(BR_AREAS), st.sampled_from("689"), st.integers(0, 10**7 - 1))


def _normalized(raw: str, region: str, strict: bool) -> str | None:
    try:
        return normalize(raw, region, strict=strict)
    except InvalidPhone as exc:
        reason = str(exc)
        assert reason  # what the 422 or the reply says
        return None


@FUZZ
@given(raw=phone_text, region=REGIONS, strict=st.booleans())
# The trunk 0 is read off again: "+4900000" is +490000 when given back, and so on at each pass.
@example(raw="000000", region="DE", strict=False)
# Germany's plan allows national numbers of up to 15 digits, E.164 numbers of up to 15 with the country code.
@example(raw="+4910000000000000", region="US", strict=False)
def test_any_text_gives_one_e164_number_or_invalid_phone(raw: str, region: str, strict: bool) -> None:
    number = _normalized(raw, region, strict)
    if number is None:
        return
    assert E164.fullmatch(number)
    parsed = phonenumbers.parse(number)
    assert (phonenumbers.is_valid_number if strict else phonenumbers.is_possible_number)(parsed)
    # Stored numbers are normalised again on every lookup, from any region: they must come back unchanged.
    assert normalize(number, region, strict=strict) == number
    assert normalize(number, "ZZ", strict=strict) == number


@FUZZ
@given(raw=phone_text, region=REGIONS)
@example(raw="4910000000000000", region="US")
def test_a_provider_number_is_e164_or_none_and_kept_when_given_again(raw: str, region: str) -> None:
    number = provider_number(raw, region)
    if number is not None:
        assert E164.fullmatch(number)
        assert provider_number(number, region) == number
        assert provider_number(number.removeprefix("+"), region) == number  # as a wa_id
    stored = contact_phone(raw)
    assert contact_phone(stored) == stored


def _every_form(written: list[str], regions: list[str]) -> set[str | None]:
    found: set[str | None] = set()
    for text in written:
        found |= {_normalized(text, region, strict) for region in regions for strict in (True, False)}
        found.add(provider_number(text, "US"))
        found.add(contact_phone(text))
    return found


@FUZZ
@given(national=MX_MOBILES)
def test_a_mexican_mobile_is_one_number_whichever_form_it_comes_in(national: str) -> None:
    plan = f"+52{national}"
    parsed = phonenumbers.parse(plan)
    assert phonenumbers.is_valid_number(parsed)
    international = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    old = f"521{national}"  # WhatsApp's wa_id, with the 1 Mexico dropped in 2019
    written = [plan, international, "+52 1 " + international.removeprefix("+52 "), old, f"+{old}"]
    written.append(f"whatsapp:+{old}")
    assert _every_form(written, ["US", "MX"]) == {plan}
    national_form = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    assert {normalize(text, "MX") for text in (national, national_form)} == {plan}


@FUZZ
@given(parts=BR_MOBILES)
def test_a_brazilian_mobile_is_one_number_whichever_form_it_comes_in(parts: tuple[int, str, int]) -> None:
    area, first, rest = parts
    subscriber = f"{first}{rest:07d}"
    plan = f"+55{area}9{subscriber}"
    parsed = phonenumbers.parse(plan)
    assert phonenumbers.is_valid_number(parsed)
    international = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    old = f"55{area}{subscriber}"  # registered before the ninth digit: WhatsApp's wa_id lacks it
    written = [plan, international, old, f"+{old}", f"whatsapp:+{old}", f"+55 ({area}) {subscriber}"]
    assert _every_form(written, ["US", "BR"]) == {plan}
    national_form = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    assert {normalize(text, "BR") for text in (national_form, f"({area}) {subscriber}")} == {plan}
