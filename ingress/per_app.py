"""One object per Flask app, made on first use: in each gunicorn worker, not at import or in the master."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import current_app

T = TypeVar("T")


def per_app(key: str, make: Callable[[], T]) -> T:
    """The current app's object under ``key`` in ``app.extensions``, made by ``make`` the first time.

    Two threads may both make one on first use; ``setdefault`` keeps the first stored, and both get it.
    """
    extensions = current_app.extensions
    found: T | None = extensions.get(key)
    if found is None:
        found = extensions.setdefault(key, make())
    return found
