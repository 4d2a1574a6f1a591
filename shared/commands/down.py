"""``wapipe down``: stop the embedded PostgreSQL and Valkey that ``wapipe up`` left running."""

from __future__ import annotations

import argparse
import sys

from shared import embedded

HELP = "Stop the embedded servers of the data folder (their data stays; the next `wapipe up` reuses it)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="data folder (default $WAPIPE_DATA_DIR or ./var)")


def run(args: argparse.Namespace) -> int:
    folder = embedded.resolve_data_dir(args.data_dir)
    try:
        stopped = embedded.stop(folder)
    except embedded.EmbeddedError as exc:
        print(f"wapipe down: {exc}", file=sys.stderr)
        return 1
    print(f"stopped {' and '.join(stopped)} in {folder}" if stopped else f"nothing running in {folder}")
    return 0
