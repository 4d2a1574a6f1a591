"""Priority words in English and Spanish (``shared/data/proposals-dev.md``).

high: urgent, urgente, ASAP, critical, crítico, high priority, prioridad alta, lo antes posible.
low: low priority, baja prioridad, no rush, sin prisa, when you can, cuando puedas.
Anything else is medium. Low patterns run first so "not urgent" / "no es urgente" is low, not high.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# At most eight in a row: tried from every word of a longer run, to its end, they took seconds (quadratic).
_LEAD = r"(?:(?:it\s*'?s|it\s+is|this\s+is|is|es|son|muy|very|super|really|quite|bastante|kind\s+of)\s+){0,8}"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "low",
        re.compile(
            r"(?<![\w-])"
            + _LEAD
            + r"(?:low[\s-]+priority|priority\s*[:=-]?\s*low|(?:de\s+|con\s+)?baja\s+prioridad|"
            r"prioridad\s*[:=-]?\s*baja|no\s+rush|no\s+hurry|not\s+urgent|no\s+(?:es\s+)?urgente|"
            r"sin\s+(?:prisas?|apuro|urgencia)|no\s+corre\s+prisa|"
            r"when(?:ever)?\s+you\s+(?:can|get\s+(?:a\s+)?(?:chance|time)|have\s+(?:a\s+)?(?:chance|time))|"
            r"cuando\s+(?:puedas|pueda|puedan|tengas\s+tiempo)|nice\s+to\s+have|(?:it\s+)?can\s+wait|"
            r"puede\s+esperar)(?![\w])"
        ),
    ),
    (
        "medium",
        re.compile(
            r"(?<![\w-])(?:medium[\s-]+priority|normal[\s-]+priority|priority\s*[:=-]?\s*(?:medium|normal)|"
            r"prioridad\s*[:=-]?\s*(?:media|normal)|(?:de\s+)?(?:media|normal)\s+prioridad)(?![\w])"
        ),
    ),
    (
        "high",
        re.compile(
            r"(?<![\w-])"
            + _LEAD
            + r"(?:urgent(?:e|ly)?|urgencia|asap|a\.s\.a\.p\.?|critical(?:ly)?|critic[oa]|"
            r"high[\s-]+priority|top[\s-]+priority|priority\s*[:=-]?\s*(?:high|urgent)|"
            r"(?:de\s+|con\s+)?alta\s+prioridad|prioridad\s*[:=-]?\s*(?:alta|maxima|urgente)|"
            r"(?:lo\s+)?(?:antes|mas\s+pronto)\s+posible|cuanto\s+antes|right\s+away|immediately|"
            r"de\s+inmediato|inmediatamente)(?![\w])"
        ),
    ),
]


@dataclass(frozen=True)
class PriorityMatch:
    start: int
    end: int
    level: str


def find_priorities(folded: str, taken: list[tuple[int, int]] | None = None) -> list[PriorityMatch]:
    """Every priority phrase in ``folded`` not overlapping ``taken`` spans, in text order."""
    spans = list(taken or [])
    found: list[PriorityMatch] = []
    for level, pattern in _PATTERNS:
        for m in pattern.finditer(folded):
            if any(m.start() < end and start < m.end() for start, end in spans):
                continue
            found.append(PriorityMatch(m.start(), m.end(), level))
            spans.append((m.start(), m.end()))
    return sorted(found, key=lambda p: p.start)
