"""``wapipe down``: stop the embedded PostgreSQL and Valkey that ``wapipe up`` left running.

Not under a running ``wapipe up``: its workers would lose their servers mid-task (a send in flight ends
``outcome_unknown``). ``--force`` stops them anyway.
"""

from __future__ import annotations

import argparse
import sys

from shared import embedded
from shared.commands.arguments import add_data_dir

HELP = "Stop the embedded servers of the data folder (their data stays; the next `wapipe up` reuses it)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument(
        "--force", action="store_true", help="stop the servers even while `wapipe up` runs on this folder"
    )


def run(args: argparse.Namespace) -> int:
    from shared.commands.up import down_lock, running_up, up_lock

    folder = embedded.resolve_data_dir(args.data_dir)
    if not folder.is_dir():
        print(f"nothing running in {folder}")
        return 0
    # The up lock is held while the servers stop, so an `up` started meanwhile refuses instead of
    # starting its workers on servers about to go.
    with up_lock(folder) as no_up_running:
        if not no_up_running and not args.force:
            up = running_up(folder) or {}
            pid = f" (pid {up['pid']})" if "pid" in up else ""
            print(
                f"wapipe down: wapipe up is running for {folder}{pid}; stop it first (Ctrl-C in its "
                "terminal, or SIGTERM), then run wapipe down again. --force stops the servers under it.",
                file=sys.stderr,
            )
            return 1
        try:
            if no_up_running:
                with down_lock(folder):
                    stopped = embedded.stop(folder)
            else:
                stopped = embedded.stop(folder)
        except embedded.EmbeddedError as exc:
            print(f"wapipe down: {exc}", file=sys.stderr)
            return 1
    print(f"stopped {' and '.join(stopped)} in {folder}" if stopped else f"nothing running in {folder}")
    return 0
