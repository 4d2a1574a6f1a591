"""How a pack's menu and cancel words are compared with what a user sends."""

from __future__ import annotations

from shared.words import trimmed


def keyword(text: str) -> str:
    """``text`` folded as a menu or cancel word: any case, spacing collapsed, and punctuation or emoji
    around it dropped ("Cancel!", "cancel 🙏" and "*cancel*", as the hint writes it, are "cancel"). Still
    the whole message, so a description that merely mentions the word is no cancel. A word of nothing but
    such characters ("#") is kept as it is, not folded to nothing (which would match an empty answer)."""
    spaced = " ".join(text.split()).casefold()
    return trimmed(spaced) or spaced
