"""Whole-message keywords (the router's opt-out and opt-in words, a menu pack's menu and cancel words) and
titles: the text with what surrounds its words trimmed."""

from __future__ import annotations


def trimmed(text: str, keep_first: str = "", keep_last: str = "") -> str:
    """``text`` without anything but letters and digits (spaces, punctuation, emoji, symbols, joiners,
    WhatsApp's *bold* marks) at either end; ``keep_first`` and ``keep_last``: other characters that may
    open and close it. By hand: a pattern anchored at the end (``[\\W_]+$``) is tried from every character
    of such a run inside the text, to the run's end (quadratic: a message of 65,536 characters took 25-40
    s)."""
    start, end = 0, len(text)
    while start < end and not (text[start].isalnum() or text[start] in keep_first):
        start += 1
    while end > start and not (text[end - 1].isalnum() or text[end - 1] in keep_last):
        end -= 1
    return text[start:end]
