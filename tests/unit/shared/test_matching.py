"""shared.bot.matching: a name written exactly is chosen first; a long text is not compared character by
character with every name."""

from __future__ import annotations

import difflib

import pytest

from shared.bot.matching import best_matches, find, score


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("C#", ["C#"]),
        ("c++", ["C++"]),
        ("Ｃ＃", ["C#"]),
        ("🚀 Launch", ["🚀 Launch"]),
        (" launch ", ["Launch"]),
        ("c", ["C++", "C#"]),
        # Not namesakes: "#2" numbers names that differ in nothing but case, accents and emoji.
        ("c #2", ["C++", "C#"]),
        ("", []),
    ],
)
def test_a_name_written_exactly_is_chosen_before_names_alike_without_punctuation(
    query: str, expected: list[str]
) -> None:
    # Without emoji "🚀 Launch" is "launch"; "c" starts both "C++" and "C#".
    names = ["C++", "C#", "Launch", "🚀 Launch"]
    assert best_matches(query, names, str) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("C++", ["C++ Tools"]),
        ("c#", ["C#"]),
        ("node.js", ["Node.js API"]),
        ("node", ["Node.js API", "Node JS"]),
        ("sprint 2", ["Sprint #2"]),
    ],
)
def test_the_symbols_that_tell_names_apart_are_compared(query: str, expected: list[str]) -> None:
    # "C++" and "C#" differ only in their symbols: compared without them, "C++" chose "C#".
    names = ["C#", "C++ Tools", "Node.js API", "Node JS", "Sprint #2"]
    assert best_matches(query, names, str) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("📱", ["📱 Mobile"]),
        (" ❤️ ", ["Team ❤ Fans"]),
        ("🚀", ["🚀 Launch", "Rocket 🚀"]),
        ("🎉", []),
    ],
)
def test_a_query_of_emoji_alone_finds_the_names_with_that_emoji(query: str, expected: list[str]) -> None:
    # Compared without emoji, "📱" named nothing: "📱 Mobile" is "mobile".
    names = ["📱 Mobile", "Mobile Web", "🚀 Launch", "Rocket 🚀", "Team ❤ Fans"]
    assert best_matches(query, names, str) == expected


@pytest.mark.parametrize(
    ("query", "chosen", "offered"),
    [
        ("💻", [], ["👨\u200d💻 Dev"]),
        ("❤️", ["Team ❤ Fans"], ["❤️\u200d🔥 Love"]),
        ("❤️", [], ["❤️\u200d🔥 Love"]),
        ("👍", [], ["👍🏽 Thanks"]),
        ("👍🏽", ["👍🏽 Thanks"], []),
        ("👨\u200d💻", ["👨\u200d💻 Dev"], []),
    ],
)
def test_an_emoji_inside_another_emoji_is_only_offered(
    query: str, chosen: list[str], offered: list[str]
) -> None:
    # Before: "💻" chose "👨‍💻 Dev" and "❤️" "❤️‍🔥 Love": a joined emoji or one with a skin tone is
    # one emoji of its own, not the emoji it is made of.
    names = ["Mobile", *chosen, *offered]
    found = find(query, names, str)
    assert (found.items, found.sure) == ((chosen, True) if chosen else (offered, False))


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
