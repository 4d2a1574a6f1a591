"""Due dates in English and Spanish, resolved against the day the message was sent.

Rules (``shared/data/proposals-dev.md``): today/hoy; tomorrow/mañana (+1); "in N days"/"en N días" (+N); a
weekday name, with or without by/on/next/para el/el/Deadline:, is its next occurrence strictly after today;
end of month/fin de mes is the month's last day; an ISO date as written; "Dec 15"/"15 de diciembre" is that
day this year, or next year once it has passed. "12/25" / "25/12" (the spec is silent on them) are read only
after a deadline word ("by 12/25"), "on" / "el" ("Deploy on 12/25") or a separator that attaches them to an
item ("Fix login, 12/25", "Fix login 12/25, 2h"): elsewhere they are as often no date ("support 24/7",
"chapter 5/20"). They are read where a number past 12 tells day from month, or in Spanish, which writes the
day first; "03/04" in English is March 4 or April 3, so it is not guessed. A pair the message's language
writes the other way round ("16/9" in English) is read only after a deadline word ("by 25/12"), and one after
"ratio" / "aspect" / "of" never: those are ratios and names ("aspect ratio to 16/9"). A deadline written as a
date that is no day an item can be due on ("due 31/02", "by 2026-02-29", "due 03/04" in English, "due
yesterday", "by 2020-01-01": before today) is still found, with no value, so that it is taken out of the title
and reported. Patterns run on folded text (lower-case, no accents) and each match's span includes its lead-in
words ("by", "para el", ...), so removing the span from a title leaves no dangling preposition.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

WEEKDAYS = {
    "monday": 0, "mon": 0, "lunes": 0,
    "tuesday": 1, "tue": 1, "tues": 1, "martes": 1,
    "wednesday": 2, "wed": 2, "miercoles": 2,
    "thursday": 3, "thu": 3, "thur": 3, "thurs": 3, "jueves": 3,
    "friday": 4, "fri": 4, "viernes": 4,
    "saturday": 5, "sat": 5, "sabado": 5,
    "sunday": 6, "sun": 6, "domingo": 6,
}  # fmt: skip
_ABBREVIATED_DAYS = {"mon", "tue", "tues", "wed", "thu", "thur", "thurs", "fri", "sat", "sun"}

MONTHS = {
    "january": 1, "jan": 1, "enero": 1, "ene": 1,
    "february": 2, "feb": 2, "febrero": 2,
    "march": 3, "mar": 3, "marzo": 3,
    "april": 4, "apr": 4, "abril": 4, "abr": 4,
    "may": 5, "mayo": 5,
    "june": 6, "jun": 6, "junio": 6,
    "july": 7, "jul": 7, "julio": 7,
    "august": 8, "aug": 8, "agosto": 8, "ago": 8,
    "september": 9, "sep": 9, "sept": 9, "septiembre": 9, "setiembre": 9,
    "october": 10, "oct": 10, "octubre": 10,
    "november": 11, "nov": 11, "noviembre": 11,
    "december": 12, "dec": 12, "diciembre": 12, "dic": 12,
}  # fmt: skip

_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "un": 1, "uno": 1, "una": 1, "two": 2, "dos": 2, "three": 3, "tres": 3,
    "four": 4, "cuatro": 4, "five": 5, "cinco": 5, "six": 6, "seis": 6, "seven": 7, "siete": 7,
    "eight": 8, "ocho": 8, "nine": 9, "nueve": 9, "ten": 10, "diez": 10, "fourteen": 14, "catorce": 14,
    "fifteen": 15, "quince": 15, "twenty": 20, "veinte": 20, "thirty": 30, "treinta": 30,
}  # fmt: skip

# Lead-in words that say "this is a deadline"; they belong to the date's span. Each run of them reads one
# way only: no lead-in is two others in a row ("para el" is "para" then "el"), and the spaces before a
# colon are the colon's. Two readings of each lead-in doubled the backtracking with every one of a run
# that ends in no date: thirty of them held a worker for days. And at most eight: the pattern is tried
# from every word of a run, to its end, so a message of lead-ins only took seconds (quadratic).
_COLON = r"(?:\s*[:\-])?"
_LEAD = (
    r"(?:(?:by|on|due|before|until|till|for|no\s+later\s+than|"
    rf"deadline{_COLON}|due\s+date{_COLON}|fecha(?:\s+(?:limite|de\s+entrega))?{_COLON}|plazo{_COLON}|"
    rf"entrega{_COLON}|para|antes\s+del?|hasta|a\s+mas\s+tardar|el|del|"
    r"el\s+dia|this|next|proximo|este|esta)\s+){0,8}"
)
# A time of day after a date is part of the deadline, not of the title ("tomorrow at 3pm", "by Friday at
# 10h30", "tomorrow @ 9h").
_TIME_OF_DAY = (
    r"(?:\s+(?:(?:in|por|en|a|de)\s+)?(?:the\s+|la\s+)?(?:morning|afternoon|evening|manana|tarde|noche)"
    r"|(?:\s+(?:at|a\s+las?|by)\s+|\s*@\s*)\d{1,2}(?:[:h]\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.|h|hs)?(?![\w]))?"
)
_NUM = r"(\d{1,3}|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")"
_MONTH = r"(" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th|º|o)?"
_YEAR = r"(\d{4})"


# What a rule returns for a deadline that is no day (see the module docstring); None is "no date here".
NO_DAY: Final = "no day"

# Words that make what follows a deadline: after one, a date that is no day is reported, not left alone.
_DEADLINE_WORDS = "due|before|until|till|than|deadline|date|para|antes|hasta|tardar|fecha|plazo|entrega"
_DEADLINE_WORD = re.compile(r"\b(?:by|for|" + _DEADLINE_WORDS + r")\b")
# "for" also says what a thing is for ("the layout for 16/9 screens"): too weak to read a pair the message's
# way does not ("16/9" in English) as a date.
_STRONG_DEADLINE_WORD = re.compile(r"\b(?:by|" + _DEADLINE_WORDS + r")\b")


@dataclass(frozen=True)
class DateMatch:
    start: int
    end: int
    value: dt.date | None  # None: a deadline that is no day or is past (NO_DAY), reported instead of kept


def _after_deadline_word(m: re.Match[str], words: re.Pattern[str] = _DEADLINE_WORD) -> bool:
    """Whether the match's lead-in (what comes before its first group) says "deadline"."""
    return bool(words.search(m.string, m.start(), m.start(1)))


