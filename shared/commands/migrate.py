"""``wapipe migrate``: apply the SQL migrations that are not applied yet."""

from __future__ import annotations

import argparse

from shared.commands.arguments import add_data_dir
from shared.db.migrate import migrate
from shared.db.pool import database_url

HELP = "Apply pending database migrations (each once; safe to run concurrently)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    applied = migrate(database_url())
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0
