"""structlog setup: JSON off a terminal, readable on one, and no phone number or secret in any line.

Masking is a processor in the shared chain, so it applies to our own events and, through
``ProcessorFormatter``, to every stdlib logger (Celery, gunicorn, Flask) as well.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

# Anything shaped like a phone number: an optional +, then 8 or more digits possibly split by spaces,
# dots, dashes or (see _SLASH) slashes. Shorter digit runs (ids, counts, years, 6-digit codes) are left alone.
# People (and the error texts that quote them) also bracket the area code: ``(555) 123-4567``,
# ``+1 (555) 123-4567``, ``+44 (0)20 7946 0958``, so a parenthesis may open or close a group; still one
# separator at most between two digits (a dash with its spaces counts as one, see _GAP), so words or
# punctuation between numbers never join them into one.
# A parenthesis is taken only with its pair around a group of 1-5 digits, or around a trunk prefix and an
# area code with one separator between them, as national formats write them (Hungary ``(06 1) 234 5678``,
# Lithuania ``(0-612) 34567``, Turkmenistan ``(8 12) 34-56-78``): in ``(555-123-4567)`` both stay out of
# the match and the masked number keeps its brackets.
# Twilio form bodies and callback URLs in exception texts and HTTP client logs carry numbers URL-encoded:
# ``To=whatsapp%3A%2B15551234567`` (the ``%2B`` is kept as the +), ``q=%28555%29%20123-4567``, or encoded
# twice (``%252B``) when a callback URL travels inside another URL's query. So the +, the brackets and the
# space are each taken as written or encoded, and a run also starts right after a percent-escape.


def _written_or_encoded(written: str, hex_code: str) -> str:
    """A character as written or percent-encoded once or twice: ``(``, ``%28`` or ``%2528``."""
    return rf"(?:{written}|%(?:25)?{hex_code})"


# A letter or digit: a run may neither start nor end glued to one. An underscore is no such character,
# though ``\w`` counts it: names built from a number (``user_14155550123``, ``14155550123_retry``) carry it
# whole, and digits glued to a letter (``SM15551234567``) are an id, but those glued to an underscore are not.
_LETTER_OR_DIGIT = r"[^\W_]"

# A run starts where a word does, and never inside an escape: the 20 of ``%20`` is no digit of the number
# after it. It may also be glued to an escape before it: a percent-escape (``whatsapp%3A15551234567``) or a
# line break, tab or other character escaped with a backslash, as an object's repr or a raw JSON body
# writes it (``ValueError('To:\n4155550123')``, ``'Tel:\xa04155550123'``). That escape is matched as the
# run's lead and written back as it was, rather than looked behind for: a look-behind is tried at every
# letter and digit inside every word. An encoded + or bracket is no lead: it belongs to the number.
_RUN_START = (
    rf"(?:(?<!{_LETTER_OR_DIGIT}|%)|(?=[%\\]))"
    r"(?P<lead>%(?!(?:25)?2[8B])(?:25)?[0-9A-F]{2}|\\(?:[nrt]|x[0-9A-F]{2}|u[0-9A-F]{4}))?"
)
_PLUS = _written_or_encoded(r"\+", "2B")
# A slash splits a number only the German way (``030/1234567``, ``+49 30/1234567``, ``(030) 123/4567``):
# in a run that opens with a trunk 0, a + or a bracketed area code (the slash_cue group, see _phone_shape).
# Elsewhere a slash is a ratio or a path (``1200/5000``, ``/messages/12345/67890``): the numbers stay apart.
_SLASH = rf"(?(slash_cue){_written_or_encoded('/', '2F')}|(?!))"


# A backslash escape, as repr() or JSON writes it, or doubled: Celery logs a task's JSON body as the repr of
# its bytes (``b'{"text": "VERIFY\\n123456"}'``), where each of JSON's escapes (``\n``, ``\u00a0``) has two.
_BACKSLASH = r"\\{1,2}"


def _written(code_points: Iterable[int]) -> str:
    """These characters, as the inside of a character set."""
    return "".join(rf"\u{code_point:04x}" for code_point in code_points)


def _escapes(code_points: Iterable[int]) -> str:
    r"""What follows the backslash of these characters escaped, as repr() (``xa0``) or JSON (``u00a0``)
    writes them."""
    code_points = list(code_points)
    # Grouped by escape letter: text after a backslash that is no such escape (``\"``, ``\n``) fails once,
    # at the letter, not once per escape.
    escapes = "u(?:" + "|".join(f"{code_point:04x}" for code_point in code_points) + ")"
    short = [f"{code_point:02x}" for code_point in code_points if code_point <= 0xFF]
    return escapes + ("|x(?:" + "|".join(short) + ")" if short else "")


def _written_or_escaped(code_points: Iterable[int]) -> str:
    r"""Characters as written or backslash-escaped, as repr() (``\xa0``) or JSON (``\u00a0``) writes them,
    the backslash maybe doubled (_BACKSLASH)."""
    code_points = list(code_points)
    return rf"(?:[{_written(code_points)}]|{_BACKSLASH}(?:{_escapes(code_points)}))"


# A form body encodes a space as + (``Body=call+me+at+555+123+4567``), but only there: elsewhere a + between
# numbers is a sum (``1024+2048+4096``), so it splits a number only in a run with the form_cue (see
# _phone_shape). Contacts apps copy a number with no-break spaces (U+00A0, U+202F) and hyphens (U+2010, the
# no-break U+2011); word processors turn a dash into an en dash (U+2013). Typesetting groups digits with
# thin or figure spaces (U+2009, U+2007), CJK input methods type an ideographic space (U+3000): every space
# of Unicode (its category Zs) splits a number as the ASCII one does.
_UNICODE_SPACES = (0x00A0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)
_UNICODE_DASHES = (0x2010, 0x2011, 0x2013)
_FORM_SPACE = r"(?(form_cue)\+|(?!))"
_SPACE = rf"(?:{_written_or_encoded(' ', '20')}|{_FORM_SPACE}|{_written_or_escaped(_UNICODE_SPACES)})"
# A stray double space between groups (``+1 415  555  0123``), as typed or as a template justifies text.
_SPACES = rf"(?:{_SPACE}{{1,2}})"
_DASH = rf"(?:-|{_written_or_escaped(_UNICODE_DASHES)})"
# People type a dash with a space on either side (``415 - 555 - 0123``). A dot takes no space: so spaced, it
# ends a sentence (``sent 1234. 5678 more``). Each form is spelt one way only, so no text splits two ways.
_GAP = rf"(?:{_SPACES}(?:{_DASH}{_SPACES}?)?|{_DASH}{_SPACES}?|\.|{_SLASH})"
# The same forms in two sets. A tight gap is one character: a space, a dash, a dot or a slash. A loose gap, a
# dash with a space on either side or two spaces, is also how ranges, sums of times and padded columns are
# written (``ports 8000 - 8080``, ``took 1500 - 2500 ms``, ``msgs 1234  5678``), so it joins groups only into
# a phone-like whole (see _LOOSE_RUN).
_TIGHT_GAP = rf"(?:{_SPACE}|{_DASH}|\.|{_SLASH})"
_LOOSE_GAP = rf"(?:{_SPACES}{_DASH}{_SPACES}?|{_DASH}{_SPACES}|{_SPACE}{_SPACE})"
# Each bracket pair as written, encoded once and encoded twice; an opening matches only its own closing.
_BRACKET_PAIRS = ((r"\(", r"\)"), ("%28", "%29"), ("%2528", "%2529"))


# Between a trunk prefix (1-2 digits) and its area code (1-3): one separator as written, of those in _GAP.
_TRUNK_SEPARATOR = rf"[ .\-{_written(_UNICODE_SPACES + _UNICODE_DASHES)}]"
_TRUNK_AND_AREA = ((1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3))


def _opening_bracket(opening: str, closing: str) -> str:
    return rf"{opening}(?=(?:\d{{1,5}}|\d{{1,2}}{_TRUNK_SEPARATOR}\d{{1,3}}){closing})"


def _closing_bracket(opening: str, closing: str) -> str:
    # Python's look-behind is fixed-width: one per length of the bracketed group (and of its two parts).
    after_opening = [rf"(?<={opening}\d{{{n}}}{closing})" for n in range(1, 6)]
    after_opening += [
        rf"(?<={opening}\d{{{trunk}}}{_TRUNK_SEPARATOR}\d{{{area}}}{closing})"
        for trunk, area in _TRUNK_AND_AREA
    ]
    return rf"{closing}(?:{'|'.join(after_opening)})"


_PHONE_OPEN = "(?:" + "|".join(_opening_bracket(*pair) for pair in _BRACKET_PAIRS) + ")"
_PHONE_CLOSE = "(?:" + "|".join(_closing_bracket(*pair) for pair in _BRACKET_PAIRS) + ")"
# Every form above starts with one of these characters: at the end of a run (most numbers in a log line are
# too short for a phone) one test rules out all the forms, which are many.
_SEPARATOR_START = rf"[ +%.\-/\\(){_written(_UNICODE_SPACES + _UNICODE_DASHES)}]"
_PHONE_SEPARATOR = rf"(?={_SEPARATOR_START})(?:{_GAP}?{_PHONE_OPEN}|{_PHONE_CLOSE}{_GAP}?|{_GAP})"
_TIGHT_SEPARATOR = (
    rf"(?={_SEPARATOR_START})(?:{_TIGHT_GAP}?{_PHONE_OPEN}|{_PHONE_CLOSE}{_TIGHT_GAP}?|{_TIGHT_GAP})"
)
_LOOSE_SEPARATOR = (
    rf"(?={_SEPARATOR_START})(?:{_LOOSE_GAP}{_PHONE_OPEN}|{_PHONE_CLOSE}{_LOOSE_GAP}|{_LOOSE_GAP})"
)
# No word may follow the digits (a hex id or a word is no phone), save an extension glued on with an x
# (``555-0123x12``), which is left readable.
_RUN_END = rf"(?:(?!{_LETTER_OR_DIGIT})|(?=x\d{{1,6}}(?!{_LETTER_OR_DIGIT})))"
# A run joined by a loose gap, a dash with a space on either side or two spaces, is how people type a
# number (``415 - 555 - 0123``, ``02  234  5678``, ``98765 - 4321``, ``077 - 123456``) and also how ranges
# and padded columns are written (``ports 8000 - 8080``, ``ids 400389 - 400688``, ``msgs 1234  5678``). It is
# taken here whatever its groups once it holds 8 digits (a look-ahead that stops at its count), and
# _mask_unless_kept then keeps the one shape a range or a column has: two groups of equal length, with no
# trunk 0 or bracket first, or from a small first one (``rows 1 - 5000000``). A phone typed that way
# (``8123 - 4567``) is the price of readable ranges. The
# run's groups are whole digit runs between separators, so it stays linear.
_LOOSE_RUN = (
    rf"(?={_PHONE_OPEN}?\d(?:\d|{_PHONE_SEPARATOR}\d){{7}})"
    rf"(?P<loose>{_PHONE_OPEN}?\d+(?:{_TIGHT_SEPARATOR}\d+)*{_LOOSE_SEPARATOR}\d+(?:{_PHONE_SEPARATOR}\d+)*)"
)
_DIGIT_GROUPS = re.compile(r"\d+")


def _phone_shape(min_digits: int, *, needs_cues: bool = True) -> str:
    """The number itself, to be tried only where a run may start (_RUN_START)."""
    # An empty group that takes part lets a slash (or a +) split any run; a look-around only when it sees the
    # cue. A bracket here needs no check for its pair: without one the run cannot start on it.
    slash_cue = r"(?P<slash_cue>(?=[+(]|0\d|%(?:25)?2[B8]))?" if needs_cues else "(?P<slash_cue>)"
    # A form value: the run follows a field's =, a word, an escape or a character encoders leave as written
    # (``at+555``, ``%3A+555``, ``Hi!+555``) and its +, is glued to an escape (``%22555``) or opens with an
    # encoded + or bracket. A digit and its + before the run are no cue: that is a sum (``1024+2048``).
    form_cue = (
        r"(?P<form_cue>(?<==)|(?<=[a-z.~*!'_\-]\+)|(?<=%[0-9a-f]{2})|(?<=%[0-9a-f]{2}\+)|(?=%(?:25)?2[B8]))?"
        if needs_cues
        else "(?P<form_cue>)"
    )
    # A digit is tried before a separator: most steps of a run are digits, and a separator has many forms.
    any_run = rf"{_PHONE_OPEN}?\d(?:\d|{_PHONE_SEPARATOR}\d){{{min_digits - 1},}}"
    if needs_cues:
        # After a + any gap joins; without one a loose gap joins only a phone-like run, tried first so that
        # the tight run does not take a part of it.
        tight_run = rf"{_PHONE_OPEN}?\d(?:\d|{_TIGHT_SEPARATOR}\d){{{min_digits - 1},}}"
        digit_run = rf"(?(plus){any_run}|(?:{_LOOSE_RUN}|{tight_run}))"
    else:
        digit_run = any_run
    return rf"{slash_cue}{form_cue}(?P<plus>{_PLUS})?(?P<digits>{digit_run}){_RUN_END}"


# One part of an IPv4 address as inet_ntoa writes it: 0-255, no leading 0.
_IPV4_PART = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

# Numbers every log line carries that the shape above would take for a phone. They are matched in the same
# pass, as an alternative tried first at each position, and kept as they are: the scan then resumes after
# them, so a phone right beside one (``2026-12-07 555 123 4567``) is still masked on its own. Each is
# narrow enough that no phone format fits it, and none may run on into more digits (the closing lookahead):
# a phone that merely starts like one is no match here and is masked.
_NOT_PHONE = "|".join(
    (
        # ISO dates (and dotted calendar versions), with the time of an ISO stamp or of stdlib's asctime.
        r"(?:19|20)\d\d(?P<date_sep>[-./])(?:0[1-9]|1[0-2])(?P=date_sep)(?:0[1-9]|[12]\d|3[01])"
        r"(?:[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?)?",
        # Dates written day or month first (``07.12.2026``, ``12/31/2026``): 8 digits, and a leading 0 would
        # also let a slash join them as in a German phone.
        r"(?:0[1-9]|[12]\d|3[01])(?P<day_first_sep>[-./])(?:0[1-9]|[12]\d|3[01])(?P=day_first_sep)(?:19|20)\d\d",
        # Clock times, whose fraction alone (``03:10:00.123456``) would be 8 digits after a separator.
        r"\d{1,2}:\d\d(?::\d\d(?:[.,]\d+)?)?",
        # UUIDs (Celery task ids, request ids): the last group may be all digits.
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        # IPv4 addresses (a port after the colon is too short to matter), each part 0-255 written without
        # a leading 0: Swiss and Belgian phones are dotted in groups of up to three digits too
        # (``044.668.18.00``, ``02.123.45.67``). An 8-digit number written in dotted pairs (``12.34.56.78``,
        # as Danes write theirs) still reads as an address and stays: ops need addresses, and nothing in the
        # text tells the two apart.
        rf"{_IPV4_PART}(?:\.{_IPV4_PART}){{3}}",
        # Versions of three or four groups with a one-digit group after the first (``Chrome/120.0.6099.109``
        # in an access log's user agent); dotted phones have no one-digit group past the country code, or
        # have more groups (``33.6.12.34.56.78``).
        r"\d{1,4}(?=(?:\.\d{1,4}){0,2}\.\d(?!\d))(?:\.\d{1,4}){2,3}",
        # Decimals (durations, epoch seconds, float reprs) with a non-zero fraction. As in _scrub_number, a
        # whole one (``15551234567.0``) may be a phone read as a float; a leading 0 before more digits is a
        # trunk prefix (``030.12345678``), not a decimal.
        r"(?:0|[1-9]\d*)\.\d*[1-9]\d*",
        # The status after the request line of an access log, glued otherwise to the response size.
        r'HTTP/\d(?:\.\d)?"? [1-5]\d\d',
    )
)
# Both guards are for speed, as this runs on every line: most positions (letters, spaces, punctuation)
# can start neither alternative and are passed over with one character test, and an exception starts only
# where a phone may (_RUN_START), so the inside of a hex id or a long number is not tried for one.
_PHONE = re.compile(
    rf"(?=[\d(+%a-fh\\]){_RUN_START}(?:(?P<keep>(?:{_NOT_PHONE})(?![.\-]?\d))|{_phone_shape(8)})",
    re.I,
)
# Under a key that names a phone (see _PHONE_WORDS) a shorter run is a number too: a local or partial one.
# No exception is kept there, a slash or a + always splits and a loose gap always joins: whatever sits under
# such a key is taken for a phone.
_PHONE_UNDER_PHONE_KEY = re.compile(_RUN_START + _phone_shape(5, needs_cues=False), re.I)
_NON_DIGIT = re.compile(r"\D")
# An escaped separator inside a matched number, whose hex digits are none of the number's.
_ESCAPED_CHAR = re.compile(r"%(?:25)?[0-9A-F]{2}|\\(?:x[0-9A-F]{2}|u[0-9A-F]{4})", re.I)
_SECRET_KEY = re.compile(r"(secret|token|passw|api[_-]?key|authorization|signature|credential|auth)", re.I)
# Whitespace as \s takes it: what str.isspace() calls whitespace, of which none lies past U+3000.
_WHITESPACE = [code_point for code_point in range(0x3001) if chr(code_point).isspace()]
# That whitespace escaped: repr() and JSON write a tab, a line break and a carriage return short (JSON a form
# feed too), the rest as \xNN or \uNNNN.
_ESCAPED_WHITESPACE = rf"{_BACKSLASH}(?:[tnrf]|{_escapes(_WHITESPACE)})"


def _after_escaped_whitespace(then: str = "") -> str:
    r"""Right after such an escape (and ``then``): most end in a letter (``\n``, ``\u202f``) that no word
    must touch, but the escaped character is whitespace. One look-behind per width, as Python's must each
    have one."""
    short = "|".join(f"{code_point:02x}" for code_point in _WHITESPACE if code_point <= 0xFF)
    return (
        rf"(?<=\\[tnrf]{then})"
        rf"|(?<=\\u(?:{'|'.join(f'{code_point:04x}' for code_point in _WHITESPACE)}){then})"
        rf"|(?<=\\x(?:{short}){then})"
    )


# Where the word of a VERIFY may start: not inside a word or an identifier (``phone_verify_1234567``). A
# ``_`` before it is WhatsApp's italic mark only when no letter or digit is glued to it (``_VERIFY 123456_``).
_VERIFY_WORD_START = (
    rf"(?:(?<![a-z_])|(?<=_)(?<![a-z0-9]_)|{_after_escaped_whitespace()}|{_after_escaped_whitespace('_')})"
)


def _escaped_decimal_digits() -> str:
    r"""The decimal digits of every script past ASCII, as JSON escapes them (``u0661``): those of the Basic
    Multilingual Plane, whose every character JSON writes as one escape."""
    last_hex_digits: dict[str, str] = {}
    for code_point in range(0x80, 0x10000):
        if chr(code_point).isdecimal():
            escaped = f"{code_point:04x}"
            last_hex_digits[escaped[:3]] = last_hex_digits.get(escaped[:3], "") + escaped[3]
    # Grouped by row of 16 code points, a character set of the last hex digit in each: a script's ten digits
    # lie in one or two rows.
    return "u(?:" + "|".join(f"{row}[{last}]" for row, last in last_hex_digits.items()) + ")"


def _escaped_astral_decimal_digits() -> str:
    r"""The decimal digits past the Basic Multilingual Plane (mathematical bold ``𝟒``, Adlam...), as JSON
    escapes them: a surrogate pair (``ud835\udfd2``), each backslash maybe doubled (_BACKSLASH). All lie in
    the plane after it."""
    low_rows: dict[str, dict[str, str]] = {}
    for code_point in range(0x10000, 0x20000):
        if chr(code_point).isdecimal():
            offset = code_point - 0x10000
            high, low = f"{0xD800 + (offset >> 10):04x}", f"{0xDC00 + (offset & 0x3FF):04x}"
            rows = low_rows.setdefault(high, {})
            rows[low[:3]] = rows.get(low[:3], "") + low[3]
    pairs = (
        f"{high}{_BACKSLASH}u(?:" + "|".join(f"{row}[{last}]" for row, last in rows.items()) + ")"
        for high, rows in low_rows.items()
    )
    return "u(?:" + "|".join(pairs) + ")"


# A digit of a VERIFY's code, as \d takes it: the verify stage reads a code typed on an Arabic, Persian,
# Hindi or CJK keyboard (shared/verification.py, ascii_digits), and a JSON body escapes those digits, each
# escape telling its digit; one past the BMP as a surrogate pair.
_CODE_DIGIT = rf"(?:\d|{_BACKSLASH}(?:{_escaped_decimal_digits()}|{_escaped_astral_decimal_digits()}))"
# What may come between a code's digits.
_CODE_SEPARATOR = rf"(?:[\s\-+]|{_ESCAPED_WHITESPACE})*+"
# Right after the word, an identifier or a file name it begins (``verify_20261207.log``, whose first digits
# the phone mask may have starred, ``verify_482913_retry``): a "_", digits, and then a letter, or a letter or
# digit past a "_", "." or "-". A "_" with digits alone, or with WhatsApp's marks and punctuation after them,
# is an italic mark: the verify stage takes ``VERIFY_482913``, ``verify_*482913*`` and ``_VERIFY_482913_``.
_IDENTIFIER_AFTER_THE_WORD = r"_\**+\d[\d*\-]*+[_.\-]*+[a-z0-9]"

# Secrets that end up inside free text (an HTTP client's error quotes the URL it called):
# - a URL's credentials: the whole userinfo (``https://user:password@host``, ``redis://:password@host``),
#   since a token is often sent as the user name alone (``https://TOKEN@host``); "://" is kept. It runs to
#   the last @ before the authority ends (a /, ?, #, space or quote, or the end of the text), where urllib
#   and redis-py split it: a password may hold a raw @ (``redis://:p@ss@host``). One greedy run, given back
#   to that @, so linear: a run stops at the next /, so no two runs from different "://" overlap;
# - a query parameter's value (``?token=...``, ``&api_key=...``), when its name is judged secret as a
#   field name would be (_key_kind) or is one of _SECRET_PARAMS; any other parameter's value is searched in
#   turn (see _secret_spans), as it may hold a URL (a callback inside another URL's query). Such a URL is
#   percent-encoded once (``&redirect=http%3A%2F%2Fu%3Apw%40host``, ``?next=%3Ftoken%3Dabc``), so the text
#   is also searched with one level of percent-escapes decoded (see _redact_secrets);
# - Bearer tokens, Twilio auth tokens/SIDs (32 hex) and OpenAI-style keys;
# - the code of a ``VERIFY 123456`` quoted in free text (Celery logs the body of a task it does not know, an
#   error may quote a message), typed with the separators the verify stage accepts (shared/verification.py:
#   any run of whitespace (its \s: no-break and typographic spaces too), hyphens and, before the code,
#   colons and WhatsApp's formatting marks, ``*VERIFY* 123456``; the Spanish "verificar" too), also as a
#   repr or JSON escapes them (``\n``, ``\xa0``, ``\u2009``) or a repr of JSON doubles those
#   (``\\u00a0``, see _BACKSLASH), the word read right after such an escape too (``\nVERIFY``); its
#   digits are any script's, escaped or not, past the BMP as surrogate pairs (_CODE_DIGIT). A code of
#   the wrong length is redacted too, from 3 digits on: the verify stage answers it, and a mistyped code
#   holds all but one of the code's digits, or all of them and one more (fewer than 3 tell little, and
#   "verify 2 items" stays readable). Ordinary text keeps its figures: 3 or 4 digits the sentence goes on
#   after ("please verify 150 units", "verify-001 failed": a VERIFY message ends at its code, and so few
#   digits tell little), the word inside an identifier or a file name (``phone_verify_1234567``,
#   ``verify_20261207.log``, whose digits the phone mask may have starred first), digits glued to a letter
#   or an identifier's ``_`` (a UUID, ``1234567_retry``; an italic mark ``_`` after the code is no glue).
#   Separators and digits are apart, so the possessive runs never backtrack.
# This runs on every line: the look-ahead passes over, with one character test, each position where no
# alternative can start (on most text, several times faster than trying each in turn).
_SECRET_VALUE = re.compile(
    r"(?=[:?&;bsv0-9a-f])(?:"
    r"(?P<url>://)[^\s/?#\"']+(?=@)"
    r"|(?P<param>[?&;](?P<name>[\w.\-]{1,64})=)"
    r"|Bearer\s+[\w.\-]+|sk-[\w\-]{8,}|\b[0-9a-f]{32}\b"
    rf"|{_VERIFY_WORD_START}(?:verify|verificar)(?![a-z]|{_IDENTIFIER_AFTER_THE_WORD})"
    rf"(?:[\s:+\-*_~`]|{_ESCAPED_WHITESPACE})*+"
    rf"(?P<code>{_CODE_DIGIT}(?:{_CODE_SEPARATOR}{_CODE_DIGIT}){{4,}}+"
    rf"|{_CODE_DIGIT}(?:{_CODE_SEPARATOR}{_CODE_DIGIT}){{2,3}}+(?!{_CODE_SEPARATOR}{_CODE_DIGIT})(?!\s*+[a-z]))"
    r"(?![a-z]|_++[a-z0-9])"
    r")",
    re.I,
)
# A query parameter's value, read only after a secret name: matched with the name, every harmless
# parameter would be read to the end of its value, and ``?k=v?k=v...`` re-read to the end each time.
_PARAM_VALUE = re.compile(r"[^&\s#\"'<>]*")
REDACTED = "[redacted]"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Keys are judged word by word whatever their spelling: ``verifyCode``, ``verify_code`` and ``VERIFY_CODE``.
_KEY_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
# A ``code`` is a secret (verification/OTP codes) unless a word before it says what harmless kind it is:
# provider error codes, HTTP statuses and country codes are logged on purpose and needed to debug a send.
_HARMLESS_CODE_KINDS = _words(
    "error err status http response country calling dial region language lang locale currency "
    "area postal zip iso exit return result reason event failure sub provider twilio meta kapso "
    "template sql"
)
_SECRET_WORDS = _words("otp totp hotp pin pins passcode passcodes")
# Glued spellings (``verifycode``, ``smscode``) are secret only with a known secret prefix: many harmless
# words end in "code" (``errorcode``, ``subcode``, ``unicode``, ``decode``).
_SECRET_CODE_PREFIXES = _words(
    "verify verification sms otp pin pass auth access login confirm confirmation security reset "
    "one onetime recovery activation magic"
)
# Keys whose value is a phone number whatever its type: Meta sends ``wa_id`` and ``recipient_id`` as digit
# strings that callers may turn into ints, and ``to``/``from`` carry the number in every provider. The
# weaker words name a phone only when the key does not end in an id or count word (``to_user_id``).
_PHONE_WORDS = _words("phone phones mobile msisdn waid recipient recipients")
_WEAK_PHONE_WORDS = _words("from to sender number numbers")
# Keys that count or identify something of our own. Only here may an int of 8+ digits stay as it is: a busy
# install's message ids pass 10**8 and are the key to every investigation, and sizes/times are no phones.
_COUNTER_WORDS = _words("id ids pk count size bytes total seq offset ms ns us seconds timestamp ts epoch")

_PLAIN, _SECRET, _PHONE_KEY, _COUNTER = "plain", "secret", "phone", "counter"
# Query parameters that carry a key or a password by convention, though as field names they would not
# say so: Google's ``key``, Azure SAS ``sig``, ``pwd`` and ``pass`` (_SECRET_KEY wants ``passw``).
_SECRET_PARAMS = _words("key sig pwd pass")


def mask_phone(text: str) -> str:
    """Mask each phone-shaped run, keeping its last 4 digits: ``+15551234567`` -> ``+*******4567``.

    Written forms are masked alike: ``(555) 123-4567`` -> ``******4567``.
    """
    return _PHONE.sub(_mask_unless_kept, text)


def _mask_unless_kept(match: re.Match[str]) -> str:
    return match[0] if match["keep"] is not None or _range_or_column(match["loose"]) else _mask_match(match)


def _range_or_column(loose: str | None) -> bool:
    """Whether a run joined by a loose gap (see _LOOSE_RUN) reads as a range or a padded column: two groups,
    the first not a trunk prefix (``077 - 123456``), of equal length (``8000 - 8080``, ``400389  400688``)
    or from a small first one (``rows 1 - 5000000``), each too short to be a number on its own (8 digits
    would be masked written alone). Escapes (``%20``) are no groups."""
    if loose is None or loose.startswith("0") or not loose[0].isdigit():
        return False
    groups = _DIGIT_GROUPS.findall(_ESCAPED_CHAR.sub(" ", loose))
    if len(groups) != 2 or max(len(group) for group in groups) >= 8:
        return False
    first, second = groups
    return len(first) == len(second) or len(first) <= 2


def _mask_match(match: re.Match[str]) -> str:
    # Separators and parentheses are dropped, not kept: a number reads the same masked whatever way it was
    # written (one grep finds every line about a recipient), and the grouping would tell its country and
    # format. Only the + stays, the one sign that the number is international.
    digits = _NON_DIGIT.sub("", _ESCAPED_CHAR.sub("", match["digits"]))
    return (match["lead"] or "") + (match["plus"] or "") + "*" * (len(digits) - 4) + digits[-4:]


def _mask_digits(number: int) -> str:
    digits = str(abs(number))
    return "*" * (len(digits) - 4) + digits[-4:]


def _judge_key(key: str) -> str:
    """What a field name says of its value: secret (dropped), phone, counter (an id or measure) or plain."""
    if _SECRET_KEY.search(key):
        return _SECRET
    words = [word.lower() for word in _KEY_WORDS.findall(key)]
    for index, word in enumerate(words):
        if word in _SECRET_WORDS:
            return _SECRET
        if word in ("code", "codes"):
            if index == 0 or words[index - 1] not in _HARMLESS_CODE_KINDS:
                return _SECRET
        elif word.endswith("code") and word[:-4] in _SECRET_CODE_PREFIXES:
            return _SECRET
    counter = bool(words) and words[-1] in _COUNTER_WORDS
    if _PHONE_WORDS.intersection(words) or "waid" in {a + b for a, b in itertools.pairwise(words)}:
        return _PHONE_KEY
    if _WEAK_PHONE_WORDS.intersection(words) and not counter:
        return _PHONE_KEY
    return _COUNTER if counter else _PLAIN


# Inside an identifier a phone run can only start right after an underscore (``user_14155550123``).
_DIGIT_AFTER_UNDERSCORE = re.compile(r"_\d")


def _is_field_name(key: str) -> bool:
    """An identifier with no digit after an underscore, so no phone run inside: nearly every field name."""
    return key.isidentifier() and _DIGIT_AFTER_UNDERSCORE.search(key) is None


# Field names repeat on every line, so their verdict is cached; only field names are (_is_field_name), so
# that a key which is or holds a phone number (a payload keyed by number) never sits in the cache.
_judge_field_name = functools.lru_cache(maxsize=2048)(_judge_key)


def _key_kind(key: Any) -> str:
    if not isinstance(key, str):
        return _PLAIN
    return _judge_field_name(key) if _is_field_name(key) else _judge_key(key)


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """Where each secret found in free text lies (see _SECRET_VALUE), in order."""
    spans: list[tuple[int, int]] = []
    match = _SECRET_VALUE.search(text)
    # A loop, not finditer(): after a harmless parameter's name the scan goes on inside its value (it may
    # hold a URL), after a secret one it skips the value. Not recursion either: a query of nested URLs
    # (``?a=?a=?a=...``, from anyone) would go as deep as it is long.
    while match is not None:
        start = match.end()
        if match["url"] is not None:
            spans.append((match.end("url"), start))
        elif match["code"] is not None:
            spans.append((match.start("code"), start))
        elif match["param"] is None:
            spans.append((match.start(), start))
        elif _secret_param(match["name"]):
            value = _PARAM_VALUE.match(text, start)
            assert value is not None  # it matches the empty string
            if value.end() > start:
                spans.append((start, value.end()))
                start = value.end()
        match = _SECRET_VALUE.search(text, start)
    return spans


_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}", re.I)


def _decode_escape(match: re.Match[str]) -> str:
    return chr(int(match[0][1:], 16))


def _decoded_secret_spans(text: str) -> list[tuple[int, int]]:
    """Spans of the secrets found in ``text`` with one level of percent-escapes decoded, in ``text``."""
    decoded, count = _PERCENT_ESCAPE.subn(_decode_escape, text)
    if count == 0:
        return []
    spans = _secret_spans(decoded)
    if not spans:
        return []
    # Each escape is three characters written and one decoded: a position in the decoded text lies two
    # further on in ``text`` for each escape before it. Decoded once only: ``%253F`` stays ``%3F``, as a
    # second level would be a search of its own for each level a text may nest.
    decoded_at = [escape.start() - 2 * index for index, escape in enumerate(_PERCENT_ESCAPE.finditer(text))]
    return [
        (start + 2 * bisect.bisect_left(decoded_at, start), end + 2 * bisect.bisect_left(decoded_at, end))
        for start, end in spans
    ]


def _redact_secrets(text: str) -> str:
    """Replace each secret found in free text, as written or percent-decoded once, with ``[redacted]``."""
    spans = _secret_spans(text)
    if "%" in text:
        spans += _decoded_secret_spans(text)
    if not spans:
        return text
    spans.sort()
    parts: list[str] = []
    written = 0
    span_start, span_end = spans[0]
    # The two searches may find one secret each (a value written, a URL in it decoded): overlapping spans
    # are one redaction.
    for start, end in spans[1:]:
        if start < span_end:
            span_end = max(span_end, end)
            continue
        parts += (text[written:span_start], REDACTED)
        written = span_end
        span_start, span_end = start, end
    parts += (text[written:span_start], REDACTED, text[span_end:])
    return "".join(parts)


def _secret_param(name: str) -> bool:
    return name.lower() in _SECRET_PARAMS or _key_kind(name) == _SECRET


# A masked number's last 4 digits followed, through separators, by another digit: the start of a run that
# the masking did not see, as it read those digits as the end of the number before (see _scrub_text).
_MASKED_TAIL_GOES_ON = re.compile(
    r"\*\d{4}(?:[^\w*]|%(?:25)?[0-9A-F]{2}|\\(?:[nrt]|x[0-9A-F]{2}|u[0-9A-F]{4})){1,8}\d", re.I
)
# Each round can only enable the next by what it replaced, and a chain of such is short (a token redacted
# inside credentials, then the credentials; digits glued to a redacted token, then masked): three rounds
# reach the fixed point of every text the fuzz tests build. One more in reserve; past it the text is still
# masked and redacted, only not to the end.
_MAX_SCRUB_ROUNDS = 4


def _scrub_once(text: str, kind: str) -> tuple[str, str]:
    """The text masked, and then also redacted."""
    masked = mask_phone(text)
    if kind == _PHONE_KEY:
        masked = _PHONE_UNDER_PHONE_KEY.sub(_mask_match, masked)
    return masked, _redact_secrets(masked)


def _scrub_text(text: str, kind: str) -> str:
    """Mask and redact ``text`` to its fixed point: scrubbing the result again changes nothing.

    A replacement can make a match that the text did not hold: a Bearer token redacted inside a URL's
    credentials leaves them unbroken (``://x[redacted]@``), digits glued to a redacted key lose the letter
    that made them an id (``4155550123[redacted]``), and a masked number's kept digits may run on into the
    next (``******0123 - 1234 - 5678``). Dead letters are scrubbed when written and again when listed, and
    must read the same, so a round that redacted anything, or whose masking left digits that may run on, is
    followed by another. Most lines need one round: nothing to replace, or a phone standing alone.
    """
    for _ in range(_MAX_SCRUB_ROUNDS):
        masked, scrubbed = _scrub_once(text, kind)
        if scrubbed == masked and (masked == text or _MASKED_TAIL_GOES_ON.search(masked) is None):
            break
        text = scrubbed
    return scrubbed


def _scrub_number(number: int | float, kind: str) -> Any:
    # Ints carry phone numbers too (``phone=15551234567``, a wa_id parsed from JSON). Rule: under a phone key
    # any number of 5+ digits is masked; under a counter/id key it stays; anywhere else 8+ digits is masked,
    # as a digit run in text would be. Floats follow only when whole (a phone read as 1.5551234567e10);
    # fractional ones are durations and epoch times.
    if isinstance(number, float):
        if not number.is_integer():
            return number
        whole = int(number)
    else:
        whole = number
    if kind == _COUNTER:
        return number
    if abs(whole) >= (10_000 if kind == _PHONE_KEY else 10_000_000):
        return _mask_digits(whole)
    return number


def _scrub_key(key: Any) -> Any:
    # Payload dicts keyed by number (``{"+15551234567": ...}``) would otherwise print the number as a key.
    if isinstance(key, str):
        return _redact_secrets(key) if _is_field_name(key) else _scrub_text(key, _PLAIN)
    if key is None or isinstance(key, bool):
        return key
    if isinstance(key, int | float):
        return _scrub_number(key, _PLAIN)
    # Any other key (bytes from a Redis hash read back, a tuple, an object) is printed by the console
    # renderer with its repr, number and all, and refused by the JSON one: its masked repr is both readable
    # and a key each renderer takes.
    return _scrub_text(repr(key), _PLAIN)


def _scrub(value: Any, kind: str, inside: set[int]) -> Any:
    """``value`` masked; ``inside``: the ids of the containers it sits in, from the outermost."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _scrub_text(value, kind)
    if isinstance(value, int | float):
        return _scrub_number(value, kind)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if id(value) in inside:
            # A container that holds itself (an object graph's back reference): written as repr() writes
            # it, where following it would recurse until RecursionError, raised by the log call.
            return "{...}" if isinstance(value, Mapping) else "[...]"
        inside.add(id(value))
        try:
            return _scrub_container(value, kind, inside)
        finally:
            inside.discard(id(value))
    if isinstance(value, bytes | bytearray):
        # Raw request bodies (a Twilio form, a Meta JSON): latin-1 maps each byte to one char and back.
        return _scrub_text(bytes(value).decode("latin-1"), kind).encode("latin-1")
    # Any other object is rendered with repr() by both renderers; an exception or a model passed as a field
    # prints its text (``ValueError('bad number +1555...')``), so mask that text here.
    return _scrub_text(repr(value), kind)


def _scrub_container(value: Mapping | list | tuple | set | frozenset, kind: str, inside: set[int]) -> Any:
    if isinstance(value, Mapping):
        scrubbed = {}
        for key, item in value.items():
            item_kind = _key_kind(key)
            scrubbed[_scrub_key(key)] = REDACTED if item_kind == _SECRET else _scrub(item, item_kind, inside)
        return scrubbed
    return [_scrub(item, kind, inside) for item in value]


def scrub(value: Any) -> Any:
    """Mask phones and secrets in a value of any shape; keys that look secret lose their value.

    Text, bytes, numbers, dict keys and the text of other objects are all masked; how a number is treated
    depends on the key it sits under (see ``_scrub_number``).
    """
    return _scrub(value, _PLAIN, set())


def redact_verify_codes(value: Any) -> Any:
    """``value`` (text, or JSON: dicts and lists of them) with the code of every ``VERIFY 123456`` in its
    text replaced by ``[redacted]``, found as the logs find it (:data:`_SECRET_VALUE`), and nothing else
    changed: what a stored copy of a user's message keeps once its code is checked (shared/verification.py).
    """
    if isinstance(value, str):
        return _redact_codes(value)
    if isinstance(value, Mapping):
        return {key: redact_verify_codes(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_verify_codes(item) for item in value]
    return value


def _redact_codes(text: str) -> str:
    parts: list[str] = []
    written = 0
    for match in _SECRET_VALUE.finditer(text):
        if match["code"] is not None:
            parts += (text[written : match.start("code")], REDACTED)
            written = match.end("code")
    return "".join(parts) + text[written:] if parts else text


_FORMATTER_META = ("_record", "_from_structlog")


def scrub_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """structlog processor: drop secret-looking fields, mask phones everywhere (event text included)."""
    # ProcessorFormatter's own entries hold the LogRecord and a flag it reads back; they are never rendered.
    meta = {key: event_dict.pop(key) for key in _FORMATTER_META if key in event_dict}
    return {**scrub(event_dict), **meta}


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
        _render_stdlib_message,
        # Tracebacks become text before scrubbing in both formats: exception messages carry phone numbers.
        structlog.processors.format_exc_info,
        scrub_processor,
        # Added after the scrub, which has nothing to find in them: its regexes over every field are most
        # of a line's cost.
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        # A line below the level is dropped first: the chain (the scrub above all) ran for every debug
        # line before the stdlib logger threw it away, ~20x the cost of dropping it here.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
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


def get_logger(name: str | None = None) -> Any:
    return structlog.stdlib.get_logger(name)
