"""The offline proposal parser: deterministic, no network, English and Spanish.

It follows ``shared/data/proposals-dev.md`` rule by rule:

1. The message is cut into sentences (new lines, bullets ``- * •``, numbered lines ``1.`` ``2)``, and
   ``. ! ?``), each sentence into pieces at ``and`` / ``y``, commas, semicolons and spaced dashes.
2. Dates, effort amounts and priority words are found first (:mod:`offline_dates`,
   :mod:`offline_effort`, :mod:`offline_priority`) and never split; a piece left with only such words
   (or filler like "should take", "es") is not an item, its words annotate the item before it, the
   sentence, or - when the whole sentence has no item - the whole message.
3. An annotation in brackets, or on an item other than the sentence's last, is that item's. One on the
   last item ("... and set up CI by Monday", "... and archive old campaigns, 1 day") is the whole
   sentence's when no other item in the sentence has its own of that kind: a date or priority then
   applies to every item, an amount is a total split evenly. "N each" gives every item N.
4. A conjunct without its own verb borrows the previous one's ("add login page and user dashboard").
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from shared.ai.offline_dates import find_dates
from shared.ai.offline_effort import find_efforts
from shared.ai.offline_priority import find_priorities
from shared.ai.offline_text import fold, is_spanish, starts_with_verb, verb_phrase, wordset
from shared.ai.proposal import (
    MAX_ITEM_HOURS,
    MAX_ITEMS,
    MAX_LEFT_OUT,
    MAX_LEFT_OUT_CHARS,
    Proposal,
    ProposalError,
    ProposalItem,
)
from shared.words import trimmed

MAX_INPUT_CHARS = 10_000
MAX_TITLE_CHARS = 80

_FILLER = wordset(
    """
    should take takes taking took will would it its it's itll ll is are be been about total in of work
    effort each one ones estimate estimated est the a an and y e for by on at to do done need needs needed
    must have has please pls plz por favor thanks thank you gracias also too tambien ademas just only es
    son sera seria debe deberia tomar toma tomara lleva llevara llevar en de del el la los las un una unos
    unas para que hay tenemos necesitamos necesito todo todos all both ambos ambas everything task tasks
    item items thing things cosa cosas tarea tareas deadline due date fecha limite plazo entrega priority
    prioridad this that these those esto eso estos esas ok okay hi hello hola hey so then luego entonces
    we i you our my is there approx around roughly overall altogether hours hour horas hora minutes mins
    min days day dias dia asap urgent urgente no yes si sure vale listo ready finished terminado done
    with con before antes after despues until hasta same mismo misma as como well bien
    good morning afternoon evening night team everyone everybody guys folks y'all hope hoping you're youre
    are doing going great fine nice have lovely weekend cheers regards best buenos buenas buen dias tardes
    noches equipo saludos espero esperamos esten estes estan estas tengan tengas feliz abrazo chicos gente
    """
)
# A greeting, and whom it greets, before the task ("Good morning team, fix login"): a greeting alone is
# filler, but one with no comma after it would otherwise open the title.
_GREETING = (
    r"(?:hi|hey|hello|hiya|hola|buenas|saludos|good\s+(?:morning|afternoon|evening|day)|"
    r"buen(?:os|as)?\s+(?:dias?|tardes|noches))"
    r"(?:\s+(?:team|all|everyone|everybody|guys|folks|y'all|equipo|a\s+todos|todos|chicos|gente))?"
)

# A request put as a question ("Is it possible to add dark mode?"): a task, its asking left out of the title.
# "What about" / "how about" suggest work only before an action or "a" thing ("what about adding dark mode",
# "how about an export"); before "the" they ask how it goes ("what about the login page?").
_ASKING = (
    r"(?:is|would)\s+it\s+be\s+possible\s+to|is\s+it\s+possible\s+to|any\s+chance\s+(?:you|we)\s+"
    r"(?:can|could)|(?:do|does)\s+(?:you|we|anyone)\s+have\s+time\s+to|do\s+you\s+mind|"
    r"(?:are|is)\s+(?:you|we|anyone|someone)\s+able\s+to|(?:would|will|could)\s+(?:you|we)\s+be\s+able\s+to|"
    r"is\s+there\s+(?:a|any)\s+(?:way|chance)\s+to|"
    r"(?:what|how)\s+about(?:\s+(?:an?|some)(?=\s)|(?=\s+[a-z]+ing(?![\w'])))|"
    r"(?:es|seria)\s+posible|se\s+puede|se\s+podria|(?:hay|habria)\s+que|hay\s+(?:forma|manera|modo)\s+de"
)
_ASKING_FIRST = re.compile(r"^[¿\s]*(?:" + _ASKING + r")(?![\w'])")

_LEADIN = re.compile(
    r"^(?:(?:"
    + _ASKING
    + r"|please|pls|plz|kindly|por\s+favor|also|then|and|plus|y|e|luego|tambien|ademas|ok(?:ay)?|so|"
    + _GREETING
    + r"|(?:we|i|you)\s+(?:really\s+|also\s+)?(?:need|have|must|should|want|would\s+like|'d\s+like)"
    r"(?:\s+to)?|needs?\s+to|have\s+to|has\s+to|must|should|let'?s|can\s+you|could\s+you|would\s+you|"
    r"can\s+we|could\s+we|we'?ll|i'?ll|we\s+will|i\s+will|remember\s+to|don'?t\s+forget\s+to|"
    r"make\s+sure\s+to|try\s+to|going\s+to|gonna|(?:nosotros\s+)?necesitamos|necesito|necesitan?|"
    r"hay\s+que|tenemos\s+que|tengo\s+que|tienes\s+que|(?:me|nos)\s+gustaria|quiero|queremos|quisiera|"
    r"podrias|puedes|pueden|podemos|vamos\s+a|voy\s+a|recuerda|no\s+olvides|favor\s+de|to\s*-?\s*do|"
    r"todo(?=\s*:)|tasks?(?=\s*:)|tareas?(?=\s*:))(?![\w'])[\s,:]*)+"
)
# A question asks about work, it does not name any ("what's the status of login?"); a request put as one
# starts with "can you" / "puedes" instead and stays a task.
_QUESTION = re.compile(
    r"^[¿\s]*(?:what|what's|whats|how|how's|hows|when|where|why|who|which|whose|is|isn't|are|aren't|was|"
    r"were|does|doesn't|did|didn't|any|anything|(?:do|have)\s+(?:you|we|they|i)|que|como|cuando|donde|"
    r"por\s+que|quien|quienes|cual|cuales|cuanto|cuanta|cuantos|cuantas|hay|ya|esta|estan)(?![\w'])"
)

_TRAILING_WORDS = wordset(
    "by on in for at to of with before until para en de del el la por con antes hasta and y the a an "
    "due deadline around about approx please pls thanks gracias too also tambien"
)
_SEPARATOR = re.compile(
    r"\s*(?:;|,(?:\s*(?:and\s+then|and|y\s+luego|y\s+despues|y|e|then|luego|plus|also|as\s+well\s+as)(?=\s))?|"
    r"(?<=\s)(?:and\s+then|and\s+also|and|y\s+luego|y\s+despues|y\s+tambien|y|e|then|luego|as\s+well\s+as|"
    r"plus|&|\+|[-–—]|•|·)(?=\s))\s*"
)
_ABBREVIATIONS = wordset(
    "approx aprox e.g i.e eg ie vs est ca etc no nº sr dr mr mrs ms st jan feb mar apr jun jul aug sep sept "
    "oct nov dec ene abr ago dic a.s.a.p p.m a.m min mins hr hrs"
)
_BULLET = re.compile(r"^\s*(?:[-*•·▪‣◦>+]+|\(?\d{1,3}[.)]|\(?[a-z][)])\s+", re.IGNORECASE)
_INLINE_NUMBER = re.compile(r"(?:^|(?<=\s))\(?\d{1,2}[)]\s+|(?<=[\s;,])\d{1,2}\.\s+(?=[^\d\s])")
_INLINE_BULLET = re.compile(r"\s+[•·▪‣◦]\s+")
_BUG = re.compile(
    r"\b(?:bugs?|fix(?:es)?|errors?|crash(?:es)?|broken|arreglar|arregla|corregir|corrige|fallos?|fallas?)\b"
)
_MEETING = re.compile(r"\b(?:call|meet|meeting|sync|llamar|llama|reunion|reunirse|llamada)\b")
_DOCS = re.compile(r"\b(?:docs?|documentation|document|readme|documentar|documentacion|write-?up)\b")
_RESEARCH = re.compile(r"\b(?:research|investigate|explore|investigar|analizar|spike|evaluate|evaluar)\b")
_FEATURE = re.compile(
    r"\b(?:add|build|create|implement|agregar|agrega|crear|crea|implementar|construir|desarrollar|anadir|anade)\b"
)


@dataclass
class _Note:
    """One date, effort or priority found in a sentence (offsets relative to the sentence)."""

    # "unread": an amount or date no item can hold ("0h", "31/02"), kept out of titles and reported.
    kind: str  # "date" | "effort" | "priority" | "unread"
    start: int
    end: int
    value: Any
    each: bool = False
    total: bool = False
    bracketed: bool = False
    leading: bool = False
    keep_text: bool = False
    text: str = ""  # an amount's words, reported as left out when no item can hold its hours


@dataclass
class _Piece:
    start: int
    end: int
    notes: list[_Note]
    title: str
    is_item: bool


@dataclass
class _Draft:
    title: str
    description: str
    has_verb: bool
    notes: list[_Note] = field(default_factory=list)
    hours: float | None = None
    due: dt.date | None = None
    priority: str | None = None


@dataclass
class _Scope:
    notes: list[_Note] = field(default_factory=list)


def _words(folded: str) -> list[str]:
    return re.findall(r"[a-z0-9ñ]+(?:'[a-z]+)?", folded)


def _is_filler(folded: str) -> bool:
    """True when nothing but filler, numbers and symbols is left: the piece is not a work item."""
    return all(word in _FILLER or word.isdigit() or len(word) < 2 for word in _words(folded))


# Asking for help and nothing more ("Hello, can you help?") names no work: "help" is filler only when the
# whole sentence is, so "Can you help with the login bug?" stays a task and "Fix login and help" keeps it.
_ASKING_FOR_HELP = wordset("help can could me us")


def _only_asks_for_help(sentence: str) -> bool:
    """A sentence of greetings, thanks and "can you help" alone, which names no work item."""
    words = _words(fold(sentence))
    return "help" in words and all(_is_filler(word) or word in _ASKING_FOR_HELP for word in words)


def _is_question(sentence: str) -> bool:
    """A question about the work (not a request put as one), which names no work item."""
    asked = sentence.rstrip().endswith("?") or sentence.lstrip().startswith("¿")
    folded = fold(sentence)
    return asked and bool(_QUESTION.match(folded)) and not _ASKING_FIRST.match(folded)


def _sentences(text: str) -> list[str]:
    """New lines, bullets, numbered lines and sentence ends, in order; empty parts dropped."""
    out: list[str] = []
    for raw_line in text.split("\n"):
        line = raw_line.strip()
        if not line:
            continue
        numbered = bool(re.match(r"^\(?\d{1,2}[.)]\s", line))
        line = _BULLET.sub("", line, count=1)
        parts = _INLINE_BULLET.split(line)
        if numbered or re.search(r"(?:^|\s)\(?1\)\s", raw_line):
            parts = [p for part in parts for p in _INLINE_NUMBER.split(part)]
        for part in parts:
            out.extend(_split_sentence_ends(part.strip()))
    return [s for s in out if s.strip()]


# Starts only where a run of ends starts (the lookbehind) and takes it whole (possessive): tried from every
# character of a long run, as a plain ``[.!?]+`` is, each try walked the rest of the run, quadratic (5,000
# "?!" in a message took 0.8 s). A match could only start where the run does anyway: the same matches.
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]++(?=\s+\S)")


def _split_sentence_ends(line: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    folded = fold(line)  # once, as in _pieces
    for m in _SENTENCE_END.finditer(line):
        before = _word_ending_at(folded, start, m.start())
        if m.group(0) == "." and before and (before in _ABBREVIATIONS or before.isdigit()):
            continue
        pieces.append(line[start : m.end()])
        start = m.end()
    pieces.append(line[start:])
    return [p.strip() for p in pieces if p.strip()]


def _word_ending_at(text: str, start: int, end: int) -> str:
    """The run of word characters, dots and º that ends at ``end`` (not before ``start``): walked back from
    ``end``, so its cost is the word's length. A search for ``[\\w.º]+$`` in ``text[start:end]`` tried every
    character of the slice, and the slice grows while dots after abbreviations are passed over."""
    if end > start and text[end - 1] == "\n":
        end -= 1  # as ``$`` matched before a newline that ends the text
    begin = end
    while begin > start and (text[begin - 1].isalnum() or text[begin - 1] in "_.º"):
        begin -= 1
    return text[begin:end]


def _bracket_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\([^()]*\)|\[[^\[\]]*\]", text)]


def _inside(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(start <= span[0] and span[1] <= end for start, end in spans)


def _overlaps(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= pos < end for start, end in spans)


def _find_notes(sentence: str, folded: str, today: dt.date, spanish: bool) -> list[_Note]:
    notes: list[_Note] = []
    for d in find_dates(folded, today, day_first=spanish):
        if d.value is None:
            notes.append(_Note("unread", d.start, d.end, sentence[d.start : d.end]))
            continue
        notes.append(_Note("date", d.start, d.end, d.value))
    taken = [(n.start, n.end) for n in notes]
    for e in find_efforts(folded, taken):
        if e.hours is None:
            notes.append(_Note("unread", e.start, e.end, sentence[e.start : e.end]))
            continue
        text = sentence[e.start : e.end]
        notes.append(_Note("effort", e.start, e.end, e.hours, each=e.each, total=e.total, text=text))
    taken = [(n.start, n.end) for n in notes]
    for p in find_priorities(folded, taken):
        notes.append(_Note("priority", p.start, p.end, p.level))
    brackets = _bracket_spans(sentence)
    for note in notes:
        note.bracketed = _inside((note.start, note.end), brackets)
    return sorted(notes, key=lambda n: n.start)


def _cut_points(sentence: str, folded: str, protected: list[tuple[int, int]]) -> list[tuple[int, int]]:
    cuts: list[tuple[int, int]] = []
    for m in _SEPARATOR.finditer(folded):
        inner = m.group(0).strip()
        at = m.start() + m.group(0).index(inner[0]) if inner else m.start()
        if _overlaps(at, protected):
            continue
        if (
            inner.startswith(",")
            and 0 < at < len(folded) - 1
            and folded[at - 1].isdigit()
            and folded[at + 1].isdigit()
        ):
            continue
        cuts.append((m.start(), m.end()))
    return cuts


def _header_cut(sentence: str, folded: str, protected: list[tuple[int, int]], spanish: bool) -> int | None:
    """The end of a leading "Header:" that is not itself an item ("Urgent:", "Tasks for Friday:")."""
    for m in re.finditer(r":(?=\s|$)", folded):
        if _overlaps(m.start(), protected):
            continue
        left = _strip_notes(sentence[: m.start()], folded[: m.start()], protected)
        left_folded = fold(left)
        words = _words(_LEADIN.sub("", left_folded.strip()))
        if _is_filler(left_folded) or not starts_with_verb(words, spanish, initial=True):
            return m.end()
        return None
    return None


def _strip_notes(
    text: str, folded: str, spans: list[tuple[int, int]], keep: list[tuple[int, int]] = ()
) -> str:  # type: ignore[assignment]
    chars = list(text)
    for start, end in spans:
        if (start, end) in keep:
            continue
        for i in range(max(start, 0), min(end, len(chars))):
            chars[i] = " "
    return "".join(chars)


def _clean_title(text: str) -> str:
    text = re.sub(r"[(\[]\s*[)\]]", " ", text)
    text = " ".join(text.split())
    for _ in range(6):
        before = text
        text = text[len(_LEADIN.match(fold(text))[0]) :] if _LEADIN.match(fold(text)) else text
        # By hand, not patterns anchored at the end: those are quadratic on a run inside the title.
        text = trimmed(text, keep_first="_(#@\"'¿¡", keep_last="_)\"'%?!").strip()
        text = text.lstrip("¿¡").rstrip("?!").strip()
        words = text.split()
        while words and fold(words[-1]).strip(".,;:") in _TRAILING_WORDS:
            words.pop()
        text = " ".join(words)
        if text == before:
            break
    return text


def _pieces(sentence: str, today: dt.date, spanish: bool) -> list[_Piece]:
    folded = fold(sentence)
    notes = _find_notes(sentence, folded, today, spanish)
    note_spans = [(n.start, n.end) for n in notes]
    protected = note_spans + _bracket_spans(sentence)
    bounds: list[tuple[int, int, bool]] = []  # start, end, forced-not-item
    offset = 0
    header_end = _header_cut(sentence, folded, protected, spanish)
    if header_end is not None:
        bounds.append((0, header_end, True))
        offset = header_end
    cursor = offset
    for start, end in _cut_points(sentence, folded, protected):
        if start < offset:
            continue
        bounds.append((cursor, start, False))
        cursor = end
    bounds.append((cursor, len(sentence), False))

    pieces: list[_Piece] = []
    for start, end, forced in bounds:
        if end <= start:
            continue
        own = [n for n in notes if start <= n.start < end]
        local = [(n.start - start, min(n.end, end) - start) for n in own]
        text = sentence[start:end]
        # Title words present before / after each note decide "leading" and whether a priority word in
        # the middle of a title ("fix critical bug") stays in it. Folded once: fold keeps offsets, and
        # folding per note made a piece of many notes quadratic (seconds for 1,400 "urgent").
        rest = fold(_strip_notes(text, fold(text), local))
        for note, (s, e) in zip(own, local, strict=True):
            before, after = rest[:s], rest[e:]
            word_before = not _is_filler(_LEADIN.sub("", before.strip()))
            word_after = not _is_filler(after)
            note.leading = not word_before
            note.keep_text = note.kind == "priority" and word_before and word_after and not note.bracketed
        keep = [span for note, span in zip(own, local, strict=True) if note.keep_text]
        title = _clean_title(_strip_notes(text, fold(text), local, keep))
        leftover = fold(title)
        is_item = (
            not forced and bool(title) and not _is_filler(leftover) and bool(re.search(r"[^\W\d_]", title))
        )
        pieces.append(_Piece(start, end, own, title, is_item))
    return pieces


def _attach(pieces: list[_Piece], drafts: list[_Draft], sentence_scope: _Scope) -> None:
    """Give each note to its item or to the sentence (rule 3 of the module docstring)."""
    current: _Draft | None = None
    for piece, draft in zip(pieces, _drafts_for(pieces, drafts), strict=True):
        if draft is not None:
            current = draft
            current.notes.extend(piece.notes)
        elif current is None:
            sentence_scope.notes.extend(piece.notes)
        else:
            for note in piece.notes:
                note.leading = False
            current.notes.extend(piece.notes)
    if not drafts:
        return
    for kind in ("date", "effort", "priority"):
        last, first = drafts[-1], drafts[0]
        if not any(n.kind == kind for d in drafts[:-1] for n in d.notes):
            moved = [n for n in last.notes if n.kind == kind and not n.bracketed]
            last.notes = [n for n in last.notes if n not in moved]
            sentence_scope.notes.extend(moved)
        if len(drafts) > 1 and not any(n.kind == kind for d in drafts[1:] for n in d.notes):
            moved = [n for n in first.notes if n.kind == kind and n.leading and not n.bracketed]
            first.notes = [n for n in first.notes if n not in moved]
            sentence_scope.notes.extend(moved)
    for draft in drafts:
        shared = [n for n in draft.notes if n.kind == "effort" and (n.each or n.total)]
        draft.notes = [n for n in draft.notes if n not in shared]
        sentence_scope.notes.extend(shared)


def _drafts_for(pieces: list[_Piece], drafts: list[_Draft]) -> list[_Draft | None]:
    it = iter(drafts)
    return [next(it) if piece.is_item else None for piece in pieces]


def _holdable(hours: float) -> float | None:
    """``hours`` when an item can hold it, else None (not stated): what rounds to 0 h in the item's two
    decimals (a tenth of a minute, 0.001 h each, a tiny total shared out) would be stored as 0, and an
    item's amounts added up can pass :data:`MAX_ITEM_HOURS`, which its validation would refuse."""
    return hours if round(hours, 2) > 0 and hours <= MAX_ITEM_HOURS else None


