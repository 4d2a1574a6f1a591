"""The Twilio blueprint's own form parser gives exactly the fields werkzeug's ``request.form`` gives.

The signature is computed over these fields, so any difference (an escape decoded another way, a blank
field dropped, a repeated key merged) would turn valid requests into 403s or change the event.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from ingress.twilio import form_pairs

DATA = Path(__file__).resolve().parents[2] / "data" / "twilio"
FORM = "application/x-www-form-urlencoded"


def werkzeug_form(body: bytes) -> list[tuple[str, list[str]]]:
    """Each key (in order of first appearance) with all its values, in order: what the signature and
    the event are built from."""
    environ = EnvironBuilder(method="POST", data=body, content_type=FORM).get_environ()
    return list(Request(environ).form.lists())


def ours(body: bytes) -> list[tuple[str, list[str]]]:
    return list(MultiDict(form_pairs(body)).lists())


# Bodies made of what matters to the parser: separators, escapes (valid, truncated, not UTF-8), '+'.
_pieces = st.sampled_from(
    ["&", "=", "+", "%", "%2", "%2B", "%3D", "%26", "%C3%A9", "%FF", "%e2%82", "a", "Z"]
)
form_bodies = st.one_of(
    st.lists(st.one_of(_pieces, st.text(max_size=5)), max_size=30).map(lambda parts: "".join(parts).encode()),
    st.binary(max_size=200),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form_bodies)
def test_form_pairs_equal_werkzeugs_form(body: bytes) -> None:
    assert ours(body) == werkzeug_form(body)


def test_captured_payloads_parse_like_werkzeug() -> None:
    for path in sorted(DATA.glob("*.txt")):
        body = path.read_bytes().strip()
        assert ours(body) == werkzeug_form(body), path.name
        assert form_pairs(body), path.name


def test_not_utf8_is_an_empty_form() -> None:
    assert form_pairs(b"Body=\xff\xfe&MessageSid=SM1") == []
    assert werkzeug_form(b"Body=\xff\xfe&MessageSid=SM1") == []


def test_repeated_keys_and_blank_values_are_kept_in_order() -> None:
    assert form_pairs(b"a=1&b=&a=2&c&&d=x+y%2Bz") == [
        ("a", "1"),
        ("b", ""),
        ("a", "2"),
        ("c", ""),
        ("d", "x y+z"),
    ]
