"""shared.replies: a reply longer than the provider takes is cut at a word, whatever the text."""

from __future__ import annotations

import pytest

from shared.replies import _within


@pytest.mark.parametrize(
    "text",
    ["word " * 400, "x" * 2000, " " * 1700 + "tail", "line\n" * 400, "\n" * 1599 + "end of a long reply"],
)
def test_any_text_is_cut_to_the_limit_with_an_ellipsis(text: str) -> None:
    cut = _within(text, 1600)
    assert len(cut) <= 1600
    assert cut.endswith("…")


def test_a_text_within_the_limit_is_kept_whole() -> None:
    assert _within("short", 1600) == "short"