def _resolve_own(draft: _Draft) -> list[_Note]:
    """Set the item's own hours, date and priority; return the amounts it cannot hold, to be reported."""
    efforts = [n for n in draft.notes if n.kind == "effort"]
    dropped: list[_Note] = []
    if efforts:
        draft.hours = _holdable(round(sum(n.value for n in efforts), 2))
        if draft.hours is None:
            dropped = efforts
    dates = [n.value for n in draft.notes if n.kind == "date"]
    if dates:
        draft.due = dates[0]
    levels = [n.value for n in draft.notes if n.kind == "priority"]
    if levels:
        draft.priority = "high" if "high" in levels else levels[0]
    return dropped


def _apply_scope(scope: _Scope, drafts: list[_Draft]) -> list[_Note]:
    """Fill what items lack from a sentence- or message-wide note: date, priority, "each", totals; return
    the amounts no item can hold, to be reported."""
    if not drafts:
        return []
    dropped: list[_Note] = []
    dates = [n.value for n in scope.notes if n.kind == "date"]
    levels = [n.value for n in scope.notes if n.kind == "priority"]
    each = [n for n in scope.notes if n.kind == "effort" and n.each]
    totals = [n for n in scope.notes if n.kind == "effort" and not n.each]
    for draft in drafts:
        if dates and draft.due is None:
            draft.due = dates[0]
        if levels and draft.priority is None:
            draft.priority = "high" if "high" in levels else levels[0]
        if each and draft.hours is None:
            draft.hours = _holdable(each[0].value)
            if draft.hours is None:
                dropped = each[:1]
    if totals:
        total = round(sum(n.value for n in totals), 2)
        missing = [d for d in drafts if d.hours is None]
        known = sum(d.hours for d in drafts if d.hours is not None)
        remainder = total if len(missing) == len(drafts) else total - known
        if missing and remainder > 0:
            # Four decimals keep an uneven split summing to the stated total (4h over 3 items).
            share = _holdable(round(remainder / len(missing), 4))
            for draft in missing:
                draft.hours = share
            if share is None:
                dropped.extend(totals)
    return dropped


