"""Phone numbers: E.164 in storage and on the wire, masked in anything a person reads."""

from __future__ import annotations

import functools

import phonenumbers

from shared.logging import mask_phone

__all__ = ["InvalidPhone", "mask_phone", "normalize", "provider_number"]


class InvalidPhone(ValueError):
    """The text is not a valid phone number; the message says why, for a 422 or a reply."""


def normalize(raw: str, region: str = "US", *, strict: bool = True) -> str:
    """Return the E.164 form of a number typed any usual way.

    ``region`` reads numbers written without a country code (``WAPIPE_DEFAULT_REGION``): with ``CO``,
    ``"310 305 5424"`` is ``+573103055424``. Provider prefixes such as ``whatsapp:`` are dropped.
    ``strict`` checks the number is assigned in its country's plan (input from API callers); numbers that
    a provider delivered to us only need to be possible, since the provider has already reached them.
    """
    return _normalize(raw, region, strict)


def provider_number(raw: str, region: str) -> str | None:
    """A number a provider delivered (not strict, see :func:`normalize`) -> E.164; None when unusable."""
    try:
        return normalize(raw, region, strict=False)
    except InvalidPhone:
        return None


# Cached: parsing with phonenumbers is the dearest step of a webhook or an API call, the same numbers come
# again and again (senders, our own numbers, notification recipients), and the answer depends on nothing
# but the arguments. A number that is refused is parsed again each time (exceptions are not cached).
@functools.lru_cache(maxsize=8192)
def _normalize(raw: str, region: str, strict: bool) -> str:
    text = (raw or "").strip()
    if text.lower().startswith("whatsapp:"):
        text = text[len("whatsapp:") :]
    if not text:
        raise InvalidPhone("phone number is empty")
    # WhatsApp ids (wa_id) are E.164 digits without the plus.
    if text.isdigit() and len(text) > 10:
        text = "+" + text
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"not a phone number: {exc}") from None
    valid = phonenumbers.is_valid_number if strict else phonenumbers.is_possible_number
    if not valid(parsed):
        raise InvalidPhone("not a valid phone number for its country")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
