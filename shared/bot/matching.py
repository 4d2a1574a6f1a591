"""Name matching for ``/project mobile`` and ``/workspace demo``, conservative because a wrong project
files proposals in the wrong place.

In order: a name exactly as written, in any case ("C#", never "C++"); then, names compared ignoring case,
accents, emoji and punctuation ("🚀 Launch" is "launch"), save the symbols that make names differ ("C#",
"C++", "Node.js" keep theirs): an exact name; a
unique name that starts with the query or has a word that does ("mobile", "app" for "Mobile App"); a
name only similar to the query (difflib, so "webiste" still finds "Website Redesign"), when it is close
enough and clearly closer than any other. Anything less (a query inside a word, a fainter likeness)
chooses nothing: it is offered back as a guess. A query of emoji alone ("📱"), which folds to nothing of
a name, names the names with that emoji ("📱 Mobile"), each emoji whole: "💻" only offers "👨‍💻 Dev".
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# Score tiers: a better kind of match always beats a worse one. Similarity scores ratio * _SIMILAR_MAX.
_EXACT, _PREFIX, _SUBSTRING = 100.0, 80.0, 60.0
_SIMILAR_MAX = 50.0
# A similar name is chosen from _SIMILAR_SURE_RATIO ("webiste" -> "website" is 0.86), and only when the
# runner-up is _SIMILAR_LEAD_RATIO behind; from _SIMILAR_MIN_RATIO it is only offered ("sprint" is 0.6 of
# "site", far from a typo of it).
_SIMILAR_MIN_RATIO, _SIMILAR_SURE_RATIO, _SIMILAR_LEAD_RATIO = 0.7, 0.8, 0.1
# No one has ten thousand workspaces or projects of one name.
_NAMESAKE_DIGITS = 4
# A word as fold keeps it: letters and digits, with the symbols that tell names apart when they end it
# ("C#", "C++") or join it ("Node.js", "ASP.NET"). Without them "C++" was "c", as "C#" is, and chose it;
# a "#" before a word ("Sprint #2") numbers rather than names, and stays out.
_WORD = re.compile(r"[^\W_]+(?:\.[^\W_]+)*[+#]*")
# What an emoji is made of: symbols, skin tones, joiners (ZWJ) and variation selectors.
_EMOJI_PARTS = frozenset({"So", "Sk", "Cf", "Mn"})
# The emoji variation selector, which one keyboard sends and another leaves out ("❤️" and "❤").
_EMOJI_STYLE = "\ufe0f"
# What makes several emoji characters one emoji: the zero-width joiner ("👨‍💻"), the skin tones ("👍🏽"),
# the tags of a subdivision flag, and the regional letters a country flag ("🇵🇹") is a pair of.
_JOINER = "\u200d"
_SKIN_TONES = ("\U0001f3fb", "\U0001f3ff")
_TAGS = ("\U000e0020", "\U000e007f")
_FLAG_LETTERS = ("\U0001f1e6", "\U0001f1ff")


@dataclass(frozen=True)
class Found(Generic[T]):
    """What a query names. ``sure``: ``items`` are the names it gives (one: that item; several: the user
    must say which). Not sure: ``items`` are only guesses, none to be chosen (maybe none at all)."""

    items: list[T] = field(default_factory=list)
    sure: bool = False


def _caseless(text: str) -> str:
    """``text`` as a name exactly as written is compared: in any case, whitespace runs as one space, and
    NFKC, so a full-width keyboard's "Ｃ＃" is "C#"; punctuation and emoji count, unlike in :func:`fold`."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def fold(text: str) -> str:
    """``text`` as names are compared: its words of letters and digits, lower case, without accents (so
    without emoji and punctuation too, save a word's own "#", "+" and "." as in "C#", "C++", "Node.js");
    a name of symbols alone ("🚀") stays itself, in lower case."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    unmarked = "".join(ch for ch in decomposed if not unicodedata.category(ch).startswith("M"))
    return " ".join(_WORD.findall(unmarked)) or " ".join(text.casefold().split())


def score(query: str, name: str) -> float:
    """How well ``query`` names ``name`` (0: not at all), in tiers: exact, a prefix of the name or of one
    of its words, anywhere inside it, then similarity."""
    return _score(fold(query), fold(name))


def _score(q: str, n: str) -> float:
    if not q:
        return 0.0
    if q == n:
        return _EXACT
    if (" " + n).find(" " + q) >= 0:
        return _PREFIX
    if q in n:
        return _SUBSTRING
    ratio = max(_similarity(q, candidate) for candidate in [n, *n.split()])
    return ratio * _SIMILAR_MAX if ratio >= _SIMILAR_MIN_RATIO else 0.0


def _similarity(query: str, name: str) -> float:
    """difflib's ratio, or 0 when its cheap upper bounds already fall short (as ``get_close_matches``
    does): the full ratio costs time quadratic in the text, and the text is whatever a user sent, up to
    4,096 characters; compared with every name and word of every project, it held a worker for seconds."""
    matcher = difflib.SequenceMatcher(None, query, name)
    if matcher.real_quick_ratio() < _SIMILAR_MIN_RATIO or matcher.quick_ratio() < _SIMILAR_MIN_RATIO:
        return 0.0
    return matcher.ratio()


def find(query: str, items: Sequence[T], name: Callable[[T], str]) -> Found[T]:
    """The items ``query`` names (see :class:`Found`): those it names exactly as written, else as
    :func:`fold` compares names, ``"<name> #<n>"`` picking among namesakes."""
    # Before any folding, which makes distinct names one: "C#" would list "C++" beside it.
    written = _caseless(query)
    exact = [item for item in items if written and _caseless(name(item)) == written]
    if exact:
        return Found(exact, sure=True)
    picked = namesake(query, items, name)
    if picked is not None:
        return Found([picked], sure=True)
    if _emoji_only(written):
        # Folded, "📱 Mobile" is "mobile": nothing of it is left for "📱" to match.
        sent = _emoji_units(written)
        holding = [item for item in items if set(sent) <= set(_emoji_units(name(item)))]
        if holding:
            return Found(holding, sure=True)
        # "💻" is inside "👨‍💻", another emoji ("technologist"): such a name is only offered, never chosen.
        emoji = "".join(sent)
        return Found([item for item in items if emoji in "".join(_emoji_units(name(item)))])
    folded = fold(query)
    found = _find(folded, items, name)
    head = _numbered_head(query)
    if head is None or (found.sure and any(fold(name(item)) == folded for item in found.items)):
        return found  # no number, or the number is part of a name ("Sprint #2")
    # A number no namesake has ("Mobile App #3" with one Mobile App): the name without it is only offered,
    # never chosen, or the number the user meant would be quietly ignored.
    named = _find(fold(head), items, name)
    return Found(named.items, sure=named.sure and len(named.items) > 1)


def _emoji_only(text: str) -> bool:
    """Whether ``text`` is emoji and spaces alone ("📱", "👍🏽 ❤️")."""
    parts = [unicodedata.category(ch) for ch in text if not ch.isspace()]
    return "So" in parts and _EMOJI_PARTS.issuperset(parts)


def _emoji_units(text: str) -> list[str]:
    """The emoji of ``text``, each whole: one joined by ZWJ ("👨‍💻"), with a skin tone ("👍🏽"), a keycap or
    tags, or a flag's pair of letters, is one emoji, not those it is made of; without the variation
    selector ("❤️" is "❤"). Any other character is a unit of its own; spaces are left out."""
    units: list[str] = []
    for ch in _caseless(text).replace(_EMOJI_STYLE, ""):
        if ch.isspace():
            units.append("")  # what follows a space starts anew
        elif units and units[-1] and (units[-1].endswith(_JOINER) or _extends(units[-1], ch)):
            units[-1] += ch
        else:
            units.append(ch)
    return [unit for unit in units if unit]


def _extends(unit: str, ch: str) -> bool:
    """Whether ``ch`` belongs to the emoji ``unit`` ends: a joiner, a skin tone, a mark such as the keycap,
    a tag, or the second letter of a flag."""
    if ch == _JOINER or _SKIN_TONES[0] <= ch <= _SKIN_TONES[1] or _TAGS[0] <= ch <= _TAGS[1]:
        return True
    if unicodedata.category(ch) in ("Mn", "Me"):
        return True
    flag = _FLAG_LETTERS[0] <= ch <= _FLAG_LETTERS[1]
    return flag and len(unit) == 1 and _FLAG_LETTERS[0] <= unit <= _FLAG_LETTERS[1]


def _find(q: str, items: Sequence[T], name: Callable[[T], str]) -> Found[T]:
    scored = [(_score(q, fold(name(item))), item) for item in items]
    scored = [(value, item) for value, item in scored if value > 0]
    if not scored:
        return Found()
    top = max(value for value, _ in scored)
    if top >= _PREFIX:
        return Found([item for value, item in scored if value == top], sure=True)
    if top == _SUBSTRING:
        return Found([item for value, item in scored if value == top])
    close = [item for value, item in scored if value > top - _SIMILAR_LEAD_RATIO * _SIMILAR_MAX]
    return Found(close, sure=top >= _SIMILAR_SURE_RATIO * _SIMILAR_MAX)


def best_matches(query: str, items: Sequence[T], name: Callable[[T], str]) -> list[T]:
    """The items ``query`` surely names: one when clear, several when ambiguous, none when it names none
    surely (its guesses are :func:`find`'s)."""
    found = find(query, items, name)
    return found.items if found.sure else []


def _numbered_head(query: str) -> str | None:
    """The name in ``"<name> #<n>"``, else None."""
    head, _, number = query.strip().rpartition("#")
    head, number = head.strip(), number.strip()
    if not number.isdecimal() or len(number) > _NAMESAKE_DIGITS or not head:
        return None
    return head


def namesake(query: str, items: Sequence[T], name: Callable[[T], str]) -> T | None:
    """The item ``"<name> #<n>"`` picks: the n-th, in ``items``' order, of several items with that name as
    :func:`fold` compares names (two workspaces called "Demo"), which no more of the name could ever tell
    apart; else None. A ``#`` rather than a bare number: "Sprint 2" may be a name of its own."""
    # Only a short number can pick a namesake: int() refuses a run of over 4,300 digits, a ValueError that
    # failed the command instead of answering that nothing matches.
    head = _numbered_head(query)
    if head is None:
        return None
    number = query.strip().rpartition("#")[2].strip()
    same = [item for item in items if fold(name(item)) == fold(head)]
    index = int(number) - 1
    return same[index] if len(same) > 1 and 0 <= index < len(same) else None


def namesake_numbers(items: Sequence[T], name: Callable[[T], str]) -> dict[int, int]:
    """Items that share their name, as :func:`fold` compares names, with another: position in ``items``
    -> n, for :func:`namesake`."""
    seen: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        seen.setdefault(fold(name(item)), []).append(position)
    return {
        position: n
        for positions in seen.values()
        if len(positions) > 1
        for n, position in enumerate(positions, start=1)
    }