def _weekday(today: dt.date, weekday: int) -> dt.date:
    # Strictly after today: said on a Tuesday, "Tuesday" means a week later.
    return today + dt.timedelta(days=(weekday - today.weekday()) % 7 or 7)


def _month_day(today: dt.date, month: int, day: int, year: str | None) -> dt.date | str:
    try:
        if year:
            return dt.date(int(year), month, day)
        found = dt.date(today.year, month, day)
        return found if found >= today else dt.date(today.year + 1, month, day)
    except ValueError:
        return NO_DAY


def _number(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBER_WORDS[word]


def _end_of_week(today: dt.date) -> dt.date:
    return today + dt.timedelta(days=(4 - today.weekday()) % 7)


_RULES: list[tuple[re.Pattern[str], object]] = []


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])" + _LEAD + "(?:" + pattern + r")(?![\w])" + _TIME_OF_DAY)


def _rule(pattern: str):  # type: ignore[no-untyped-def]
    def register(func):  # type: ignore[no-untyped-def]
        _RULES.append((_compile(pattern), func))
        return func

    return register


@_rule(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})")
def _iso(m: re.Match[str], today: dt.date) -> dt.date | str:
    try:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return NO_DAY


@_rule(_MONTH + r"\s+" + _DAY + r"(?:,?\s+" + _YEAR + r")?")
def _month_then_day(m: re.Match[str], today: dt.date) -> dt.date | str:
    return _month_day(today, MONTHS[m[1]], int(m[2]), m[3])


@_rule(_DAY + r"\s+(?:of\s+|de\s+)?" + _MONTH + r"(?:,?\s+(?:de\s+|del\s+)?" + _YEAR + r")?")
def _day_then_month(m: re.Match[str], today: dt.date) -> dt.date | str:
    return _month_day(today, MONTHS[m[2]], int(m[1]), m[3])


