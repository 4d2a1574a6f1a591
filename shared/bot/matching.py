"""Forgiving name matching for ``/project mobile`` and ``/workspace demo``: case-insensitive, by exact
name, prefix, word prefix, substring, then similarity (difflib) so small typos still find the name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# Score tiers: a better kind of match always beats a worse one; within the similarity tier, names
# closer than this to the best are shown as choices rather than guessed between.
_EXACT, _PREFIX, _WORD_PREFIX, _SUBSTRING = 100.0, 80.0, 70.0, 60.0
_SIMILAR_MAX, _SIMILAR_MIN_RATIO, _SIMILAR_TIE = 50.0, 0.6, 2.5
# No one has ten thousand workspaces or projects of one name.
_NAMESAKE_DIGITS = 4


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def score(query: str, name: str) -> float:
    """How well ``query`` names ``name`` (0: not at all)."""
    q, n = _fold(query), _fold(name)
    if not q:
        return 0.0
    if q == n:
        return _EXACT
    if n.startswith(q):
        return _PREFIX
    words = n.split()
    if any(word.startswith(q) for word in words):
        return _WORD_PREFIX
    if q in n:
        return _SUBSTRING
    ratio = max(_similarity(q, candidate) for candidate in [n, *words])
    return ratio * _SIMILAR_MAX if ratio >= _SIMILAR_MIN_RATIO else 0.0


def _similarity(query: str, name: str) -> float:
    """difflib's ratio, or 0 when its cheap upper bounds already fall short (as ``get_close_matches``
    does): the full ratio costs time quadratic in the text, and the text is whatever a user sent, up to
    4,096 characters; compared with every name and word of every project, it held a worker for seconds."""
    matcher = difflib.SequenceMatcher(None, query, name)
    if matcher.real_quick_ratio() < _SIMILAR_MIN_RATIO or matcher.quick_ratio() < _SIMILAR_MIN_RATIO:
        return 0.0
    return matcher.ratio()


def best_matches(query: str, items: Sequence[T], name: Callable[[T], str]) -> list[T]:
    """The item ``query`` names: one item when clear, several when ambiguous, none when nothing fits."""
    scored = [(score(query, name(item)), item) for item in items]
    scored = [(value, item) for value, item in scored if value > 0]
    if not scored:
        return []
    top = max(value for value, _ in scored)
    margin = _SIMILAR_TIE if top <= _SIMILAR_MAX else 0.0
    return [item for value, item in scored if value >= top - margin]


def namesake(query: str, items: Sequence[T], name: Callable[[T], str]) -> T | None:
    """The item ``"<name> #<n>"`` picks: the n-th, in ``items``' order, of several items with exactly that
    name (two workspaces called "Demo"), which no more of the name could ever tell apart; else None. A
    ``#`` rather than a bare number: "Sprint 2" may be a name of its own."""
    head, _, number = query.strip().rpartition("#")
    head, number = head.strip(), number.strip()
    # Only a short number can pick a namesake: int() refuses a run of over 4,300 digits, a ValueError that
    # failed the command instead of answering that nothing matches.
    if not number.isdecimal() or len(number) > _NAMESAKE_DIGITS or not head:
        return None
    same = [item for item in items if _fold(name(item)) == _fold(head)]
    index = int(number) - 1
    return same[index] if len(same) > 1 and 0 <= index < len(same) else None


def namesake_numbers(items: Sequence[T], name: Callable[[T], str]) -> dict[int, int]:
    """Items that share their exact name with another: position in ``items`` -> n, for :func:`namesake`."""
    seen: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        seen.setdefault(_fold(name(item)), []).append(position)
    return {
        position: n
        for positions in seen.values()
        if len(positions) > 1
        for n, position in enumerate(positions, start=1)
    }
