"""The embedded servers from a shell, without the wapipe CLI: ``python -m shared.embedded ACTION``.

``tests/run`` uses it to get test servers on a machine that has no PostgreSQL or Redis of its own.
"""

from __future__ import annotations

import argparse
import signal
import sys

from shared.embedded import EmbeddedError, discover, resolve_data_dir, start, stop


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.embedded start|stop|env|status [--data-dir DIR]`` (used by tests/run).

    ``env`` starts the servers if needed and prints shell ``export`` lines for the test suite.
    """
    parser = argparse.ArgumentParser(prog="python -m shared.embedded")
    parser.add_argument("action", choices=["start", "stop", "env", "status"])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if args.action == "stop":
        print("stopped: " + (", ".join(stop(args.data_dir)) or "nothing was running"), file=sys.stderr)
        return 0
    if args.action == "status":
        servers = discover(args.data_dir)
        print(f"postgres: {'running' if servers.database_url else 'stopped'}")
        print(f"valkey: {'running' if servers.redis_url else 'stopped'}")
        return 0
    try:
        servers = start(args.data_dir)
    except EmbeddedError as exc:
        print(f"embedded servers: {exc}", file=sys.stderr)
        return 1
    if args.action == "env":
        admin = str(servers.database_url).rsplit("/", 1)[0] + "/postgres"
        redis_server = str(servers.redis_url).rsplit("/", 1)[0]
        print(f"export WAPIPE_TEST_ADMIN_DATABASE_URL='{admin}'")
        print(f"export WAPIPE_TEST_REDIS_SERVER='{redis_server}'")
    else:
        print(f"postgres and valkey running for {resolve_data_dir(args.data_dir)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
