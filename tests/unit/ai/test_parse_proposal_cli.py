"""``wapipe parse-proposal`` run as a user would, in a subprocess."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

TEXT = "Need to add login page and user dashboard by Friday. Should take about 8 hours."


def _wapipe(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "WAPIPE_AI"}}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "parse-proposal", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_prints_the_proposal_as_json() -> None:
    done = _wapipe("--today", "2026-01-27", "--", TEXT)
    assert done.returncode == 0, done.stderr
    proposal = json.loads(done.stdout)
    assert set(proposal) == {"summary", "items", "totalEstimatedHours", "confidence"}
    assert [i["title"] for i in proposal["items"]] == ["Add login page", "Add user dashboard"]
    assert [i["dueDate"] for i in proposal["items"]] == ["2026-01-30", "2026-01-30"]
    assert proposal["totalEstimatedHours"] == 8
    assert set(proposal["items"][0]) == {
        "type",
        "title",
        "description",
        "estimatedHours",
        "dueDate",
        "priority",
    }


def test_offline_flag_and_text_from_stdin() -> None:
    done = _wapipe(
        "--offline",
        "--today",
        "2026-03-06",
        "-",
        stdin="- Update privacy policy\n- Add cookie banner\nNo rush",
    )
    assert done.returncode == 0, done.stderr
    items = json.loads(done.stdout)["items"]
    assert [i["priority"] for i in items] == ["low", "low"]


def test_text_starting_with_a_dash_after_double_dash() -> None:
    done = _wapipe("--today", "2026-01-27", "--", "- Fix login (2h)")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["items"][0]["estimatedHours"] == 2


@pytest.mark.parametrize("bad", ["2026-13-01", "tomorrow", "27/01/2026"])
def test_a_bad_today_exits_2_with_a_clear_message(bad: str) -> None:
    done = _wapipe("--today", bad, "Fix login")
    assert done.returncode == 2
    assert "--today must be a date as YYYY-MM-DD" in done.stderr
    assert done.stdout == ""


def test_text_without_work_items_exits_1_and_says_why() -> None:
    done = _wapipe("--today", "2026-01-27", "Friday")
    assert done.returncode == 1
    assert "no work item found" in done.stderr


def test_no_text_at_a_terminal_says_what_it_expects_instead_of_waiting() -> None:
    # With no TEXT it read standard input, which at a terminal waited without a word for a Ctrl-D.
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "WAPIPE_AI"}}
    terminal, user_side = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli", "parse-proposal", "--offline"],
            stdin=user_side,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,  # it waited for good
            check=False,
        )
    finally:
        os.close(user_side)
        os.close(terminal)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("usage: wapipe parse-proposal"), done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "TEXT" in last, last
    assert "standard input" in last, last


def test_no_text_reads_piped_standard_input() -> None:
    done = _wapipe("--offline", "--today", "2026-03-06", stdin="Add cookie banner (2h)")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["items"][0]["estimatedHours"] == 2