def _title_with_verb(draft_title: str, verb: str) -> str:
    first = draft_title.split(" ", 1)[0]
    # Lower-case the borrowed object's first word unless it looks like a name or acronym ("CI", "API").
    if first[:1].isupper() and not first.isupper() and len(first) > 1:
        draft_title = draft_title[0].lower() + draft_title[1:]
    return f"{verb} {draft_title}"


def _capitalise(title: str) -> str:
    if len(title) > MAX_TITLE_CHARS:
        cut = title[:MAX_TITLE_CHARS].rsplit(" ", 1)[0]
        title = cut if cut else title[:MAX_TITLE_CHARS]
    return title[:1].upper() + title[1:]


def _item_type(title: str) -> str:
    folded = fold(title)
    for kind, pattern in (("bug", _BUG), ("meeting", _MEETING), ("docs", _DOCS), ("research", _RESEARCH)):
        if pattern.search(folded):
            return kind
    return "feature" if _FEATURE.search(folded) else "task"


def _hours_text(hours: float) -> str:
    return f"{round(hours, 2):g}h"


def _summary(items: list[ProposalItem], total: float | None, spanish: bool) -> str:
    count = len(items)
    if spanish:
        parts = [f"{count} tarea" + ("s" if count != 1 else "")]
    else:
        parts = [f"{count} item" + ("s" if count != 1 else "")]
    known = [i.estimated_hours for i in items if i.estimated_hours is not None]
    if total is not None:
        parts.append(_hours_text(total) + (" en total" if spanish else " total"))
    elif known:
        parts.append(_hours_text(round(sum(known), 2)) + (" estimadas" if spanish else " estimated"))
    dates = sorted({i.due_date for i in items if i.due_date is not None})
    if len(dates) == 1:
        parts.append(("para el " if spanish else "due ") + dates[0].isoformat())
    elif dates:
        parts.append(
            ("entre " if spanish else "due ")
            + dates[0].isoformat()
            + (" y " if spanish else " to ")
            + dates[-1].isoformat()
        )
    return ", ".join(parts)


