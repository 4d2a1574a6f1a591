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
    ratio = max(difflib.SequenceMatcher(None, q, candidate).ratio() for candidate in [n, *words])
    return ratio * _SIMILAR_MAX if ratio >= _SIMILAR_MIN_RATIO else 0.0


def best_matches(query: str, items: Sequence[T], name: Callable[[T], str]) -> list[T]:
    """The item ``query`` names: one item when clear, several when ambiguous, none when nothing fits."""
    scored = [(score(query, name(item)), item) for item in items]
    scored = [(value, item) for value, item in scored if value > 0]
    if not scored:
        return []
    top = max(value for value, _ in scored)
    margin = _SIMILAR_TIE if top <= _SIMILAR_MAX else 0.0
    return [item for value, item in scored if value >= top - margin]
