"""Effort amounts (estimatedHours) in English and Spanish.

Rules (``shared/data/proposals-dev.md``): minutes (min, mins, minutes, minutos), hours (h, hr, hrs,
hour(s), hora(s)), days of work (day(s), día(s); one day = 8 hours), half a day / medio día = 4 hours.
Hedges (about, around, roughly, approx., ~, unas, unos, aproximadamente) are part of the span and ignored.
Short forms users write: "1d" is a day (only where no word follows, so "3d viewer" stays a title, and not
after "in" / "to" / "en" / "de" ..., so "render in 3d" does too, nor right after its verb or "it": "Add 3d",
"Make it 3d"), "2h30" is 2 hours 30 minutes (but "at 10h30" or "at 9h" is a time of day), a range ("2-3h") its
upper bound, and a dash stuck to an amount ("Fix login -3h") attaches it as a spaced dash does: no effort is
negative. An amount no item can hold (0h, more than ``MAX_ITEM_HOURS``) is still found, with no hours, so that
it is taken out of the title and reported rather than kept as title text. A trailing "each" / "cada uno" marks
an amount every item gets; "total" / "en total" (or a leading "should take" / "llevará") marks an amount for
the whole message. "in N days" is a due date, not effort: :mod:`shared.ai.offline_dates` claims it first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.ai.proposal import MAX_ITEM_HOURS

HOURS_PER_DAY = 8.0

_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "un": 1, "uno": 1, "una": 1, "two": 2, "dos": 2, "three": 3, "tres": 3,
    "four": 4, "cuatro": 4, "five": 5, "cinco": 5, "six": 6, "seis": 6, "seven": 7, "siete": 7,
    "eight": 8, "ocho": 8, "nine": 9, "nueve": 9, "ten": 10, "diez": 10, "eleven": 11, "once": 11,
    "twelve": 12, "doce": 12, "fifteen": 15, "quince": 15, "twenty": 20, "veinte": 20,
    "thirty": 30, "treinta": 30, "forty": 40, "cuarenta": 40, "forty-five": 45, "cuarenta y cinco": 45,
    "sixty": 60, "sesenta": 60, "ninety": 90, "noventa": 90, "a couple of": 2, "couple of": 2,
    "a couple": 2, "a few": 3, "un par de": 2, "half an": 0.5, "half a": 0.5, "media": 0.5, "medio": 0.5,
}  # fmt: skip

# At most eight hedges in a row: the pattern is tried from every word of a run, to its end, so a message
# of hedges only took seconds (quadratic).
_HEDGE = (
    r"(?:(?:about|around|roughly|approx\.?|approximately|aprox\.?|aproximadamente|~|unas|unos|"
    r"cerca\s+de|alrededor\s+de|mas\s+o\s+menos|maybe|perhaps|like|circa|ca\.|est\.?|estimated|"
    r"estimate:?|estimado:?|some|just|only|solo|at\s+most|at\s+least|max\.?|up\s+to|hasta|"
    r"a\s+total\s+of|un\s+total\s+de|total(?:\s*:)?|en\s+total|in\s+total|effort(?:\s*:)?|"
    r"esfuerzo(?:\s*:)?)\s*){0,8}"
)
_LEAD = (
    r"(?:(?:(?:it\s*(?:'|’)?ll|it\s+will|will|should|would|might|may|could|it\s+should|this\s+should)\s+)?"
    r"(?:takes?|taking|need|needs|requires?|cost|last)\s+|(?:deberia|debe|va\s+a)\s+(?:tomar|llevar)\s+|"
    r"(?:lleva|llevara|tomara|toma|tardara|tarda|requiere|son|es)\s+|(?:in|for|en|durante|de)\s+)?"
)
_NUM_WORDS = "|".join(re.escape(w) for w in sorted(_NUMBER_WORDS, key=len, reverse=True))
_NUM = r"(\d+(?:[.,]\d+)?|\d+/\d+|" + _NUM_WORDS + r")"
_UNITS = {
    "minutes": r"min(?:ute)?s?\.?|minutos?|m(?=[\s,.;)]|$)",
    "hours": r"h(?:ou)?rs?\.?|hours?|horas?|hs\.?|h",
    # A bare "d" only where no other word follows ("1d", "2d, ...", "1d and ..."): "3d viewer" is no amount.
    "days": r"days?|dias?|jornadas?|d(?=\s*(?:$|[^\w\s]|(?:and|y|e|each|total|cada)(?![\w])))",
    "weeks": r"weeks?|wks?|semanas?",
}
_UNIT = r"(" + "|".join(_UNITS.values()) + r")"
_TAIL = (
    r"(?:\s+(?:of\s+(?:work|effort|dev(?:elopment)?)|de\s+(?:trabajo|esfuerzo|desarrollo)|work|"
    r"(?:en\s+)?total|in\s+total|overall|altogether|combined|en\s+conjunto|"
    r"(?:for\s+)?each(?:\s+(?:one|item|task))?|apiece|per\s+(?:item|task)|cada\s+un[oa]|"
    r"(?:por|para)\s+(?:cada\s+)?(?:tarea|item|una|uno)|c/u))*"
)
# A range ("2-3h", "2 to 3 hours", "2 a 3 horas") is read as its upper bound, the number the unit follows:
# proposals-dev.md has no ranges, and the larger amount is the safe estimate. A spaced dash is no range
# ("Fix issue 42 - 3h" is 3 hours): it attaches an amount to an item. One that does not rise, or follows
# "from", is a change ("from 10 to 5 min"), no estimate at all (``_is_change``).
_RANGE_FROM = r"(?:\d+(?:[.,]\d+)?(?:\s*(?:" + "|".join(_UNITS.values()) + r"))?(?:[-–—]|\s+(?:to|a)\s+))?"
_AMOUNT = _RANGE_FROM + _NUM + r"\s*-?\s*" + _UNIT
_SPECIAL = (
    r"(?P<half_day>(?:a\s+)?half\s*(?:a\s+|-\s*)?day|medio\s+dia|media\s+jornada)|"
    r"(?P<and_half>(?:(?:an?|one|1|una)\s+)?(?:hour|hora)\s+(?:and\s+a\s+half|y\s+media))|"
    r"(?P<half_hour>(?:a\s+)?half\s+(?:an\s+)?hour|media\s+hora)|"
    r"(?P<hours_minutes>\d{1,5}\s*h[0-5]\d)"
)
_PATTERN = re.compile(
    r"(?<![\w#-])"
    + _LEAD
    + _HEDGE
    + r"-?"
    + r"(?:"
    + _SPECIAL
    + r"|(?P<amounts>"
    + _AMOUNT
    + r"(?:\s*(?:,?\s*and\s+|y\s+)?"
    + _NUM
    + r"\s*"
    + _UNIT
    + r")*))"
    + r"(?![\w])"
    + _TAIL
    + r"(?![\w])"
)
_ONE_AMOUNT = re.compile(_AMOUNT)
# A range's first amount (its unit, when it has one, before the dash or "to"), to compare with its second.
_RANGE_START = re.compile(
    r"(\d+(?:[.,]\d+)?)(?:\s*(" + "|".join(_UNITS.values()) + r"))?(?:[-–—]|\s+(?:to|a)\s+)"
)
_FROM_BEFORE = re.compile(r"(?<![\w])(?:from|desde)\s*$")
# Lower-case text cannot tell "3d" (days) from "3D": after one of these it is the dimension ("render in 3d",
# "convert to 2d", "visor de 3d"); elsewhere ("Fix login 1d") a day.
_DIMENSION_AFTER = frozenset({"in", "into", "to", "as", "en", "a", "al", "de"})
# Nor is a bare "3d" right after its verb or "it" days: it is what the verb acts on ("Add 3d", "Support 2d and
# 3d rendering", "Make it 3d"). Only after a title ("Fix login 1d"), a separator (", 2d", "(2d)", "-2d") or a
# lead-in or hedge ("takes 2d", "about 2d") is it an estimate.
_OBJECT_PRONOUNS = frozenset({"it", "them", "this", "that", "lo", "la", "los", "las"})
_COURTESY = frozenset({"please", "pls", "plz", "kindly", "also", "just", "so", "por", "favor", "tambien"})
_CLAUSE_START = re.compile(r"[,;:(\[\-–—]|(?<![\w])(?:and|y|e|then|luego|plus)(?![\w])")
_EACH = re.compile(r"\b(?:each|apiece|per\s+(?:item|task)|cada|c/u)\b|(?:por|para)\s+(?:tarea|item)")
_TOTAL = re.compile(
    r"\b(?:total|overall|altogether|combined|en\s+conjunto)\b|^(?:(?:it\s*(?:'|’)?ll|it\s+will|will|should|"
    r"would|it\s+should|this\s+should|deberia|debe|va\s+a)\s+)?(?:take|takes|tomar|llevar|lleva|llevara|tomara)\b"
)


@dataclass(frozen=True)
class EffortMatch:
    start: int
    end: int
    hours: float | None  # None: an amount no item can hold (0h, 99999h), reported instead of kept
    each: bool = False
    total: bool = False


def _number(text: str) -> float:
    text = text.strip()
    if "/" in text:
        top, bottom = text.split("/", 1)
        return float(top) / float(bottom) if float(bottom) else 0.0
    if text in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[text])
    return float(text.replace(",", "."))


def _unit_hours(unit: str) -> float:
    for name, pattern in _UNITS.items():
        if re.fullmatch(pattern, unit):
            return {"minutes": 1 / 60, "hours": 1.0, "days": HOURS_PER_DAY, "weeks": 5 * HOURS_PER_DAY}[name]
    return 1.0


def _hours(m: re.Match[str]) -> float:
    if m["half_day"]:
        return HOURS_PER_DAY / 2
    if m["half_hour"]:
        return 0.5
    if m["and_half"]:
        return 1.5
    if m["hours_minutes"]:
        hours, minutes = re.fullmatch(r"(\d+)\s*h(\d\d)", m["hours_minutes"]).groups()  # type: ignore[union-attr]
        return int(hours) + int(minutes) / 60
    total = 0.0
    for part in _ONE_AMOUNT.finditer(m["amounts"]):
        total += _number(part[1]) * _unit_hours(part[2])
    return total


# "2h30" after one of these is a time of day ("at 10h30", "a las 10h30", "@ 9h15"), not hours of work: the
# deadline's when a date comes first (offline_dates), else the title's.
_TIME_OF_DAY_BEFORE = re.compile(r"(?:(?<![\w])(?:at|by|a|las?)|@)\s*$")
# So is a bare hour ("9h", "10h") right after "at", "a las" or "@" ("Call client at 9h", "Reunión a las
# 10h"); after "by" or "a" alone it stays an amount ("de 2 a 3h" is a range).
_BARE_HOUR = re.compile(r"(\d{1,2})h")
_BARE_HOUR_BEFORE = re.compile(r"(?:(?<![\w])(?:at|a\s+las?)|@)\s*$")


def _is_time_of_day(m: re.Match[str]) -> bool:
    if m["hours_minutes"]:
        group, before = "hours_minutes", _TIME_OF_DAY_BEFORE
    elif m["amounts"] and (hour := _BARE_HOUR.fullmatch(m["amounts"])) and int(hour[1]) <= 24:
        group, before = "amounts", _BARE_HOUR_BEFORE
    else:
        return False
    return bool(before.search(m.string, max(0, m.start(group) - 12), m.start(group)))


def _is_dimension(m: re.Match[str]) -> bool:
    """Whether the match is a bare "Nd" that names a dimension, not days (see ``_DIMENSION_AFTER`` and
    ``_OBJECT_PRONOUNS``)."""
    if not m["amounts"] or not any(part[2] == "d" for part in _ONE_AMOUNT.finditer(m["amounts"])):
        return False
    before = re.findall(r"[a-z]+", m.string[max(0, m.start("amounts") - 20) : m.start("amounts")])
    if before and before[-1] in _DIMENSION_AFTER:
        return True
    if m.start() < m.start("amounts"):
        return False  # its own lead-in, hedge or stuck dash says estimate
    clause_start = max((c.end() for c in _CLAUSE_START.finditer(m.string, 0, m.start())), default=0)
    words = [w for w in re.findall(r"[a-z']+", m.string[clause_start : m.start()]) if w not in _COURTESY]
    return bool(words) and (len(words) < 2 or words[-1] in _OBJECT_PRONOUNS)


def _is_change(m: re.Match[str]) -> bool:
    """Whether the match is a change from one amount to another, no estimate: a "range" whose first amount
    is not the smaller ("from 10 to 5 min"), or one after "from" / "desde" ("from 5 to 10 min")."""
    if not m["amounts"]:
        return False
    start = _RANGE_START.match(m["amounts"])
    if start is None:
        return False
    if _FROM_BEFORE.search(m.string, max(0, m.start() - 8), m.start()):
        return True
    upper = _ONE_AMOUNT.match(m["amounts"])
    if upper is None:
        return False
    lower = _number(start[1]) * _unit_hours(start[2] or upper[2])
    return lower >= _number(upper[1]) * _unit_hours(upper[2])


def find_efforts(folded: str, taken: list[tuple[int, int]] | None = None) -> list[EffortMatch]:
    """Every effort amount in ``folded`` that does not overlap ``taken`` spans (dates found first); one no
    item can hold has ``hours`` None."""
    taken = taken or []
    found: list[EffortMatch] = []
    for m in _PATTERN.finditer(folded):
        if any(m.start() < end and start < m.end() for start, end in taken):
            continue
        if _is_dimension(m) or _is_time_of_day(m) or _is_change(m):
            continue
        hours = round(_hours(m), 4)
        text = m.group(0)
        found.append(
            EffortMatch(
                m.start(),
                m.end(),
                hours if 0 < hours <= MAX_ITEM_HOURS else None,
                each=bool(_EACH.search(text)),
                total=bool(_TOTAL.search(text)),
            )
        )
    return found
