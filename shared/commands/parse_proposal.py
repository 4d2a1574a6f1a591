"""``wapipe parse-proposal``: print the proposal a text becomes, as JSON, without touching any database.

Useful to try the offline parser's rules (or the configured model) from a terminal::

    wapipe parse-proposal --today 2026-01-27 "Add login page and user dashboard by Friday, 8 hours"
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

HELP = (
    "Print the proposal (summary, items, totalEstimatedHours, confidence) that TEXT becomes, as JSON. "
    "Uses the model when OPENAI_API_KEY is set, else the offline parser; TEXT '-' reads standard input."
)


def _iso_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--today must be a date as YYYY-MM-DD, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--today", type=_iso_date, default=None, help="the day the message was sent (default: today)"
    )
    parser.add_argument(
        "--offline", action="store_true", help="use the offline parser even when a model is set"
    )
    parser.add_argument(
        "text", nargs="*", metavar="TEXT", help="the message (several words are joined); none or '-': stdin"
    )
    # run() needs it to refuse an empty TEXT at a terminal as argparse refuses a bad argument.
    parser.set_defaults(usage_error=parser.error)


def _read_stdin(args: argparse.Namespace, *, explicit: bool) -> str:
    """The message from standard input. With no TEXT at a terminal, a usage error: reading would wait,
    without a word, for a Ctrl-D the user does not know is expected. ``-`` asks for it: then say how it
    ends."""
    if sys.stdin.isatty():
        if not explicit:
            args.usage_error("give the message as TEXT, or pipe it to standard input (or '-' to type it)")
        print("reading the message from standard input; end it with Ctrl-D", file=sys.stderr, flush=True)
    return sys.stdin.read()


def run(args: argparse.Namespace) -> int:
    from shared.ai.offline import parse_offline
    from shared.ai.proposal import ProposalError

    text = " ".join(args.text)
    if text in ("", "-"):
        text = _read_stdin(args, explicit=text == "-")
    today = args.today or dt.date.today()
    try:
        if args.offline:
            proposal, parser = parse_offline(text, today), "offline"
        else:
            from shared.ai.openai_parser import parse_proposal
            from shared.settings import get_settings

            proposal, parser = parse_proposal(text, today, get_settings())
    except ProposalError as exc:
        print(f"wapipe parse-proposal: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(proposal.to_json_dict(), ensure_ascii=False, indent=2))
    print(f"parser: {parser}", file=sys.stderr)
    return 0
