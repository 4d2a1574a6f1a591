"""Hypothesis strategies shared by the fuzz tests: hostile text, random JSON, and real payloads mutated.

The mutations start from the captured provider payloads under ``tests/data/<provider>/`` so that random
input reaches deep into the parsers (a purely random dict is refused at the envelope and proves little):
a few paths of the real document are deleted or given a value of another JSON type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

DATA = Path(__file__).resolve().parents[2] / "data"

# Bounded so the folder runs in seconds on a busy 2-core machine; no deadline (first example pays imports).
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)

# Every code point class the parsers may meet: controls, surrogates excluded (not valid in JSON text
# a provider sends, and not encodable as UTF-8), combining marks, RTL, emoji, digits of other scripts.
hostile_text = st.one_of(
    st.text(max_size=200),
    st.text(st.characters(codec="utf-8"), max_size=200),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=50),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "whatsapp:",
            "whatsapp:+",
            "+",
            "+1",
            "+14155550123",
            "whatsapp:+14155550123",
            "٠١٢٣٤٥٦٧٨٩٠١",
            "👍🏽‍" * 30,
            "\u202e+1415\u202c",
            "1e309",
            "-1",
            "9" * 5000,
            "nan",
            "a" * 20_000,
        ]
    ),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    # json.loads accepts NaN and Infinity, so the parsers can meet them.
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)

json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)


def load_json(provider: str, name: str) -> Any:
    return json.loads((DATA / provider / name).read_text())


def json_fixtures(provider: str) -> list[Any]:
    return [json.loads(path.read_text()) for path in sorted((DATA / provider).glob("*.json"))]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _has(node: Any, key: Any) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for part in path[:-1]:
        if not _has(node, part):
            return None
        node = node[part]
    return node


@st.composite
def mutated(draw: st.DrawFn, documents: list[Any]) -> Any:
    """One of ``documents`` (deep-copied) with up to 6 paths deleted or retyped to random JSON."""
    doc = json.loads(json.dumps(draw(st.sampled_from(documents))))
    paths = _paths(doc)
    if not paths:
        return doc
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=6)):
        parent = _parent(doc, path)
        key = path[-1]
        if not _has(parent, key):
            continue  # an earlier mutation removed or retyped an ancestor
        if draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(json_values)
    return doc
