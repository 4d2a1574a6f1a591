"""Phone numbers: E.164 in storage and on the wire, masked in anything a person reads."""

from __future__ import annotations

import functools
import re

import phonenumbers

from shared.logging import mask_phone

__all__ = ["InvalidPhone", "contact_phone", "mask_phone", "normalize", "provider_number"]


class InvalidPhone(ValueError):
    """The text is not a valid phone number; the message says why, for a 422 or a reply."""


def normalize(raw: str, region: str = "US", *, strict: bool = True) -> str:
    """Return the E.164 form of a number typed any usual way.

    ``region`` reads numbers written without a country code (``WAPIPE_DEFAULT_REGION``): with ``CO``,
    ``"310 305 5424"`` is ``+573103055424``. Provider prefixes such as ``whatsapp:`` are dropped.
    ``strict`` checks the number is assigned in its country's plan (input from API callers); numbers that
    a provider delivered to us only need to be possible, since the provider has already reached them.

    A number in WhatsApp's own form for a country whose plan has moved on is given in the plan's form
    (:func:`_plan_form`), so one person is one contact whichever way the number reached us.
    """
    return _normalize(raw, region, strict)


def provider_number(raw: str, region: str) -> str | None:
    """A number a provider delivered (not strict, see :func:`normalize`) -> E.164; None when unusable.

    WhatsApp numbers always carry their country code (a ``wa_id`` is E.164 without the plus), so digits
    alone are read as international, never in ``region``: the 10-digit id ``3546123456`` is Iceland's
    +354 612 3456, not a US number. WhatsApp's older forms of Mexican and Brazilian mobiles are given in
    the plan's form (:func:`_plan_form`). And any other number in E.164's shape that the numbering plan
    calls impossible is kept as the provider wrote it: it is the id the provider answers to, and refusing
    it lost the message (a 400 to Twilio, a route that could never store it for Meta).
    """
    text = _without_prefix((raw or "").strip())
    digits = text.removeprefix("+")
    if digits.isdigit():
        text = "+" + digits
    try:
        return normalize(text, region, strict=False)
    except InvalidPhone:
        return text if _E164_SHAPE.fullmatch(text) else None


def contact_phone(phone: str | None) -> str | None:
    """A sender's phone as its contact is stored: the ingress gave it in the numbering plan's form, but an
    event an earlier release's ingress queued (before migration 0011, or while the release rolled out)
    may carry WhatsApp's older form (:func:`_plan_form`): given again here (cached, and a no-op on a number
    already in that form), so one person stays one contact. Used by the router and by dead-letter replay,
    which must find the contact the router would."""
    return (provider_number(phone, "US") or phone) if phone else None


# E.164: a plus, a country code that does not start with 0, at most 15 digits in all.
_E164_SHAPE = re.compile(r"\+[1-9][0-9]{7,14}")
_E164_MAX_LENGTH = len("+") + 15


def _without_prefix(text: str) -> str:
    return text[len("whatsapp:") :] if text.lower().startswith("whatsapp:") else text


# Cached: parsing with phonenumbers is the dearest step of a webhook or an API call, the same numbers come
# again and again (senders, our own numbers, notification recipients), and the answer depends on nothing
# but the arguments. A number that is refused is parsed again each time (exceptions are not cached).
@functools.lru_cache(maxsize=8192)
def _normalize(raw: str, region: str, strict: bool) -> str:
    text = _without_prefix((raw or "").strip())
    if not text:
        raise InvalidPhone("phone number is empty")
    # WhatsApp ids (wa_id) are E.164 digits without the plus.
    if text.isdigit() and len(text) > 10:
        text = "+" + text
    parsed, valid = _read(text, region)
    if not valid and (strict or not phonenumbers.is_possible_number(parsed)):
        raise InvalidPhone("not a valid phone number for its country")
    number = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    # A plan's possible lengths may run past E.164's 15 digits, which providers address (German national
    # numbers run to 15 digits, 17 with the country code).
    if len(number) > _E164_MAX_LENGTH:
        raise InvalidPhone("not a phone number: longer than the 15 digits E.164 allows")
    # phonenumbers reads a trunk prefix off an international number too, while what is left is possible:
    # "000000" in DE is +4900000, which reads back as +490000, then +49000. Stored, such a number would be
    # another one at each lookup; it is no one's. Only a number its plan calls invalid does this (a valid
    # one reads back as itself), so only those are read again: parsing is the dearest step here.
    if (
        not valid
        and phonenumbers.format_number(_read(number, region)[0], phonenumbers.PhoneNumberFormat.E164)
        != number
    ):
        raise InvalidPhone("not a phone number: its E.164 form reads as another number")
    return number


def _read(text: str, region: str) -> tuple[phonenumbers.PhoneNumber, bool]:
    """The number ``text`` is, in its plan's form (:func:`_plan_form`), and whether the plan calls it
    valid."""
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"not a phone number: {exc}") from None
    if phonenumbers.is_valid_number(parsed):
        return parsed, True
    plan = _plan_form(parsed)
    return (plan, True) if plan is not None else (parsed, False)


def _plan_form(parsed: phonenumbers.PhoneNumber) -> phonenumbers.PhoneNumber | None:
    """The numbering plan's valid form of ``parsed``, a number the plan calls invalid, when it is a mobile
    that WhatsApp still writes the old way; None for any other.

    WhatsApp ids keep forms the plans dropped: Mexican mobiles as +52 1 and ten digits (Mexico dropped the
    1 in 2019), Brazilian mobiles registered before the ninth digit without it (+55, area, eight digits
    from 6 to 9). The same person then reaches us as +52 1 55... in a webhook and as +52 55... from an API
    caller: two contacts, so an opt-out sent from one form did not stop messages to the other. Both
    providers deliver to the plan's form (it is the form API callers already send to), so it is the one
    kept. Only a number the plan calls invalid, whose plan form is valid, is rewritten: a Brazilian
    landline (area, then 2 to 5) is left alone.
    """
    national = str(parsed.national_number)
    if parsed.country_code == 52 and len(national) == 11 and national.startswith("1"):
        plan = national[1:]
    elif parsed.country_code == 55 and len(national) == 10 and national[2] in "6789":
        plan = national[:2] + "9" + national[2:]
    else:
        return None
    candidate = phonenumbers.PhoneNumber(country_code=parsed.country_code, national_number=int(plan))
    return candidate if phonenumbers.is_valid_number(candidate) else None