def _confidence(drafts: list[_Draft], text: str) -> float:
    score = 0.55
    if any(d.hours is not None for d in drafts):
        score += 0.1
    if all(d.hours is not None for d in drafts):
        score += 0.1
    if any(d.due is not None for d in drafts):
        score += 0.1
    score -= 0.1 * min(2, sum(not d.has_verb for d in drafts))
    if len(text) > 1000 or len(drafts) > 10:
        score -= 0.15
    return round(min(0.95, max(0.1, score)), 2)


_MAX_QUOTED = 3


def _left_out_texts(unread: list[str]) -> tuple[str, ...]:
    """The amounts and dates read but left out ("0h", "due 31/02"), as the sender wrote them: taken out of
    the titles, they would otherwise be lost without a word, and the sender can correct them in the review."""
    clipped = (" ".join(text.split())[:MAX_LEFT_OUT_CHARS].strip() for text in unread)
    return tuple(text for text in clipped if text)[:MAX_LEFT_OUT]


def _left_out(left_out: tuple[str, ...], spanish: bool) -> str:
    """The summary's note of what was left out, for the host application (the confirmation says it too)."""
    quoted = [f"“{text}”" for text in left_out[:_MAX_QUOTED]]
    if not quoted:
        return ""
    more = ", …" if len(left_out) > _MAX_QUOTED else ""
    lead = "; no entendido, no incluido: " if spanish else "; not understood, left out: "
    return lead + ", ".join(quoted) + more


