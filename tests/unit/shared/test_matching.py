"""shared.bot.matching: a long text is not compared character by character with every name."""

from __future__ import annotations

import difflib

import pytest

from shared.bot.matching import best_matches, score


def test_a_text_far_longer_than_any_name_is_not_compared_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    # difflib's full ratio is quadratic in the text: a 4,096-character message compared with every name and
    # word of 300 projects held a commands worker for seconds. Its cheap upper bounds rule such texts out.
    full_ratios: list[int] = []
    real_ratio = difflib.SequenceMatcher.ratio

    def counted(self: difflib.SequenceMatcher) -> float:
        full_ratios.append(1)
        return real_ratio(self)

    monkeypatch.setattr(difflib.SequenceMatcher, "ratio", counted)
    names = [f"Project {index} mobile app" for index in range(300)]

    assert best_matches("mobile app " * 370, names, str) == []
    assert full_ratios == []
    # A typo still takes the full comparison, and still finds its name.
    assert best_matches("webiste", ["Website Redesign", "Mobile App"], str) == ["Website Redesign"]
    assert full_ratios
    assert score("webiste", "Website Redesign") > 0
