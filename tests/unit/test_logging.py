"""No full phone number, token or verification code reaches a log line, from structlog or stdlib loggers."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from shared.logging import configure_logging, get_logger, mask_phone

PHONE = "+15551234567"
TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"
OPENAI_KEY = "sk-test1234567890abcdefghij"
CODE = "482913"


@pytest.fixture(params=["json", "console"])
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """Everything logged during the test, in either output format."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_config = structlog.get_config()
    stream = io.StringIO()
    configure_logging("DEBUG", request.param, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_config)


def test_mask_phone_keeps_last_four_digits() -> None:
    assert mask_phone(f"from {PHONE} ok") == "from +*******4567 ok"
    assert mask_phone("call 555 123 4567 8").endswith("5678")
    assert mask_phone("order 123456 of 2024") == "order 123456 of 2024"


def test_structlog_event_masks_phones_and_drops_secrets(captured: io.StringIO) -> None:
    get_logger("wapipe.test").info(
        f"message from {PHONE}",
        phone=PHONE,
        to=f"whatsapp:{PHONE}",
        auth_token=TWILIO_TOKEN,
        code=CODE,
        headers={"Authorization": f"Bearer {OPENAI_KEY}"},
        note=f"key {OPENAI_KEY} and token {TWILIO_TOKEN}",
    )
    out = captured.getvalue()
    assert "4567" in out
    for secret in ("5551234567", TWILIO_TOKEN, OPENAI_KEY, CODE):
        assert secret not in out


def test_stdlib_logger_is_scrubbed_too(captured: io.StringIO) -> None:
    logging.getLogger("celery.worker").warning(
        "sending to %s with token %s and key %s", PHONE, TWILIO_TOKEN, OPENAI_KEY
    )
    try:
        raise ValueError(f"bad number {PHONE}")
    except ValueError:
        logging.getLogger("gunicorn.error").exception("failed for whatsapp:%s", PHONE)
    out = captured.getvalue()
    assert "sending to +*******4567" in out
    for secret in ("5551234567", TWILIO_TOKEN, OPENAI_KEY):
        assert secret not in out
