"""The nesting limit of JSON bodies, with and without the bracket-count shortcut."""

from __future__ import annotations

import json

import pytest

from ingress.json_body import MAX_DEPTH, loads


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
