"""``wapipe web``: the ingress under gunicorn (``gunicorn 'ingress:create_app()'``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys

from shared.commands.arguments import (
    add_data_dir,
    at_least_one,
    from_environment,
    gunicorn_worker_class,
    port_number,
)
from shared.embedded import resolve_data_dir

HELP = "Serve the ingress (webhooks, REST API, /healthz, /readyz, /metrics) with gunicorn."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add_data_dir(parser)
    parser.add_argument("--port", type=port_number, default=None, help="default $PORT or 8000")
    parser.add_argument(
        "--workers",
        type=at_least_one,
        default=None,
        help="gunicorn worker processes (default $WEB_CONCURRENCY or 2)",
    )


def check_gunicorn_environment() -> None:
    """The variables ingress/gunicorn_conf.py reads, checked here, where a bad one is named: gunicorn said
    "invalid literal for int()" or printed a traceback, and `wapipe up` restarted the web process with it
    again and again."""
    from_environment("WAPIPE_WEB_THREADS", 8, at_least_one)
    from_environment("WAPIPE_WEB_WORKER_CLASS", "gthread", gunicorn_worker_class)


def prometheus_dir() -> str:
    """A fresh, empty folder for prometheus_client's multiprocess files, one per gunicorn master.

    Each web process gets ``<data_dir>/prometheus/<pid>`` (the pid survives the exec below); folders of
    masters that are gone are removed so old counters never leak into /metrics.
    """
    root = resolve_data_dir() / "prometheus"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    mine = root / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    return str(mine)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gunicorn_argv(host: str, port: int, workers: int) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(workers)]
    # gunicorn's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl): two web
    # processes on one machine would fight over it, and nothing of ours uses it.
    argv.append("--no-control-socket")
    # H2's config module wires prometheus multiprocess mode and logging; used when present.
    if importlib.util.find_spec("ingress.gunicorn_conf") is not None:
        argv += ["--config", "python:ingress.gunicorn_conf"]
    return [*argv, "ingress:create_app()"]


def run(args: argparse.Namespace) -> int:
    from shared.settings import get_settings

    get_settings()  # a bad setting fails here, naming the variable, not in every gunicorn worker
    port = args.port if args.port is not None else from_environment("PORT", 8000, port_number)
    workers = (
        args.workers if args.workers is not None else from_environment("WEB_CONCURRENCY", 2, at_least_one)
    )
    check_gunicorn_environment()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = prometheus_dir()
    argv = gunicorn_argv(args.host, port, workers)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # noqa: S606 - argv is built here from validated arguments
    return 0  # not reached
