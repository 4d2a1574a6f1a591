"""``wapipe worker -Q notify,status``: a Celery worker for some queues (``celery -A workers worker``)."""

from __future__ import annotations

import argparse
import os
import sys

from shared.commands.arguments import add_data_dir, at_least_one
from shared.queues import QUEUES, SLOW_QUEUES

HELP = "Run a Celery worker consuming the given queues (one pool per queue group; see deploy/README.md)."


def _queues(value: str) -> list[str]:
    queues = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [queue for queue in queues if queue not in QUEUES]
    if not queues or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown queue(s) {', '.join(unknown) or value!r}; known: {', '.join(QUEUES)}"
        )
    return queues


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-Q", "--queues", type=_queues, default=list(QUEUES), help="comma-separated queues (default: all)"
    )
    # 0 quietly meant the CPU count.
    parser.add_argument(
        "--concurrency", "-c", type=at_least_one, default=None, help="pool size (default: CPU count)"
    )
    parser.add_argument("--pool", choices=["prefork", "threads"], default="prefork")
    parser.add_argument("--loglevel", "-l", default=None, help="default $WAPIPE_LOG_LEVEL")
    add_data_dir(parser)


def celery_argv(queues: list[str], concurrency: int | None, pool: str, loglevel: str) -> list[str]:
    # A worker that holds a slow task must not sit on prefetched fast ones: prefetch 1 when any queue is
    # slow (https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits).
    prefetch = 1 if SLOW_QUEUES.intersection(queues) else 4
    argv = [
        sys.executable, "-m", "celery", "-A", "workers", "worker",
        "-Q", ",".join(queues),
        # The process id too (execv keeps it): several processes of one pool on a host (honcho -c, a
        # container per process sharing a hostname) would otherwise share a node name, and a control
        # command (ping, inspect, shutdown) would reach only one of them.
        "-n", f"{'-'.join(queues)}.{os.getpid()}@%h",
        "--prefetch-multiplier", str(prefetch),
        "--pool", pool,
        "--loglevel", loglevel,
        # Mingle and gossip chat between workers at start and all the time; we don't use what they give.
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def run(args: argparse.Namespace) -> int:
    from shared.settings import get_settings

    settings = get_settings()
    argv = celery_argv(args.queues, args.concurrency, args.pool, args.loglevel or settings.log_level)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # noqa: S606 - argv is built here from validated arguments
    return 0  # not reached
