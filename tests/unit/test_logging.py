"""No full phone number, token or verification code reaches a log line, from structlog or stdlib loggers."""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import logging
import unicodedata
from collections.abc import Iterator

import pytest
import structlog
from celery.app.trace import trace_task_ret
from celery.concurrency.base import BasePool
from celery.worker.consumer import consumer as celery_consumer
from kombu import Message

from shared.logging import REDACTED, configure_logging, get_logger, mask_phone, redact_verify_codes, scrub
from shared.queues import Publisher
from shared.verification import parse_verify
from shared.wire.events import InboundMessage, Provider

PHONE = "+15551234567"
TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"
OPENAI_KEY = "sk-test1234567890abcdefghij"
CODE = "482913"


@contextlib.contextmanager
def logging_to_text(level: str, fmt: str) -> Iterator[io.StringIO]:
    """Everything logged inside, as ``configure_logging(level, fmt)`` writes it; the old setup after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_config = structlog.get_config()
    stream = io.StringIO()
    configure_logging(level, fmt, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_config)


@pytest.fixture(params=["json", "console"])
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """Everything logged during the test, in either output format."""
    with logging_to_text("DEBUG", request.param) as stream:
        yield stream


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


def test_mask_phone_sees_url_encoded_numbers() -> None:
    # A Twilio form body or callback URL quoted in an exception or an HTTP client's debug line.
    body = "To=whatsapp%3A%2B15551234567&From=whatsapp%3a%2b14155550123&Body=hi"
    assert mask_phone(body) == "To=whatsapp%3A%2B*******4567&From=whatsapp%3a%2b*******0123&Body=hi"
    assert mask_phone("GET /status?to=%2B15551234567") == "GET /status?to=%2B*******4567"
    assert mask_phone("cb=https%3A%2F%2Fx%2Fs%3Fto%3D%252B15551234567") == (
        "cb=https%3A%2F%2Fx%2Fs%3Fto%3D%252B*******4567"
    )
    assert "5551234567" not in mask_phone("whatsapp%3A15551234567")
    # Word-glued digits are still no phone: a SID or hash is not masked into nonsense.
    assert mask_phone("SM15551234567") == "SM15551234567"


def test_numbers_that_are_phones_are_masked_whatever_their_type() -> None:
    assert scrub({"phone": 15551234567}) == {"phone": "*******4567"}
    assert scrub({"wa_id": 15551234567.0, "recipients": [15551234567, 14155550123]}) == {
        "wa_id": "*******4567",
        "recipients": ["*******4567", "*******0123"],
    }
    # Under a phone key a short (local or partial) number is masked too, in text or as an int.
    assert scrub({"to": "5551234", "from_": 5551234}) == {"to": "***1234", "from_": "***1234"}
    # Under any other key an 8+ digit int is masked as an 8+ digit run in text would be.
    assert scrub({"value": 15551234567, "items": [15551234567]}) == {
        "value": "*******4567",
        "items": ["*******4567"],
    }


def test_ids_counts_and_times_keep_their_numbers() -> None:
    fields = {
        "message_id": 123_456_789,
        "message_ids": [123_456_789],
        "to_user_id": 987_654_321,
        "size": 12_345_678,
        "attempts": 3,
        "elapsed": 1_718_000_000.25,
        "handoff": True,
        "error_code": 63016,
    }
    assert scrub(fields) == fields


@pytest.mark.parametrize(
    "key",
    [
        "verification_code",
        "verify_code",
        "sms_code",
        "otp",
        "otp_code",
        "pin",
        "passcode",
        "verifyCode",
        "SMSCode",
    ],
)
def test_verification_codes_lose_their_value_whatever_the_key_spelling(key: str) -> None:
    assert scrub({key: CODE}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key", ["error_code", "status_code", "http_status_code", "country_code", "errorCode", "error_subcode"]
)
def test_harmless_codes_stay_readable(key: str) -> None:
    assert scrub({key: "63016"}) == {key: "63016"}


def test_phones_in_raw_bodies_are_masked() -> None:
    assert scrub({"body": b"To=whatsapp%3A%2B15551234567&Body=hi"}) == {
        "body": b"To=whatsapp%3A%2B*******4567&Body=hi"
    }


def test_payload_keyed_by_phone_number_is_masked() -> None:
    assert scrub({"by_number": {PHONE: "sent", 15551234567: "read"}}) == {
        "by_number": {"+*******4567": "sent", "*******4567": "read"}
    }


def test_payload_keyed_by_phone_bytes_or_tuples_is_masked_in_rendered_lines(captured: io.StringIO) -> None:
    # A Redis hash read back is keyed by bytes; the JSON renderer refused such keys (the line was lost and
    # the logging error printed the number whole), the console renderer printed them.
    get_logger("wapipe.test").info(
        "session read", data={PHONE.encode(): b"1", (PHONE, 1): 2, float(PHONE): 3}
    )

    line = captured.getvalue()
    assert "session read" in line
    assert "5551234567" not in line
    assert line.count("*******4567") == 3


def test_objects_logged_as_fields_are_masked_in_their_text() -> None:
    # Renderers print unknown objects with repr(); an exception passed as a field carries the number.
    assert scrub({"error": ValueError(f"bad number {PHONE}")}) == {
        "error": "ValueError('bad number +*******4567')"
    }


def test_every_leak_is_masked_in_rendered_lines(captured: io.StringIO) -> None:
    get_logger("wapipe.test").warning(
        "send failed",
        phone=15551234567,
        verification_code=CODE,
        error_code=63016,
        request=b"To=whatsapp%3A%2B15551234567",
        error=ValueError(f"bad number {PHONE}"),
        statuses={PHONE: "read"},
    )
    try:
        raise RuntimeError("POST /Messages.json To=whatsapp%3A%2B15551234567 failed")
    except RuntimeError:
        logging.getLogger("twilio.http_client").exception("payload To=%s", "whatsapp%3A%2B15551234567")
    out = captured.getvalue()
    assert "63016" in out
    assert "*******4567" in out
    for secret in ("5551234567", CODE):
        assert secret not in out


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("call (555) 123-4567 now", "call ******4567 now"),
        ("call 555-123-4567 now", "call ******4567 now"),
        ("call 555.123.4567 now", "call ******4567 now"),
        ("call +1 (555) 123-4567 now", "call +*******4567 now"),
        ("call +1(555)123-4567 now", "call +*******4567 now"),
        ("call +1-555-123-4567 now", "call +*******4567 now"),
        ("call +1.555.123.4567 now", "call +*******4567 now"),
        ("call +44 20 7946 0958 now", "call +********0958 now"),
        ("call +44 (0)20 7946 0958 now", "call +*********0958 now"),
        ("call 06.12.34.56.78 now", "call ******5678 now"),
        ("call 030.12345678 now", "call *******5678 now"),
        # Brackets around the whole number are no area code: they stay, balanced, outside the mask.
        ("bad number (555-123-4567)", "bad number (******4567)"),
        ("bad number (+1 555 123 4567)", "bad number (+*******4567)"),
        # A phone beside a date, time, decimal or address is masked on its own, the other kept.
        ("2026-12-07 555 123 4567", "2026-12-07 ******4567"),
        ("at 03:10 (555) 123-4567", "at 03:10 ******4567"),
        ("took 12.5 s for 555.123.4567", "took 12.5 s for ******4567"),
        ("from 10.0.0.1 to 555-123-4567", "from 10.0.0.1 to ******4567"),
        # Shapes that only start like an exception are phones: a whole float, a date running on.
        ("wa_id 15551234567.0", "wa_id ********5670"),
        ("ref 2026-12-07-5551234567", "ref **************4567"),
    ],
)
def test_phones_in_written_formats_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-07",
        "2026-12-07T03:10:00",
        "2026-12-07T03:10:00.123456+00:00",
        "2026-12-07 03:10:00,123 INFO started",
        "release 2024.10.15",
        "took 12.345 s, p50 0.025 s",
        "at 1718000000.25 ratio 0.30000000000000004",
        "task 123e4567-e89b-12d3-a456-426614174000 done",
        "redis 127.0.0.1:6379 and 192.168.100.200:6379",
        '10.0.0.1 - - "POST /webhook HTTP/1.1" 200 12345 "-" "Chrome/120.0.6099.109"',
        "status 503 after 3 attempts",
        "sid SM0123456789abcdef0123456789abcdef",
        "id wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3NEIA",
        "redis 5.7.0, kombu 5.3.4",
        "sent 1234567 of 1234568 messages",
        "retry (3) in 120 s",
    ],
)
def test_numbers_that_are_no_phones_stay_readable(text: str) -> None:
    assert mask_phone(text) == text


def test_under_a_phone_key_no_exception_is_kept() -> None:
    # Whatever sits under a phone key is taken for a number, even when shaped like a date or decimal.
    assert scrub({"to": "2026-12-07", "phone": "(555) 1234", "recipient": "555.1234.5"}) == {
        "to": "****1207",
        "phone": "***1234",
        "recipient": "****2345",
    }


def test_written_phones_are_masked_in_rendered_lines(captured: io.StringIO) -> None:
    logging.getLogger("gunicorn.access").info(
        '10.0.0.1 - - "POST /webhook HTTP/1.1" 200 12345 "-" "Chrome/120.0.6099.109"'
    )
    get_logger("wapipe.test").warning("send failed for +1 (555) 123-4567", note="call (555) 123-4567")
    out = captured.getvalue()
    assert "HTTP/1.1" in out
    for kept in (" 200 12345 ", "Chrome/120.0.6099.109", "+*******4567", "call ******4567"):
        assert kept in out
    assert "123-4567" not in out


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # Brackets and spaces percent-encoded, as a logged URL or form body carries them.
        ("GET /lookup?q=%28555%29%20123-4567", "GET /lookup?q=******4567"),
        ("To=tel%3A%2B1%28555%29123-4567", "To=tel%3A%2B*******4567"),
        ("To=tel%3A%2B1%20%28555%29%20123-4567", "To=tel%3A%2B*******4567"),
        ("to=%2B44%20%280%2920%207946%200958", "to=%2B*********0958"),
        ("to=%2B1%20555%20123%204567", "to=%2B*******4567"),
        ("q=%2B1%20(415)%20555-0123", "q=%2B*******0123"),
        # A form body encodes a space as +.
        ("Body=call+me+at+555+123+4567", "Body=call+me+at+******4567"),
        # Encoded twice when a URL travels inside another URL's query.
        ("cb=x%3Fq%3D%2528555%2529%2520123-4567", "cb=x%3Fq%3D******4567"),
        ("q=%2528555%2529%2520123-4567", "q=******4567"),
        # The hex digits of an escape are no digits of the number after it.
        ("q=%2014155550123", "q=%20*******0123"),
    ],
)
def test_phones_written_url_encoded_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "next=%2Fapi%3Fsince%3D2026-12-07",
        "q=sent%202026-12-07%2007%3A21%3A03",
        "forwarded%3D192.168.100.200%3A6379",
        "q=page%2012%20of%2034",
    ],
)
def test_numbers_in_url_encoded_text_that_are_no_phones_stay_readable(text: str) -> None:
    assert mask_phone(text) == text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # German style: a slash after the area code, or between the subscriber digits.
        ("call 030/1234567 now", "call ******4567 now"),
        ("call +49 30/1234567 now", "call +*******4567 now"),
        ("call (030) 123/4567 now", "call ******4567 now"),
        ("Mobil 0171/1234567", "Mobil *******4567"),
        ("call 0049 30/123 4567 now", "call *********4567 now"),
        ("to=030%2F1234567", "to=******4567"),
    ],
)
def test_phones_split_by_a_slash_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        # Without a trunk 0, a + or a bracketed area code a slash is a ratio or a path, not a phone.
        "batch 1200/5000 done",
        "sent 0/1234567",
        "GET /api/v1/messages/12345/67890",
        "on 2026/12/07 at 07:21",
        # Dates written day or month first.
        "on 07/12/2026 at 07:21",
        "on 12/31/2026",
        "am 07.12.2026 um 07:21",
        "am 31.12.2026",
    ],
)
def test_ratios_paths_and_dates_with_slashes_stay_readable(text: str) -> None:
    assert mask_phone(text) == text


def test_under_a_phone_key_a_slash_always_splits_a_number() -> None:
    assert scrub({"phone": "555/1234"}) == {"phone": "***1234"}


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("call 415.555.0123 now", "call ******0123 now"),
        ("call +33.6.12.34.56.78 now", "call +*******5678 now"),
        # Four dotted groups of up to three digits are an address only when each is 0-255 without a
        # leading 0: Swiss and Belgian numbers are written so too.
        ("call 044.668.18.00 now", "call ******1800 now"),
        ("call 02.123.45.67 now", "call *****4567 now"),
        ("call 999.999.999.999 now", "call ********9999 now"),
        # A version has at most four groups; more, with a one-digit group, is a dotted phone.
        ("call 33.6.12.34.56.78 now", "call *******5678 now"),
        ("call 0033.6.12.34.56.78 now", "call *********5678 now"),
    ],
)
def test_dotted_phones_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        # An address that could also be an 8-digit number in pairs (as Danes write theirs) stays readable:
        # ops need the addresses, and nothing in the text tells the two apart.
        "from 12.34.56.78",
        "from 255.255.255.255 and 0.0.0.0",
        "from 8.8.8.8 via 192.168.100.200:6379",
        "Chrome/120.0.6099.109 and 1.2.3.4567",
    ],
)
def test_ip_addresses_and_versions_stay_readable(text: str) -> None:
    assert mask_phone(text) == text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # A phone's contacts app copies numbers with no-break spaces and hyphens (and bidi marks around).
        ("call +1\u00a0(415)\u00a0555\u20110123 now", "call +*******0123 now"),
        ("call \u202d+1 (415) 555\u20110123\u202c now", "call \u202d+*******0123\u202c now"),
        ("call +33\u202f6\u202f12\u202f34\u202f56\u202f78 now", "call +*******5678 now"),
        ("call +1 415 555\u20130123 now", "call +*******0123 now"),
        ("call +1\u2010415\u2010555\u20100123 now", "call +*******0123 now"),
    ],
)
def test_phones_written_with_typographic_spaces_and_dashes_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


# Every space of Unicode's space separators (Zs) but the ASCII one: typesetting groups digits with a thin
# (U+2009) or figure space (U+2007), CJK input methods type an ideographic one (U+3000).
_UNICODE_SPACES = [
    chr(code_point) for code_point in range(0x80, 0x3001) if unicodedata.category(chr(code_point)) == "Zs"
]


@pytest.mark.parametrize("space", _UNICODE_SPACES, ids=lambda space: f"U+{ord(space):04X}")
def test_phones_grouped_with_any_unicode_space_are_masked(space: str) -> None:
    number = f"+1{space}555{space}123{space}4567"
    assert mask_phone(f"call {number} now") == "call +*******4567 now"
    assert mask_phone(f"call (555){space}123-4567") == "call ******4567"
    # Escaped by a repr or a JSON body, and doubled by the repr of that body's bytes.
    for text in (repr(number), json.dumps(number), repr(json.dumps(number).encode())):
        assert "+*******4567" in mask_phone(text)


def test_a_phone_grouped_with_thin_spaces_in_a_task_body_celery_logs_is_masked(captured: io.StringIO) -> None:
    _celery_logs_a_route_message("call +1\u2009415\u2009555\u20090101 or +1\u2007415\u2007555\u20070102")
    out = captured.getvalue()
    # In both lines, pool and consumer (the pool's may cut the raw Body off at its 1,024 characters).
    assert out.count("+*******0101") >= 2
    assert out.count("+*******0102") >= 2
    for leak in ("u2009415", "u2009555", "u2007415", "u2007555"):
        assert leak not in out


def test_phones_after_an_escaped_line_break_are_masked() -> None:
    # An object's repr and a raw JSON body write a line break as backslash-n, glued to the next word.
    assert scrub({"error": ValueError("To:\n4155550123")}) == {"error": "ValueError('To:\\n******0123')"}
    assert scrub({"body": b'{"text": {"body": "call me\\n4155550123\\t(415) 555-0124"}}'}) == {
        "body": b'{"text": {"body": "call me\\n******0123\\t******0124"}}'
    }
    assert mask_phone("'a\\r\\n2026-12-07 07:21:03'") == "'a\\r\\n2026-12-07 07:21:03'"


def test_a_phone_with_its_extension_glued_on_is_masked_and_the_extension_kept() -> None:
    assert mask_phone("call +1 415 555 0123x12 now") == "call +*******0123x12 now"
    assert mask_phone("call (415) 555-0123X1234") == "call ******0123X1234"
    # A word glued to the digits is still no phone.
    assert mask_phone("id 14155550123xyz and 14155550123abc") == "id 14155550123xyz and 14155550123abc"


def test_phones_in_urls_payloads_and_reprs_are_masked_in_rendered_lines(captured: io.StringIO) -> None:
    url = (
        "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
        "?To=whatsapp%3A%2B14155550123&StatusCallback=https%3A%2F%2Fx%2Fs%3Fq%3D%2528415%2529%2520555-0124"
    )
    logging.getLogger("twilio.http_client").info("POST %s at 2026-12-07 07:21:03 took 12.345 s", url)
    get_logger("wapipe.test").warning(
        "lookup failed",
        payload='{"to": "+14155550125", "wa_id": "14155550126", "note": "Festnetz 030/1234567"}',
        error=ValueError("To:\n+1\u00a0(415)\u00a0555\u20110127"),
        query="q=%28415%29%20555-0128",
        message_id="SM0123456789abcdef0123456789abcdef",
        task_id="123e4567-e89b-12d3-a456-426614174000",
        peer="192.168.100.200:6379",
    )
    out = captured.getvalue()
    for kept in ("2026-12-07 07:21:03", "12.345", "SM0123456789abcdef0123456789abcdef", "192.168.100.200"):
        assert kept in out
    assert "123e4567-e89b-12d3-a456-426614174000" in out
    for last_four in ("0123", "0124", "0125", "0126", "4567", "0127", "0128"):
        assert f"*{last_four}" in out
    for leak in ("14155550123", "%2528415", "14155550125", "14155550126", "030/", "(415)", "%28415"):
        assert leak not in out


def test_phones_with_escaped_no_break_spaces_are_masked() -> None:
    # repr() escapes a no-break space (``\xa0``); a provider's JSON body may escape every non-ASCII one.
    assert scrub({"error": ValueError("+1\u00a0(415)\u00a0555-0123")}) == {
        "error": "ValueError('+*******0123')"
    }
    assert mask_phone('"+33\\u202f6\\u202f12\\u202f34\\u202f56\\u202f78"') == '"+*******5678"'
    assert mask_phone('"+1\\u00A0415\\u00A0555\\u20110123"') == '"+*******0123"'
    # Glued to the escape before it, as a run is to an escaped line break.
    assert scrub({"error": ValueError("Tel:\u00a014155550123")}) == {
        "error": "ValueError('Tel:\\xa0*******0123')"
    }


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        (
            "GET https://ops:Pa55-w0rd@api.example.com/v1 failed",
            "GET https://[redacted]@api.example.com/v1 failed",
        ),
        ("redis://:hunter2pw@10.0.0.5:6379/0 refused", "redis://[redacted]@10.0.0.5:6379/0 refused"),
        # A raw @ in a password: urllib and redis-py take the userinfo up to the last @ before the host.
        ("redis://:p@ss@10.0.0.5:6379/0 refused", "redis://[redacted]@10.0.0.5:6379/0 refused"),
        ("GET https://ops:p@s@w0rd@api.example.com", "GET https://[redacted]@api.example.com"),
        ('url="https://u:a@b@h.example.com"', 'url="https://[redacted]@h.example.com"'),
        # A token sent as the user name alone is as secret as a password.
        ("cloning https://ghp_tok3n@github.com/x.git", "cloning https://[redacted]@github.com/x.git"),
        (
            "callback https://cb.example.com/s?token=tok3nVal9&page=2 timed out",
            "callback https://cb.example.com/s?token=[redacted]&page=2 timed out",
        ),
        ("GET /maps?q=x&api_key=k3yVal7 refused", "GET /maps?q=x&api_key=[redacted] refused"),
        ("GET /x?access_token=EAAGabc&key=AIzaXyz", "GET /x?access_token=[redacted]&key=[redacted]"),
        ("blob?sv=2024&sig=AbC%2Bd&se=1", "blob?sv=2024&sig=[redacted]&se=1"),
        ("s3?X-Amz-Signature=9f3a1c&X-Amz-Expires=60", "s3?X-Amz-Signature=[redacted]&X-Amz-Expires=60"),
        # A secret in the value of a harmless parameter is still found: a callback URL inside another's query.
        (
            "?next=https://u:pw@h.example.com/cb?token=abc&n=1",
            "?next=https://[redacted]@h.example.com/cb?token=[redacted]&n=1",
        ),
    ],
)
def test_credentials_in_urls_are_redacted(text: str, scrubbed: str) -> None:
    assert scrub(text) == scrubbed
    assert scrub(scrubbed) == scrubbed  # a letter scrubbed when written reads the same when listed


@pytest.mark.parametrize(
    "text",
    [
        "https://graph.facebook.com/v21.0/1234567/messages?limit=10&after=QVFIUj",
        "/api/v1/conversations?status=open&cursor=12",
        "mail ops@example.com about https://example.com/status",
        # An @ after the authority ended (path, query, fragment, next word) is no credentials' end.
        "https://example.com/users/@alice and https://example.com?q=a@b#c@d",
        "see https://example.com mail ops@example.com",
        "text/html; charset=utf-8",
        "SQL: a = 1 AND b = 2; count=3",
        "?error_code=131047&status=failed",
    ],
)
def test_urls_without_credentials_stay_readable(text: str) -> None:
    assert scrub(text) == text


def test_a_query_of_nested_urls_is_scrubbed_however_deep() -> None:
    # A query string comes from anyone: each nested URL must not cost the scrubber a level of recursion.
    text = "GET /x" + "?next=" * 5000 + "?token=abc"
    assert scrub(text) == "GET /x" + "?next=" * 5000 + "?token=[redacted]"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # People type a dash with a space on either side, or on one side only.
        ("call 415 - 555 - 0123 now", "call ******0123 now"),
        ("call +1 415 - 555 - 0123 now", "call +*******0123 now"),
        ("call (415) 555 - 0123 now", "call ******0123 now"),
        ("call 415- 555 -0123 now", "call ******0123 now"),
        ("call 415 \u2013 555 \u2013 0123 now", "call ******0123 now"),
        ("q=415%20-%20555%20-%200123", "q=******0123"),
    ],
)
def test_phones_with_spaces_around_a_dash_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        # Only a dash may have spaces around it: a dot so spaced ends a sentence, and numbers either side
        # of it stay apart.
        "sent 1234. 5678 more",
        "sent 1234 . 5678 more",
        # A date or time beside a spaced dash keeps its digits.
        "from 2026-12-01 - 2026-12-07",
        "at 03:10:00 - 03:10:05",
        "2026-12-07 03:10:00,123 - celery.worker - INFO - 12 tasks",
        "10.0.0.1 - - [07/Dec/2026:03:10:00 +0000]",
    ],
)
def test_numbers_beside_a_spaced_dash_or_dot_that_are_no_phones_stay_readable(text: str) -> None:
    assert mask_phone(text) == text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # A stray double space between groups, as typed or as text justified by a template.
        ("call +1 415  555  0123 now", "call +*******0123 now"),
        ("call 415  555 0123 now", "call ******0123 now"),
        ("call (415)  555  0123 now", "call ******0123 now"),
        ("call 415  -  555  -  0123 now", "call ******0123 now"),
        ("call +1\u00a0 415 \u00a0555 0123 now", "call +*******0123 now"),
        ("q=%2B1%20%20415%20%20555%200123", "q=%2B*******0123"),
    ],
)
def test_phones_with_double_spaces_between_groups_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # A number glued to an underscore: lock, cache and file names built from it.
        ("lock user_14155550123 taken", "lock user_*******0123 taken"),
        ("retry 14155550123_retry", "retry *******0123_retry"),
        ("key conv:_+14155550123_", "key conv:_+*******0123_"),
        ("file export_415-555-0123_2026-12-07.csv", "file export_******0123_2026-12-07.csv"),
    ],
)
def test_phones_glued_to_an_underscore_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


def test_field_names_with_a_phone_glued_to_an_underscore_are_masked() -> None:
    assert scrub({"user_14155550123": "sent", "message_id": 1}) == {
        "user_*******0123": "sent",
        "message_id": 1,
    }


@pytest.mark.parametrize(
    "text",
    [
        # Digits glued to an underscore that are no phone keep their numbers.
        "run_2026-12-07T03:10:00 done",
        "backup_2026-12-07.sql",
        "task_123e4567-e89b-12d3-a456-426614174000",
        "peer_10.0.0.1:6379",
        "wapipe_1.2.3",
        "retry_3_of_5 after 120_s",
        "user_1234567",
        # A letter glued to the digits still makes a word of them.
        "id user_14155550123abc",
    ],
)
def test_short_or_kept_numbers_glued_to_an_underscore_stay_readable(text: str) -> None:
    assert mask_phone(text) == text


@pytest.mark.parametrize(
    "text",
    [
        # Sums and byte counts joined by + are no form-encoded phone.
        "1024+2048+4096",
        "buffers 1024+2048+4096 bytes",
        "total (1024+2048+4096)",
        "sizes: 1024+2048, 4096+8192",
    ],
)
def test_numbers_joined_by_plus_signs_stay_readable(text: str) -> None:
    assert mask_phone(text) == text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # In a form body a + is a space: after the = of a field, a word or an escape before it.
        ("Body=555+123+4567&To=x", "Body=******4567&To=x"),
        ("Body=my+number%3A+555+123+4567", "Body=my+number%3A+******4567"),
        ("Body=Hi!+555+123+4567", "Body=Hi!+******4567"),
        ("Body=%22555+123+4567%22", "Body=%22******4567%22"),
        ("Body=Tel%3A%2B1+415+555+0123", "Body=Tel%3A%2B*******0123"),
        ("Body=%28415%29+555-0123", "Body=******0123"),
    ],
)
def test_phones_in_form_bodies_with_plus_for_space_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


def test_under_a_phone_key_a_plus_always_splits_a_number() -> None:
    assert scrub({"phone": "555+1234"}) == {"phone": "***1234"}


# Every separator form side by side, in runs too short for a phone: each run is tried from each of its starts.
_SHORT_RUNS = "1 - 2  3+4_(5) 6%20-%207\u2013 8.9/0 x "


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        ((_SHORT_RUNS * 600)[:20_000], (_SHORT_RUNS * 600)[:20_000]),
        # One run of 5,000 digits whose last is glued to a letter: the match gives back one digit only.
        ("1 - " * 5_000 + "1a", "*" * 4_996 + "1111 - 1a"),
        ("1  " * 6_667 + "1a", "*" * 6_663 + "1111  1a"),
        ("1024+" * 4_000, "1024+" * 4_000),
        ("=" + "1+" * 10_000 + "a", "=" + "*" * 9_996 + "1111+a"),
        ("(1) (2)  (3) - " * 1_333 + "a", "(1) (2)  (3) - " * 1_333 + "a"),
        ("_1" * 10_000 + "a", "_1" * 10_000 + "a"),
    ],
)
def test_a_long_line_of_digits_and_separators_is_masked_in_one_pass(line: str, masked: str) -> None:
    # A pattern that could split the same text two ways would try exponentially many splits here and never
    # return; no time is asserted, finishing at all (within the suite's timeout) is the check.
    assert mask_phone(line) == masked


def test_a_long_line_under_a_phone_key_is_masked_in_one_pass() -> None:
    line = (_SHORT_RUNS * 600)[:20_000]
    # Under a phone key 5 digits are a number: the bracketed group and what follows it (6 digits) are.
    expected = line.replace("(5) 6%20-%207\u2013 8.9/0", "**7890")
    assert scrub({"to": line}) == {"to": expected}


@pytest.mark.parametrize(
    "text",
    [
        # Padded and dash-joined log formats, now that two spaces or a spaced dash may sit inside a phone.
        "2026-12-07 03:10:00,123  INFO      celery.worker  task 123e4567-e89b-12d3-a456-426614174000 ok",
        "[2026-12-07 03:10:00,123: INFO/ForkPoolWorker-2] Task notify.send"
        "[123e4567-e89b-12d3-a456-426614174000] succeeded in 0.0251s: None",
        '10.0.0.1 - - [07/Dec/2026:03:10:00 +0000] "POST /webhooks/twilio HTTP/1.1" 200 2 "-" '
        '"TwilioProxy/1.1"',
        "wapipe 1.2.3 - 2026-12-07 - redis 7.2.4  db 0  pool 10 - 20",
        "peer 10.0.0.1  -  192.168.100.200:6379",
    ],
)
def test_padded_and_dash_joined_log_lines_stay_readable(text: str) -> None:
    assert mask_phone(text) == text


@pytest.mark.parametrize(
    "text",
    [
        # A spaced dash or a double space joins numbers into a phone unless the run reads as a range or a
        # column: two groups of equal length, or from a small first one, without a trunk 0 first.
        "ports 8000 - 8080",
        "ids 400389 - 400688",
        "took 1500 - 2500 ms",
        "msgs 1234  5678",
        "ids 400389  400688 and 12345 - 67890",
        "rows 1 - 5000000 of 5000001",
        "q=8000%20-%208080",
    ],
)
def test_numbers_joined_by_a_spaced_dash_or_double_space_that_are_no_phones_stay_readable(text: str) -> None:
    assert mask_phone(text) == text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("call 020 - 7946 - 0958 now", "call *******0958 now"),
        ("call 415 - 555 - 0123 now", "call ******0123 now"),
        ("call +1 415  555  0123 now", "call +*******0123 now"),
        ("call +44 7946 - 095812 now", "call +********5812 now"),
        # A phone-like run after a number that is none is masked with it: more is masked, nothing leaks.
        ("ids 400389 - 415 - 555 - 0123", "ids ************0123"),
        # Two groups of unequal length read as a number typed in two parts (a US number, a mobile).
        ("from 415 - 5550123", "from ******0123"),
        ("call 98765 - 4321", "call *****4321"),
        ("call 11  98765  4321", "call *******4321"),
        ("via 9876  54321", "via *****4321"),
        ("call 077 - 123456", "call *****3456"),
        # The single-space and plain-dash forms join as before, whatever the groups.
        ("call 1234 5678 - 9012 now", "call ********9012 now"),
        ("call 415 555 0123 45678 now", "call ***********5678 now"),
        ("ids 12345678  1", "ids *****6781"),
        ("ids 12345678  12345678", "ids ************5678"),
    ],
)
def test_phones_joined_by_a_spaced_dash_or_double_space_are_masked(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # A Bearer token inside a URL's credentials: once redacted, nothing splits the credentials.
        ("GET https://xBearer abc@api.example.com/v1", "GET https://[redacted]@api.example.com/v1"),
        # Digits glued to a redacted token are no longer an id's: they are a phone.
        ("auth 4155550123Bearer abc", "auth ******0123[redacted]"),
        # A masked number's last digits may join what follows into another.
        ("ids 4155550123 - 1234 - 5678", "ids **************5678"),
        ("at=4155550123/0123555", "at=*************3555"),
    ],
)
def test_scrub_reaches_its_fixed_point_in_one_pass(text: str, scrubbed: str) -> None:
    # Dead letters are scrubbed when written and again when listed; both must read the same.
    assert scrub(text) == scrubbed
    assert scrub(scrubbed) == scrubbed


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # A URL inside another's query is percent-encoded: its credentials and secret parameters are found
        # in the decoded text and redacted in the text as written.
        (
            "GET /login?x=1&redirect=http%3A%2F%2Fu%3Apw%40h.example.com%2Fcb refused",
            "GET /login?x=1&redirect=http%3A%2F%2F[redacted]%40h.example.com%2Fcb refused",
        ),
        ("GET /x?next=%3Ftoken%3Dabc", "GET /x?next=%3Ftoken%3D[redacted]"),
        (
            "cb=https%3A%2F%2Fx%2Fs%3Faccess_token%3DEAAG%2Bx%26n%3D1&page=2",
            "cb=https%3A%2F%2Fx%2Fs%3Faccess_token%3D[redacted]%26n%3D1&page=2",
        ),
        ("Body=Authorization%3A%20Bearer%20abc.def", "Body=Authorization%3A%20[redacted]"),
        # Found in either form, written and decoded, the redactions join.
        ("?next=%3Fkey%3Dabc&token=xyz", "?next=%3Fkey%3D[redacted]&token=[redacted]"),
    ],
)
def test_secrets_in_percent_encoded_urls_are_redacted(text: str, scrubbed: str) -> None:
    assert scrub(text) == scrubbed
    assert scrub(scrubbed) == scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "next=%2Fapi%3Fsince%3D2026-12-07%26page%3D2",
        "cb=https%3A%2F%2Fx.example.com%2Fs%3Fq%3D1",
        "q=100%25%20done%2C%20ops%40example.com",
        "bad escape %zz and 50%",
    ],
)
def test_percent_encoded_text_without_secrets_stays_readable(text: str) -> None:
    assert scrub(text) == text


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # Celery logs the body of a task it does not know (mid-deploy), and an error may quote a message's
        # text: a VERIFY's code must not be readable in either, however it was typed or encoded.
        ("{'text': 'VERIFY 123456', 'from': 'x'}", "{'text': 'VERIFY [redacted]', 'from': 'x'}"),
        ("Received verify:123-456 from a user", "Received verify:[redacted] from a user"),
        ("Body=VERIFY+123+456&To=x", "Body=VERIFY+[redacted]&To=x"),
        ("Body=verify%20123456", "Body=verify%20[redacted]"),
        # The verify stage takes any run of spaces and hyphens around the digits, and a code on its own
        # line; a repr or JSON dump (Celery's) writes that line break as the two characters \n.
        ("VERIFY 123 - 456 from x", "VERIFY [redacted] from x"),
        ("verify-123  456", "verify-[redacted]"),
        ("{'text': 'VERIFY\\n123456'}", "{'text': 'VERIFY\\n[redacted]'}"),
        ('{"text": "verify:\\t123\\t456"}', '{"text": "verify:\\t[redacted]"}'),
        # Celery logs a task's body as the repr of its JSON bytes, which doubles each escape.
        (r"""b'{"text": "VERIFY\\n123456"}'""", r"""b'{"text": "VERIFY\\n[redacted]"}'"""),
        (r"""b'{"text": "verify:\\t123\\r\\n456"}'""", r"""b'{"text": "verify:\\t[redacted]"}'"""),
    ],
)
def test_a_verification_code_in_free_text_is_redacted(text: str, scrubbed: str) -> None:
    assert scrub(text) == scrubbed


# Each way the verify stage takes a code written naturally (shared/verification.py): punctuation after it,
# WhatsApp's formatting marks around it or around the word, the Spanish word.
_VERIFY_WRITTEN_NATURALLY = [
    "VERIFY 482913.",
    "*VERIFY 482913*",
    "_VERIFY 482913_",
    "~VERIFY 482913~",
    "```VERIFY 482913```",
    "*VERIFY* 482913",
    "_verify_: 482913!",
    "VERIFY *482913*",
    "~VERIFY~ `482 913`",
    "Verificar 482913",
    "*VERIFICAR* 482-913.",
    # An italic mark glued to the word or the code reads like an identifier's "_", but is none.
    "VERIFY_482913",
    "verify_*482913*",
    "_VERIFY_482913_",
]


@pytest.mark.parametrize("form", ["written", "repr", "json", "repr of json bytes"])
@pytest.mark.parametrize("text", _VERIFY_WRITTEN_NATURALLY)
def test_a_code_written_naturally_is_redacted(text: str, form: str) -> None:
    assert parse_verify(text) == "482913"
    scrubbed = scrub(_as_logged(text)[form])
    assert REDACTED in scrubbed
    assert "482" not in scrubbed
    assert "913" not in scrubbed
    assert redact_verify_codes(text).count(REDACTED) == 1


# Every character the verify stage takes between a VERIFY's digits (shared/verification.py): hyphens and
# every kind of whitespace, no-break and typographic spaces included.
_VERIFY_SEPARATORS = [
    chr(code_point)
    for code_point in range(0x3001)
    if parse_verify(f"VERIFY{chr(code_point)}482{chr(code_point)}913") == "482913"
]


def _as_logged(text: str) -> dict[str, str]:
    """``text`` as each kind of log text writes it."""
    return {
        "written": text,
        # repr() escapes line breaks and no-break and typographic spaces (``\xa0``, ``\u2003``).
        "repr": repr(text),
        # A JSON body escapes every non-ASCII character (``\u00a0``).
        "json": json.dumps({"text": text}),
        # Celery logs a task's body as the repr of its JSON bytes, where each of those escapes is doubled.
        "repr of json bytes": repr(json.dumps({"text": text}).encode()),
    }


@pytest.mark.parametrize("form", ["written", "repr", "json", "repr of json bytes"])
@pytest.mark.parametrize("separator", _VERIFY_SEPARATORS, ids=lambda separator: f"U+{ord(separator):04X}")
def test_a_code_typed_with_any_separator_the_verify_stage_takes_is_redacted(
    separator: str, form: str
) -> None:
    text = _as_logged(f"VERIFY{separator}482{separator}913")[form]
    scrubbed = scrub(text)
    assert REDACTED in scrubbed
    assert "482" not in scrubbed
    assert "913" not in scrubbed


def test_the_verify_stage_takes_typographic_spaces_between_the_digits() -> None:
    # The list above is read from the verify stage itself: it must hold what users send.
    assert {" ", "-", "\t", "\n", "\u00a0", "\u2003", "\u2009", "\u3000"} <= set(_VERIFY_SEPARATORS)


# A code typed on an Arabic, Persian, Hindi or CJK keyboard, which the verify stage reads as its ASCII digits.
_CODES_IN_OTHER_SCRIPTS = [
    "\u0664\u0668\u0662\u0669\u0661\u0663",
    "\u06f4\u06f8\u06f2\u06f9\u06f1\u06f3",
    "\u096a\u096e\u0968\u096f\u0967\u0969",
    "\uff14\uff18\uff12\uff19\uff11\uff13",
]


@pytest.mark.parametrize("form", ["json", "repr of json bytes"])
@pytest.mark.parametrize("code", _CODES_IN_OTHER_SCRIPTS)
def test_a_code_in_another_script_escaped_by_a_json_body_is_redacted(code: str, form: str) -> None:
    assert parse_verify(f"VERIFY {code}") == CODE
    text = _as_logged(f"VERIFY {code}")[form]
    scrubbed = scrub(text)
    assert REDACTED in scrubbed
    # JSON writes each digit past ASCII as its code point (``\u0664``): the escape tells the digit.
    for digit in code:
        assert f"{ord(digit):04x}" not in scrubbed


# A code the verify stage takes, typed so that a JSON body (Celery's task-body lines) escapes what touches it:
# a line break, tab or narrow no-break space before the word, whose escape ends in a letter (``\n``,
# ``\u202f``), and digits past the Basic Multilingual Plane (mathematical bold, double-struck), which JSON
# writes as surrogate pairs (``\ud835\udfd2``).
_CODE_AS_BOLD_DIGITS = "".join(chr(0x1D7CE + int(digit)) for digit in CODE)
_CODE_AS_DOUBLE_STRUCK_DIGITS = "".join(chr(0x1D7D8 + int(digit)) for digit in CODE)
_VERIFY_ESCAPED_BY_JSON = [
    f"\nVERIFY {CODE}",
    f"\tverify: {CODE}",
    f"\u202fVERIFY {CODE}",
    f"\u3000*Verificar* {CODE}",
    f"VERIFY {_CODE_AS_BOLD_DIGITS}",
    f"\nverify {_CODE_AS_DOUBLE_STRUCK_DIGITS}",
]


@pytest.mark.parametrize("form", ["written", "repr", "json", "repr of json bytes"])
@pytest.mark.parametrize("text", _VERIFY_ESCAPED_BY_JSON, ids=ascii)
def test_a_code_whose_neighbours_json_escapes_is_redacted(text: str, form: str) -> None:
    assert parse_verify(text) == CODE
    scrubbed = scrub(_as_logged(text)[form])
    assert REDACTED in scrubbed
    assert "482" not in scrubbed
    assert "913" not in scrubbed
    # A digit past the BMP is escaped as a surrogate pair, whose low half tells the digit.
    for digit in text[-len(CODE) :]:
        if ord(digit) > 0xFFFF:
            assert _low_surrogate(digit) not in scrubbed


def _low_surrogate(char: str) -> str:
    """The second half of the surrogate pair JSON writes ``char`` (past the BMP) as: ``dfd2``."""
    return f"{0xDC00 + ((ord(char) - 0x10000) & 0x3FF):04x}"


@pytest.mark.parametrize(
    "text", [f"VER\u0130FY {CODE}", f"ver\u0131fy {CODE}", f"VER\u0130F\u0130CAR {CODE}"]
)
def test_the_verify_word_is_read_in_ascii_letters_only(text: str) -> None:
    # Read with re.I, the Turkish capital \u0130 (and the dotless \u0131) was the word's "i", but a JSON body
    # writes it as an escape the log scrubber cannot read as the word: the code was logged whole.
    assert parse_verify(text) is None


@pytest.mark.parametrize(
    "text", [f"\nVERIFY {CODE}", f"\u202fVERIFY {CODE}", f"VERIFY {_CODE_AS_BOLD_DIGITS}"]
)
def test_a_code_json_escapes_around_in_a_task_body_celery_logs_is_redacted(
    captured: io.StringIO, text: str
) -> None:
    _celery_logs_a_route_message(text)
    out = captured.getvalue()
    assert "TaskPool: Apply" in out
    assert "Received unregistered task" in out
    assert out.count(REDACTED) >= 2
    assert CODE not in out
    for digit in _CODE_AS_BOLD_DIGITS:
        assert _low_surrogate(digit) not in out


@pytest.mark.parametrize(
    "text",
    [
        "verify 3 items",
        "verify 12 of them",
        "verified 123456 rows",
        "reverify 123456",
        "verifying 12345",
    ],
)
def test_verify_words_without_a_code_stay_readable(text: str) -> None:
    assert scrub(text) == text


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # A few digits the sentence goes on after: a quantity, an item's number, no VERIFY message.
        ("please verify 150 units", "please verify 150 units"),
        ("verify-001 failed", "verify-001 failed"),
        ("Verificar 2024 pedidos", "Verificar 2024 pedidos"),
        # The word inside an identifier or a file name, the digits glued to letters (a UUID, a hex id).
        ("phone_verify_1234567", "phone_verify_1234567"),
        # 8 digits after an identifier's "_" are a phone to the phone mask, but no code.
        ("verify_20261207.log", "verify_****1207.log"),
        (
            "task verify 123e4567-e89b-12d3-a456-426614174000 failed",
            "task verify 123e4567-e89b-12d3-a456-426614174000 failed",
        ),
        ("verify 1234567abc", "verify 1234567abc"),
        ("verify 1234567_retry", "verify 1234567_retry"),
        ("preverify 123456", "preverify 123456"),
    ],
)
def test_ordinary_text_around_the_verify_word_stays_readable(text: str, scrubbed: str) -> None:
    # Before, each lost its digits to "[redacted]" ("verify_20261207.log" became "verify_****[redacted].log").
    assert scrub(text) == scrubbed
    assert redact_verify_codes(text) == text


@pytest.mark.parametrize(
    "text",
    ["verify_482913.log", "verify_482913_retry", "VERIFY_482913_2", "verify_482913-abc", "verify_4829.5"],
)
def test_the_verify_word_and_digits_in_an_identifier_stay_readable(text: str) -> None:
    # Letters or an identifier's "_" and more after the digits: the verify stage takes no such message.
    assert parse_verify(text) is None
    assert scrub(text) == text
    assert redact_verify_codes(text) == text


# The pieces of a VERIFY glued by WhatsApp's marks where an identifier has its "_": each message built from
# them that the verify stage takes (with any code, mistyped ones too) must lose its digits in every log form.
_MARKS_AROUND = ["", "_", "*", "_*", "~_"]
_WORDS = ["VERIFY", "verify", "Verificar"]
_MARKS_AFTER_THE_WORD = ["_", "__", "_*", "*_", "_*_", "_ ", ":_", "_~", "_`"]
_CODES = ["482913", "482 913", "482-913", "48291", "4829137"]
_ENDS = ["", "_", "__", "*", "*_", "_*", ".", "_.", "-", "!", " ", "_ "]


def test_every_underscored_code_the_verify_stage_takes_is_redacted() -> None:
    texts = [
        "".join(parts)
        for parts in itertools.product(_MARKS_AROUND, _WORDS, _MARKS_AFTER_THE_WORD, _CODES, _ENDS)
    ]
    taken = [text for text in texts if parse_verify(text) is not None]
    # The verify stage takes most of them: a change in how it reads marks cannot leave this test empty.
    assert len(taken) > len(texts) // 2
    for text in taken:
        for form, logged in _as_logged(text).items():
            scrubbed = scrub(logged)
            assert "482" not in scrubbed, (text, form, scrubbed)
            assert "913" not in scrubbed, (text, form, scrubbed)
        assert redact_verify_codes(text).count(REDACTED) == 1, text


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # A mistyped code holds all but one of the code's digits, or all of them and one more: the verify
        # stage answers it (a code has 6 digits), and it is redacted as a code is.
        ("VERIFY 12345", "VERIFY [redacted]"),
        ("verify 1234567 is not a code", "verify [redacted] is not a code"),
        ("verify 123 - 4567 neither", "verify [redacted] neither"),
        ("{'text': '*VERIFY* 123'}", "{'text': '*VERIFY* [redacted]'}"),
        (r"""b'{"text": "VERIFY\\n12345"}'""", r"""b'{"text": "VERIFY\\n[redacted]"}'"""),
    ],
)
def test_a_near_code_is_redacted(text: str, scrubbed: str) -> None:
    assert scrub(text) == scrubbed
    assert redact_verify_codes(text) == scrubbed


def _celery_logs_a_route_message(text: str) -> None:
    """Log the body of an ``inbound.route`` message that carries ``text`` as a Celery worker does.

    The message is the one the ingress publishes (``Publisher.message``); the worker logs its JSON body as
    the repr of its bytes, truncated to 1,024 characters: the pool's debug line for every task, and the
    consumer's error line, at any level, for a task it does not know (a mixed-version deploy).
    """
    event = InboundMessage(
        provider=Provider.twilio,
        provider_message_id="SM0123456789abcdef0123456789abcdef",
        business_number="+14155550100",
        sender_phone=PHONE,
        text=text,
        raw={"Body": text},
    ).model_dump(mode="json")
    # redis-py connects on first command: building a message needs no server.
    envelope = json.loads(Publisher("redis://127.0.0.1:1/0").message("inbound.route", {"event": event}))
    body = base64.b64decode(envelope["body"])
    headers = envelope["headers"]
    # The arguments the worker's request hands its pool (celery/worker/request.py, execute_using_pool).
    args = (headers["task"], headers["id"], headers, body, envelope["content-type"], "utf-8")
    BasePool(limit=1).apply_async(trace_task_ret, args=args)
    message = Message(body=body, headers=headers, delivery_info=envelope["properties"]["delivery_info"])
    celery_consumer.logger.error(
        celery_consumer.UNKNOWN_TASK_ERROR,
        KeyError(headers["task"]),
        celery_consumer.dump_body(message, body),
        message.headers,
        message.delivery_info,
    )


@pytest.mark.parametrize("separator", ["\n", "\t", "\u00a0", "\u2009"])
def test_a_code_in_a_task_body_celery_logs_is_redacted(captured: io.StringIO, separator: str) -> None:
    _celery_logs_a_route_message(f"VERIFY{separator}{CODE}")
    out = captured.getvalue()
    assert "TaskPool: Apply" in out
    assert "Received unregistered task" in out
    assert out.count(REDACTED) >= 2
    assert CODE not in out


@pytest.mark.parametrize("code", _CODES_IN_OTHER_SCRIPTS)
def test_a_code_in_another_script_in_a_task_body_celery_logs_is_redacted(
    captured: io.StringIO, code: str
) -> None:
    _celery_logs_a_route_message(f"VERIFY {code}")
    out = captured.getvalue()
    assert "Received unregistered task" in out
    assert out.count(REDACTED) >= 2
    for digit in code:
        assert f"{ord(digit):04x}" not in out


def test_a_phone_in_a_task_body_celery_logs_is_masked(captured: io.StringIO) -> None:
    # The body's JSON escapes the accent and the no-break spaces (``\u00a0``), and its repr doubles each.
    _celery_logs_a_route_message("ll\u00e1mame al +57\u00a0310\u00a0305\u00a05424")
    out = captured.getvalue()
    assert "Received unregistered task" in out
    # Twice in each of the two lines: the message's text and its raw Body.
    assert out.count("+********5424") == 4
    for leak in ("u00a0310", "u00a0305", "u00a05424"):
        assert leak not in out


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # A JSON body's escapes, doubled by the repr of its bytes (how Celery logs a task's body).
        (r"""b'{"text": "call me\\n4155550123"}'""", r"""b'{"text": "call me\\n******0123"}'"""),
        (r"""b'"+1\\u00a0415\\u00a0555\\u20110123"'""", r"""b'"+*******0123"'"""),
        (r"""b'"Tel:\\u00a014155550123"'""", r"""b'"Tel:\\u00a0*******0123"'"""),
        (r"""b'"+33\\u202f6\\u202f12\\u202f34\\u202f56\\u202f78"'""", r"""b'"+*******5678"'"""),
    ],
)
def test_phones_with_doubled_escapes_are_masked(text: str, masked: str) -> None:
    assert scrub(text) == masked


def test_a_line_below_the_level_is_dropped_and_the_rest_carry_level_logger_and_time() -> None:
    with logging_to_text("INFO", "json") as stream:
        log = get_logger("wapipe.test")
        log.debug("too fine", phone=PHONE)
        log.info("kept", phone=PHONE)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["kept"]
    assert lines[0]["level"] == "info"
    assert lines[0]["logger"] == "wapipe.test"
    assert lines[0]["timestamp"].endswith("Z")
    assert lines[0]["phone"] == mask_phone(PHONE)


def test_redact_verify_codes_changes_the_codes_only() -> None:
    """What a stored copy of a VERIFY keeps: the code redacted as a log line's is, nothing else touched."""
    event = {
        "text": "verify: 123-456",
        "raw": {"Body": "VERIFY １２３４５６", "From": "whatsapp:+15551234567", "NumMedia": 0},
        "notes": ["token=abc VERIFY 654321", "order 123456"],
    }
    assert redact_verify_codes(event) == {
        "text": f"verify: {REDACTED}",
        "raw": {"Body": f"VERIFY {REDACTED}", "From": "whatsapp:+15551234567", "NumMedia": 0},
        "notes": [f"token=abc VERIFY {REDACTED}", "order 123456"],
    }
    assert redact_verify_codes(None) is None
