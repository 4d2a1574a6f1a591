"""Argument types the commands share: a bad number is a usage error naming its flag (or variable), never a
traceback or a server started with it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def add_data_dir(parser: argparse.ArgumentParser, *, default: object = None) -> None:
    """``--data-dir``, for every command that uses the servers of a ``wapipe up`` (the CLI finds their URLs
    in that folder when none is set): one started with ``--data-dir X`` is reached by every other command
    given ``--data-dir X``, as by $WAPIPE_DATA_DIR. Without it on all of them, the rest looked in ./var (or
    refused the option), and found no servers, or another ``wapipe up``'s."""
    parser.add_argument(
        "--data-dir", default=default, help="data folder of `wapipe up` (default $WAPIPE_DATA_DIR or ./var)"
    )


def at_least_one(text: str) -> int:
    """A whole number, 1 or more (a pool size, a limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def port_number(text: str) -> int:
    """A TCP port to listen on, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1 to 65535)")
    return value


def from_environment(variable: str, default: T, kind: Callable[[str], T]) -> T:
    """A value a platform or the operator sets through ``variable`` ($PORT, $WEB_CONCURRENCY, ...), checked
    as its flag is; a bad one is a :class:`SettingsError` naming the variable (the CLI says it in one line,
    exit 2). Read only when used: ``wapipe up`` passes the web process its port as a flag."""
    from shared.settings import SettingsError

    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        return kind(text)
    except argparse.ArgumentTypeError as exc:
        raise SettingsError(f"${variable}: {exc}") from None


def gunicorn_worker_class(text: str) -> str:
    """A worker class gunicorn can load (``gthread``, ``sync``, or a dotted path to one installed)."""
    from gunicorn.util import load_class

    try:
        load_class(text, default="gthread", section="gunicorn.workers")
    except Exception:  # gunicorn wraps whatever the import raised in a RuntimeError holding a traceback
        raise argparse.ArgumentTypeError(f"{text!r} is not a gunicorn worker class installed here") from None
    return text
