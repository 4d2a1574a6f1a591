"""Where each table and key of a TOML document is, by line, so validation errors can name the line.

``tomllib`` gives values without positions. This scanner reads the same text line by line and records
the line of every table header (``[a.b]``, ``[[a.b]]``, with array-of-tables elements numbered as
tomllib numbers them) and of every ``key = value`` that starts a line. That covers what pack authors
write; a key inside an inline table is reported at the line of the key holding the table.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_KEY = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
_PART = re.compile(_BARE_OR_QUOTED)


def _parts(dotted: str) -> list[str]:
    return [part.strip("\"'") for part in _PART.findall(dotted)]


def key_lines(source: str) -> dict[Path, int]:
    """Map each table/key path (as pydantic reports locations) to its 1-based line number."""
    lines: dict[Path, int] = {}
    arrays: dict[Path, int] = {}  # array-of-tables path -> elements seen so far
    table: Path = ()
    multiline: str | None = None  # the closing quotes of a multi-line string we are inside

    def resolve(parts: list[str]) -> list[str | int]:
        # A path through an array of tables goes to its latest element, as TOML defines.
        resolved: list[str | int] = []
        for part in parts:
            resolved.append(part)
            count = arrays.get(tuple(resolved))
            if count:
                resolved.append(count - 1)
        return resolved

    for number, line in enumerate(source.splitlines(), start=1):
        if multiline is not None:
            if line.count(multiline) % 2 == 1:
                multiline = None
            continue
        if match := _ARRAY_HEADER.match(line):
            parts = _parts(match.group(1))
            parent = resolve(parts[:-1])
            path = (*parent, parts[-1])
            index = arrays.get(path, 0)
            arrays[path] = index + 1
            table = (*path, index)
            lines.setdefault(path, number)
            lines[table] = number
            continue
        if match := _TABLE_HEADER.match(line):
            table = tuple(resolve(_parts(match.group(1))))
            lines.setdefault(table, number)
            continue
        if match := _KEY.match(line):
            path = (*table, *_parts(match.group(1)))
            lines.setdefault(path, number)
            value = match.group(2)
            for quotes in ('"""', "'''"):
                if value.lstrip().startswith(quotes) and value.count(quotes) == 1:
                    multiline = quotes
    return lines


def line_of(lines: dict[Path, int], location: Path) -> int | None:
    """The line of ``location``, or of its nearest enclosing key or table that is written in the file."""
    for end in range(len(location), 0, -1):
        found = lines.get(tuple(location[:end]))
        if found is not None:
            return found
    return None
