"""How a pack's menu and cancel words are compared with what a user sends."""

from __future__ import annotations


def keyword(text: str) -> str:
    """``text`` folded as a menu or cancel word: any case, spacing collapsed, and punctuation or emoji
    around it dropped ("Cancel!", "cancel 🙏" and "*cancel*", as the hint writes it, are "cancel"). Still
    the whole message, so a description that merely mentions the word is no cancel. A word of nothing but
    such characters ("#") is kept as it is, not folded to nothing (which would match an empty answer)."""
    spaced = " ".join(text.split()).casefold()
    return _inner(spaced) or spaced


def _inner(text: str) -> str:
    # Anything but letters and digits (punctuation, emoji, WhatsApp's *bold* marks) trimmed from both ends,
    # by hand: a pattern anchored at the end is tried from every character of a run of them inside the
    # text, to the run's end (quadratic: a message of 65,536 characters took about 40 s).
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]
