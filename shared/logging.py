"""structlog setup: JSON off a terminal, readable on one, and no phone number or secret in any line.

Masking is a processor in the shared chain, so it applies to our own events and, through
``ProcessorFormatter``, to every stdlib logger (Celery, gunicorn, Flask) as well.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# Anything shaped like a phone number: an optional +, then 8 or more digits possibly split by spaces,
# dots or dashes. Shorter digit runs (ids, counts, years, 6-digit codes) are left alone.
_PHONE = re.compile(r"(?<![\w])\+?\d(?:[ .\-]?\d){7,}(?![\w])")
_SECRET_KEY = re.compile(
    r"(secret|token|passw|api[_-]?key|authorization|signature|credential|code_hash|^code$|auth)", re.I
)
# Bearer tokens, Twilio auth tokens/SIDs and OpenAI-style keys that end up inside free text.
_SECRET_VALUE = re.compile(r"(Bearer\s+[\w.\-]+|sk-[\w\-]{8,}|\b[0-9a-f]{32}\b)", re.I)
REDACTED = "[redacted]"


def mask_phone(text: str) -> str:
    """Mask each phone-shaped run, keeping its last 4 digits: ``+15551234567`` -> ``+*******4567``."""
    return _PHONE.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    prefix = "+" if match.group(0).startswith("+") else ""
    return prefix + "*" * (len(digits) - 4) + digits[-4:]


def scrub(value: Any) -> Any:
    """Mask phones and secrets in a value of any shape; keys that look secret lose their value."""
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, mask_phone(value))
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if isinstance(key, str) and _SECRET_KEY.search(key) else scrub(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set):
        return [scrub(item) for item in value]
    return value


def scrub_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """structlog processor: drop secret-looking fields, mask phones everywhere (event text included)."""
    return scrub(dict(event_dict))


def _render_stdlib_message(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    # Foreign (stdlib) records arrive with their formatted text as the event; mask it like ours.
    record = event_dict.get("_record")
    if record is not None and record.exc_info and "exc_info" not in event_dict:
        event_dict["exc_info"] = record.exc_info
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and stdlib logging once per process. ``fmt`` is auto, json or console."""
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not getattr(stream, "isatty", lambda: False)())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _render_stdlib_message,
        # Tracebacks become text before scrubbing in both formats: exception messages carry phone numbers.
        structlog.processors.format_exc_info,
        scrub_processor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _noop(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    return event_dict


def get_logger(name: str | None = None) -> Any:
    return structlog.stdlib.get_logger(name)
