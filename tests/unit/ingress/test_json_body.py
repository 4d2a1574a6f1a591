"""The nesting limit of JSON bodies, with and without the bracket-count shortcut."""

from __future__ import annotations

import json

import pytest

from ingress.json_body import MAX_DEPTH, MAX_NUMBER_DIGITS, NumberTooLong, TooDeep, loads


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("as_bytes", [False, True])
def test_depth_at_the_limit_parses_and_one_more_is_refused(as_bytes: bool) -> None:
    def encode(text: str) -> str | bytes:
        return text.encode() if as_bytes else text

    assert loads(encode(nested(MAX_DEPTH))) == json.loads(nested(MAX_DEPTH))
    with pytest.raises(ValueError, match="nested deeper"):
        loads(encode(nested(MAX_DEPTH + 1)))
    with pytest.raises(ValueError, match="nested deeper"):
        loads(encode(json.dumps({"entry": [{"changes": json.loads(nested(MAX_DEPTH))}]})))


def test_brackets_inside_strings_do_not_make_a_shallow_body_deep() -> None:
    # More brackets than the limit, all in string values: the count cannot rule it out, the walk does.
    body = json.dumps({"text": "[{" * MAX_DEPTH, "items": [[1], {"a": [2]}]})
    assert loads(body)["items"] == [[1], {"a": [2]}]
    assert loads(body.encode())["text"] == "[{" * MAX_DEPTH


def test_many_sibling_containers_are_not_depth() -> None:
    body = json.dumps([[i] for i in range(MAX_DEPTH * 3)])
    assert len(loads(body)) == MAX_DEPTH * 3


@pytest.mark.parametrize("digit", ["7", "7.5"])
def test_a_number_at_the_length_limit_parses_and_a_longer_one_is_refused(digit: str) -> None:
    at_limit = "1" * (MAX_NUMBER_DIGITS - len(digit)) + digit
    assert loads(f'{{"n": {at_limit}}}')["n"] == json.loads(at_limit)
    # 5,000 digits: past what int() converts, which raised its own, unrelated ValueError.
    with pytest.raises(NumberTooLong, match=f"longer than {MAX_NUMBER_DIGITS} digits"):
        loads(f'{{"n": {"1" * 5_000}{digit}}}'.encode())


def test_too_deep_is_its_own_error() -> None:
    with pytest.raises(TooDeep):
        loads(nested(5_000))
