"""A model's text made fit to store and send.

PostgreSQL refuses text holding NUL (``psycopg.DataError``), and no UTF-8 encoder takes a lone surrogate
(a JSON answer may escape one, ``"\\ud800"``, and the SDK decodes it as it is): errors that no retry or
replay fixes. The other C0 control characters are no text a person wrote either: WhatsApp shows them as
boxes, or not at all. Tabs and line breaks stay: they are layout.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` without C0 control characters (tab, line feed and carriage return kept), lone surrogates
    replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub("", text))
