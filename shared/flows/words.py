"""How a pack's menu and cancel words are compared with what a user sends."""

from __future__ import annotations

import re

# Anything but letters and digits (punctuation, emoji, WhatsApp's *bold* marks) around the word.
_AROUND = re.compile(r"^[\W_]+|[\W_]+$")


def keyword(text: str) -> str:
    """``text`` folded as a menu or cancel word: any case, spacing collapsed, and punctuation or emoji
    around it dropped ("Cancel!", "cancel 🙏" and "*cancel*", as the hint writes it, are "cancel"). Still
    the whole message, so a description that merely mentions the word is no cancel. A word of nothing but
    such characters ("#") is kept as it is, not folded to nothing (which would match an empty answer)."""
    spaced = " ".join(text.split()).casefold()
    return _AROUND.sub("", spaced) or spaced
