"""Any text -> a valid :class:`Proposal` or a :class:`ProposalError` the user is shown, nothing else.

The offline parser answers every linked user's free text when no model is configured (and whenever the
model fails), so an exception escaping it would leave a user without an answer and a task retrying.
"""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given
from hypothesis import strategies as st

from shared.ai.offline import parse_offline
from shared.ai.proposal import MAX_ITEMS, Proposal, ProposalError
from tests.unit.fuzz.strategies import DATA, FUZZ, hostile_text

DEV_TEXTS = [
    json.loads(line)["text"]
    for line in (DATA / "proposals" / "proposals-dev.jsonl").read_text().splitlines()
    if line.strip()
]
# The parser's own vocabulary, "|"-separated: dates, amounts, separators, bullets, filler, odd characters.
_VOCABULARY = (
    "fix|add|login|and|y|,|;|-|•|1.|2)|by|Friday|viernes|mañana|tomorrow|2h|3 hours|1.5 días|each|cada|"
    "urgent|ASAP|(2h)|2026-02-30|Dec 45|in 99999999 days|99999999999 hours|\n|.|!|?|🙂|\x00|\u200b|"
    "((((|))|&|+|then|luego|next week|end of month"
)
WORDS = st.sampled_from(_VOCABULARY.split("|"))
word_soup = st.lists(WORDS, max_size=40).map(" ".join)
DAYS = st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31))


def _check(text: str, today: dt.date) -> None:
    try:
        proposal = parse_offline(text, today)
    except ProposalError as exc:
        reason = str(exc)
        assert reason  # what the user is told
        return
    assert isinstance(proposal, Proposal)
    assert 1 <= len(proposal.items) <= MAX_ITEMS
    json.dumps(proposal.to_json_dict())


@FUZZ
@given(text=hostile_text, today=DAYS)
def test_any_text_gives_a_proposal_or_a_proposal_error(text: str, today: dt.date) -> None:
    _check(text, today)


@FUZZ
@given(text=word_soup, today=DAYS)
def test_word_soup_of_the_parsers_own_vocabulary(text: str, today: dt.date) -> None:
    # Dates, amounts, separators and bullets in random orders reach the rules a random string never does.
    _check(text, today)


@FUZZ
@given(base=st.sampled_from(DEV_TEXTS), cut=st.integers(0, 400), noise=hostile_text, today=DAYS)
def test_real_messages_cut_and_spliced(base: str, cut: int, noise: str, today: dt.date) -> None:
    _check(base[:cut] + noise + base[cut:], today)


def test_non_text_is_a_proposal_error() -> None:
    try:
        parse_offline(None, dt.date(2026, 1, 27))  # type: ignore[arg-type]
    except ProposalError:
        return
    raise AssertionError("None must be refused with ProposalError")
