"""``scrub`` reaches its fixed point in one pass: scrubbing what it returned changes nothing.

Dead letters are scrubbed when written and again when ``wapipe dlq list`` shows them, and a line scrubbed by
a sender may be logged again by its receiver: each must read the same as the first time. The text is built
from the pieces the scrubber reacts to (URLs with credentials, queries, Bearer tokens, keys, phones, their
separators, percent-escapes) so that random input puts them side by side and inside one another.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.logging import scrub
from tests.unit.fuzz.strategies import FUZZ

_HEX_KEY = "0123456789abcdef0123456789abcdef"
# Pieces that a URL's credentials, a query value or the text between them may hold: each kind of secret,
# phones and numbers, and the characters that end an authority or a value.
_INNER = [
    "u",
    ":pw",
    "@",
    "%40",
    "Bearer abc",
    "Bearer%20abc",
    "sk-abcdefgh12",
    "4155550123",
    "0123",
    "415 - 555",
    "&token=x",
    "%26token%3Dx",
    "/",
    "?",
    " ",
    "x",
]
_URLS = st.tuples(
    st.sampled_from(["https://", "redis://", "://", "http%3A%2F%2F"]),
    st.lists(st.sampled_from(_INNER), max_size=4).map("".join),
    st.sampled_from(["@", "%40", ""]),
    st.sampled_from(["host", "10.0.0.5:6379", ""]),
    st.sampled_from(["", "/", "/v1?x=1", "#f", " "]),
).map("".join)
_QUERIES = st.tuples(
    st.sampled_from(["?", "&", ";", "%3F", "%26"]),
    st.sampled_from(["token", "api_key", "key", "next", "page", "To"]),
    st.sampled_from(["=", "%3D"]),
    st.lists(st.sampled_from(_INNER), max_size=3).map("".join),
).map("".join)
_TOKENS = st.sampled_from(["Bearer abc", "Bearer  x.y", "Bearer%20abc", "sk-abcdefgh12", _HEX_KEY])
_NUMBERS = st.sampled_from(
    [
        "4155550123",
        "+1 415 555 0123",
        "415 - 555 - 0123",
        "+1 415  555  0123",
        "(415) 555-0123",
        "%2B14155550123",
        "0123",
        "1234",
        "8000 - 8080",
        "030/1234567",
        "2026-12-07",
        "10.0.0.1",
    ]
)
_GLUE = st.sampled_from(["", "", " ", "x", "_", "/", "@", ":", "=", "-", " - ", "  ", '"', "%20", "\\n"])
_TEXT = st.lists(st.one_of(_URLS, _QUERIES, _TOKENS, _NUMBERS, _GLUE), max_size=8).map("".join)


@FUZZ
@given(_TEXT)
def test_scrubbing_scrubbed_text_changes_nothing(text: str) -> None:
    once = scrub(text)
    assert scrub(once) == once


@FUZZ
@given(_TEXT)
def test_scrubbing_a_scrubbed_phone_field_changes_nothing(text: str) -> None:
    once = scrub({"to": text, "note": text})
    assert scrub(once) == once
