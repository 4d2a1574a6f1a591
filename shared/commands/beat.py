"""``wapipe beat``: the Celery beat scheduler for the maintenance jobs (run exactly one)."""

from __future__ import annotations

import argparse
import os
import sys

from shared.commands.arguments import add_data_dir
from shared.embedded import resolve_data_dir

HELP = "Run Celery beat (expire codes, close idle conversations, retention, dead-letter alerts). Run one."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loglevel", "-l", default=None, help="default $WAPIPE_LOG_LEVEL")
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    from shared.settings import get_settings

    settings = get_settings()
    folder = resolve_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "celery", "-A", "workers", "beat",
        # Beat remembers when each job last ran here, so a restart doesn't run them all again at once.
        "--schedule", str(folder / "celerybeat-schedule"),
        "--loglevel", args.loglevel or settings.log_level,
    ]  # fmt: skip
    sys.stdout.flush()
    os.execv(argv[0], argv)  # noqa: S606 - argv is built here from validated arguments
    return 0  # not reached