@_rule(r"(?:the\s+)?(?:day\s+after\s+tomorrow|pasado\s+manana)")
def _day_after_tomorrow(m: re.Match[str], today: dt.date) -> dt.date:
    return today + dt.timedelta(days=2)


@_rule(r"(?:today|tonight|hoy|end\s+of\s+(?:the\s+)?day|eod|esta\s+noche|this\s+evening)")
def _today(m: re.Match[str], today: dt.date) -> dt.date:
    return today


# "mañana" is also "morning": "la mañana" / "por la mañana" / "esta mañana" are not tomorrow.
@_rule(r"(?:tomorrow|tmrw|tmr|(?<!\bla\s)(?<!\besta\s)manana)")
def _tomorrow(m: re.Match[str], today: dt.date) -> dt.date:
    return today + dt.timedelta(days=1)


@_rule(r"((?:the\s+)?day\s+before\s+yesterday|yesterday|anteayer|antier|ayer)(?!')")
def _yesterday(m: re.Match[str], today: dt.date) -> str | None:
    # As a deadline ("due yesterday", "para ayer") it is past; in a title ("what we shipped yesterday") it
    # is the title's.
    return NO_DAY if _after_deadline_word(m) else None


# A range ("in 2-3 days") is due at its upper bound, as an amount's range is read (offline_effort).
@_rule(
    r"(?:in|en|within|dentro\s+de)\s+(?:the\s+next\s+|los\s+proximos\s+)?"
    + r"(?:\d{1,3}(?:[-–—]|\s+(?:to|a)\s+))?"
    + _NUM
    + r"\s+(days?|dias?|weeks?|semanas?)"
)
def _in_days(m: re.Match[str], today: dt.date) -> dt.date:
    count = _number(m[1])
    per = 7 if m[2].startswith(("week", "semana")) else 1
    return today + dt.timedelta(days=count * per)


@_rule(
    r"(?:(?:the\s+)?end\s+of\s+(?:the\s+|this\s+)?month|eom|(?:a\s+)?(?:fin|final|finales)\s+(?:de|del)\s+(?:este\s+)?mes)"
)
def _end_of_month(m: re.Match[str], today: dt.date) -> dt.date:
    return today.replace(day=calendar.monthrange(today.year, today.month)[1])


@_rule(
    r"(?:(?:the\s+)?end\s+of\s+(?:the\s+|this\s+)?week|eow|(?:a\s+)?(?:fin|final|finales)\s+de\s+(?:esta\s+)?semana\s+laboral)"
)
def _end_of_week_rule(m: re.Match[str], today: dt.date) -> dt.date:
    return _end_of_week(today)


@_rule(r"(?:next\s+week|la\s+(?:proxima\s+semana|semana\s+que\s+viene))")
def _next_week(m: re.Match[str], today: dt.date) -> dt.date:
    return today + dt.timedelta(days=7)


@_rule(r"(" + "|".join(sorted(WEEKDAYS, key=len, reverse=True)) + r")\.?(?:\s+(?:que\s+viene|proximo))?")
def _weekday_rule(m: re.Match[str], today: dt.date) -> dt.date | None:
    name = m[1]
    # "sat", "sun", "wed" are also words; an abbreviation counts only after a lead-in ("by Fri").
    if name in _ABBREVIATED_DAYS and m.start(1) == m.start():
        return None
    return _weekday(today, WEEKDAYS[name])


