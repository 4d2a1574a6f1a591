"""Every case of ``shared/data/proposals-dev.jsonl`` parsed fully right by the offline parser."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from shared.ai.offline import parse_offline

_REPO = Path(__file__).resolve().parents[3]
# The team folder beside the repo holds the current dev set; the copy in tests/data keeps a clone without
# it testable.
DEV_CASES = _REPO.parent / "shared" / "data" / "proposals-dev.jsonl"
_LOCAL_COPY = _REPO / "tests" / "data" / "proposals" / "proposals-dev.jsonl"


def _cases() -> list[dict[str, Any]]:
    path = DEV_CASES if DEV_CASES.exists() else _LOCAL_COPY
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


CASES = _cases()


def test_the_dev_set_is_all_there() -> None:
    assert len(CASES) == 17


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:40] for c in CASES])
def test_dev_case(case: dict[str, Any]) -> None:
    proposal = parse_offline(case["text"], dt.date.fromisoformat(case["today"])).to_json_dict()
    expected = case["expected"]
    got = proposal["items"]
    assert len(got) == len(expected["items"]), got
    for item, want in zip(got, expected["items"], strict=True):
        for fragment in want["title_has"]:
            assert fragment.lower() in item["title"].lower(), item["title"]
        assert item["title"][0].isupper()
        if want["estimatedHours"] is None:
            assert item["estimatedHours"] is None
        else:
            assert item["estimatedHours"] == pytest.approx(want["estimatedHours"])
        assert item["dueDate"] == want["dueDate"]
        assert item["priority"] == want["priority"]
    if expected["totalEstimatedHours"] is None:
        assert proposal["totalEstimatedHours"] is None
    else:
        assert proposal["totalEstimatedHours"] == pytest.approx(expected["totalEstimatedHours"])
    assert set(proposal) == {"summary", "items", "totalEstimatedHours", "confidence"}
    assert 0 <= proposal["confidence"] <= 1
