"""Whole-message keywords (the router's opt-out and opt-in words, a menu pack's menu and cancel words): the
text with what surrounds its words trimmed."""

from __future__ import annotations


def trimmed(text: str) -> str:
    """``text`` without anything but letters and digits (spaces, punctuation, emoji, symbols, joiners,
    WhatsApp's *bold* marks) at either end. By hand: a pattern anchored at the end (``[\\W_]+$``) is tried
    from every character of such a run inside the text, to the run's end (quadratic: a message of 65,536
    characters took 25-40 s)."""
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]
