"""``wapipe``: one console script, one module per subcommand under ``shared/commands/``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``wapipe web`` never loads worker code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import psycopg

from shared.db.errors import DatabaseError
from shared.db.pool import close_pool
from shared.logging import scrub
from shared.settings import SettingsError

# name -> (module, one line for `wapipe --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("shared.commands.up", "run everything on this machine (embedded servers unless URLs are set)"),
    "web": ("shared.commands.web", "serve the ingress with gunicorn"),
    "worker": ("shared.commands.worker", "run a Celery worker for some queues (-Q notify,status)"),
    "beat": ("shared.commands.beat", "run the Celery beat scheduler (maintenance jobs)"),
    "migrate": ("shared.commands.migrate", "apply pending database migrations"),
    "seed-demo": ("shared.commands.seed_demo", "create demo users, workspaces and projects to try"),
    "chat": ("shared.commands.chat", "chat with the running service as a WhatsApp user would"),
    "parse-proposal": ("shared.commands.parse_proposal", "print the proposal a text becomes, as JSON"),
    "dlq": ("shared.commands.dlq", "list and replay dead letters"),
    "down": ("shared.commands.down", "stop the embedded PostgreSQL and Valkey that `wapipe up` left running"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="wapipe", description="Event-driven WhatsApp messaging pipeline.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module_name, summary) in COMMANDS.items():
        # Only the chosen command's module is imported; the others are listed for --help.
        if name == chosen:
            module = importlib.import_module(module_name)
            sub = subparsers.add_parser(name, help=summary, description=module.HELP)
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    args = parser.parse_args(argv)
    try:
        # Unset server URLs come from a running `wapipe up`'s embedded servers in the data folder.
        from shared.embedded import use_data_dir_servers

        use_data_dir_servers(getattr(args, "data_dir", None))
        return int(args._run(args) or 0)
    except SettingsError as exc:
        print(f"wapipe: {exc}", file=sys.stderr)
        return 2
    except (psycopg.Error, DatabaseError) as exc:
        # The pool's threads go on trying to connect, and each failure logs a warning: stopped first, so
        # the line that says what failed is the last one, not followed by the next attempt's.
        close_pool(timeout=1.0)
        print(f"wapipe: {database_failure(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None:  # not a file's: a socket's or a process's, whose traceback says more
            raise
        # A data folder that cannot be used (under a file, not writable, a volume not mounted): the
        # system's words and the path say it all.
        print(f"wapipe: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# SQLSTATE classes of a server that cannot be reached or will not let us in: connection (08), login (28),
# no such database (3D), shutting down (57P).
_UNREACHABLE_STATES = ("08", "28", "3D", "57P")
_UNDEFINED_TABLE = "42P01"


def database_failure(exc: Exception) -> str:
    """One line on a database error, never a traceback: the driver's text on a failed connection names
    internal hosts, ports and databases (and for some errors the part of the URL it could not use), so that
    says the error's type only, as /readyz does. A statement the server refused (a failed migration, a
    missing table) says its SQLSTATE and the server's message, masked, and the migration it was in."""
    cause = exc.__cause__ if isinstance(exc, DatabaseError) and exc.__cause__ is not None else exc
    where = "".join(f" in {note}" for note in getattr(exc, "__notes__", ()))
    state = getattr(cause, "sqlstate", None)
    if not isinstance(cause, psycopg.Error) or state is None or state.startswith(_UNREACHABLE_STATES):
        return (
            f"the database failed ({type(cause).__name__}){where}; check that PostgreSQL is reachable at"
            " WAPIPE_DATABASE_URL with the given credentials"
        )
    said = f"the database refused a statement{where}: {state} {scrub(cause.diag.message_primary or '')}"
    if state == _UNDEFINED_TABLE and not where:
        # Outside a migration, a missing table is most often a database never migrated (a new one, or
        # WAPIPE_DATABASE_URL pointed at another): say what to do about it.
        said += "; has `wapipe migrate` been run on this database?"
    return said


if __name__ == "__main__":
    sys.exit(main())