# Day and month, or month and day, with a year or not: "12/25", "25/12/2026". Not a fraction or a ratio
# of an amount ("1/2 day", "3/4 de los tests"), nor part of a longer run of slashes or a version.
_SLASHED = _compile(
    r"(?<![/.])(\d{1,2})/(\d{1,2})(?:/(\d{4}|\d{2}))?(?!/)"
    r"(?!\s*(?:\d|h|hrs?|hours?|horas?|hs|m|mins?|minutes?|minutos?|d|days?|dias?|weeks?|semanas?|of|de)(?!\w))"
)
# Where a slashed date with no deadline word before it must end its phrase: "3/4 of the tests" is none.
_PHRASE_END = re.compile(r"\s*(?:$|[^\w\s]|\d|(?:and|y|e|at|a)(?!\w))")
# And what must come right before it: a separator that attaches it to the item ("Fix login, 12/25",
# "(12/25)"). A pair in the middle of words is as often no date: "support 24/7", "chapter 5/20".
_ATTACHED = re.compile(r"[,;:(\[\-–—]\s*$")
# Or a separator right after it ("Fix login 12/25, 2h"), or "on" / "el" naming a day before it ("Deploy on
# 12/25", "Entregar el 20/12"): "support 24/7, ..." stays a ratio, read the other way round (see below).
_ATTACHED_AFTER = re.compile(r"\s*[,;:)\]\-–—]")
_DAY_WORD = re.compile(r"\b(?:on|el)\b")
# A pair near one of these is a ratio ("aspect ratio to 16/9", "la proporción a 4/3"), and one right after
# "of" / "de" names what the title is about ("the notes of 12/15"): no deadline either way.
_RATIO_WORDS = frozenset({"ratio", "aspect", "aspecto", "proporcion", "relacion", "split", "scale", "escala"})
_OF_WORDS = frozenset({"of", "de"})


def _words_before(text: str, end: int, count: int) -> list[str]:
    return re.findall(r"[a-z]+", text[max(0, end - 40) : end])[-count:]


def _slashed(m: re.Match[str], today: dt.date, day_first: bool) -> dt.date | str | None:
    if _RATIO_WORDS.intersection(_words_before(m.string, m.start(1), 3)):
        return None
    if _OF_WORDS.intersection(_words_before(m.string, m.start(), 1)):
        return None
    deadline = _after_deadline_word(m)
    attached = (
        _ATTACHED.search(m.string, max(0, m.start() - 4), m.start())
        or _ATTACHED_AFTER.match(m.string, m.end())
        or _after_deadline_word(m, _DAY_WORD)
    )
    if not deadline and not (_PHRASE_END.match(m.string, m.end()) and attached):
        return None
    first, second = int(m[1]), int(m[2])
    year = m[3] if not m[3] or len(m[3]) == 4 else "20" + m[3]
    day_then_month = _month_day(today, second, first, year)
    month_then_day = _month_day(today, first, second, year)
    as_written = day_then_month if day_first else month_then_day
    days = {d for d in (day_then_month, month_then_day) if isinstance(d, dt.date)}
    if len(days) == 1:
        # Read the other way round ("16/9" in English) a pair is as often a ratio as a date: only a deadline
        # ("by 25/12") makes it one.
        if isinstance(as_written, dt.date) or _after_deadline_word(m, _STRONG_DEADLINE_WORD):
            return days.pop()
        return None
    if days and day_first:
        return day_then_month
    return NO_DAY if deadline else None


def find_dates(folded: str, today: dt.date, *, day_first: bool = False) -> list[DateMatch]:
    """Every due date in ``folded`` (non-overlapping, earlier rules win), with spans incl. lead-ins.

    ``day_first``: "03/04" is April 3 (Spanish), not left unread as March 4 or April 3.
    """
    found: list[DateMatch] = []
    taken: list[tuple[int, int]] = []
    rules = [*_RULES, (_SLASHED, lambda m, today: _slashed(m, today, day_first))]
    for pattern, func in rules:
        for m in pattern.finditer(folded):
            if any(m.start() < end and start < m.end() for start, end in taken):
                continue
            value = func(m, today)  # type: ignore[operator]
            if isinstance(value, dt.date) and value < today:
                # Only a date with its year can be past ("by 2020-01-01"): after a deadline word surely a
                # typo, reported as "due yesterday" is; elsewhere the title's ("the 2020-01-01 release").
                value = NO_DAY if _after_deadline_word(m) else None
            if value is None:
                continue
            found.append(DateMatch(m.start(), m.end(), value if isinstance(value, dt.date) else None))
            taken.append((m.start(), m.end()))
    return sorted(found, key=lambda d: d.start)