def parse_offline(text: str, today: dt.date) -> Proposal:
    """Turn free text into a :class:`Proposal`; raise :class:`ProposalError` when it names no work item."""
    if not isinstance(text, str):
        raise ProposalError("the message has no text")
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")[:MAX_INPUT_CHARS]
    text = "".join(ch if ch == "\n" or unicodedata.category(ch)[0] != "C" else " " for ch in text)
    if not text.strip():
        raise ProposalError("the message is empty: describe the work, e.g. “Fix the login bug by Friday, 2h”")
    spanish = is_spanish(text)
    message_scope = _Scope()
    drafts: list[_Draft] = []
    unread: list[str] = []
    for sentence in _sentences(text):
        if _is_question(sentence) or _only_asks_for_help(sentence):
            continue
        pieces = _pieces(sentence, today, spanish)
        unread.extend(n.value for piece in pieces for n in piece.notes if n.kind == "unread")
        sentence_drafts: list[_Draft] = []
        verb = ""
        for piece in pieces:
            if not piece.is_item:
                continue
            words_f = _words(fold(piece.title))
            initial = not sentence_drafts
            has_verb = starts_with_verb(words_f, spanish, initial=initial)
            title = piece.title
            if has_verb:
                verb = verb_phrase(words_f, title.split())
            elif verb and fold(verb.split()[0]) != (words_f[:1] or [""])[0]:
                title = _title_with_verb(title, verb)
                has_verb = True
            sentence_drafts.append(_Draft(_capitalise(title), sentence.strip()[:300], has_verb))
        if not sentence_drafts:
            message_scope.notes.extend(n for piece in pieces for n in piece.notes)
            continue
        sentence_scope = _Scope()
        _attach(pieces, sentence_drafts, sentence_scope)
        # Hours no item can hold (two amounts past MAX_ITEM_HOURS, a tenth of a minute) are reported
        # with the amounts read but left out, not dropped without a word.
        for draft in sentence_drafts:
            unread.extend(n.text for n in _resolve_own(draft))
        unread.extend(n.text for n in _apply_scope(sentence_scope, sentence_drafts))
        drafts.extend(sentence_drafts)
    if not drafts:
        raise ProposalError(
            "no work item found: name what to do, e.g. “Add login page and user dashboard by Friday, 8 hours”"
        )
    drafts = drafts[:MAX_ITEMS]
    unread.extend(n.text for n in _apply_scope(message_scope, drafts))
    items = [
        ProposalItem(
            type=_item_type(d.title),
            title=d.title,
            description=d.description,
            estimatedHours=d.hours,
            dueDate=d.due,
            priority=d.priority or "medium",
        )
        for d in drafts
    ]
    hours = [i.estimated_hours for i in items]
    total = round(sum(h for h in hours if h is not None), 2) if all(h is not None for h in hours) else None
    left_out = _left_out_texts(unread)
    return Proposal(
        summary=_summary(items, total, spanish) + _left_out(left_out, spanish),
        items=items,
        totalEstimatedHours=total,
        confidence=_confidence(drafts, text),
        leftOut=left_out,
    )
