"""gunicorn settings for the ingress: ``gunicorn -c python:ingress.gunicorn_conf 'ingress:create_app()'``.

Command-line flags (``--bind``, ``--workers``) override these; ``$PORT`` and ``$WEB_CONCURRENCY`` are
honoured by gunicorn itself.

- prometheus multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before prometheus_client is
  imported anywhere, so it is set here, in the master, before any worker exists (``wapipe web`` sets its
  own); stale files from an earlier run are wiped at start, and a worker's live gauges are dropped when
  it exits. https://prometheus.github.io/client_python/multiprocess/
- no access log by default: its query strings and paths may carry phone numbers. Set
  ``WAPIPE_ACCESS_LOG=-`` to get one anyway.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Any

_created_metrics_dir: str | None = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _created_metrics_dir = tempfile.mkdtemp(prefix="wapipe-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _created_metrics_dir

# Threaded workers: they keep client connections alive (sync workers close each one) and overlap the
# Redis round trips of concurrent webhooks, which ingress/publishing.py then shares (group commit).
# Measured on 2 cores with wrk: bare Flask ~2.4-3.8k req/s on sync vs ~12-13k on gthread; the Twilio
# webhook ~0.9k req/s on sync vs ~3-4k on gthread.
worker_class = os.environ.get("WAPIPE_WEB_WORKER_CLASS", "gthread")
# 8, not 4: a webhook spends most of its time waiting on Redis, and keep-alive clients are not spread
# evenly over the workers (with wrk -c8 on 2 workers we saw 8/0, 7/1 and 6/2 splits): with 4 threads a
# worker holding 6 connections queues 2 requests behind blocked ones while the other idles. 8 threads
# serve them all, and more requests in flight make bigger group-commit batches. Matches the default
# database pool (WAPIPE_DB_POOL_SIZE=8) for the API's threads. On a busy 2-core machine the Twilio
# webhook went from a median ~1.1k to ~1.3-1.5k req/s (4 vs 8 threads, interleaved runs).
threads = int(os.environ.get("WAPIPE_WEB_THREADS", "8"))
# Webhook handling is short; a request still running after this is stuck, not busy.
timeout = 30
graceful_timeout = 20
# Behind a load balancer that keeps connections open (its idle timeout should be longer than this).
keepalive = 5
accesslog = os.environ.get("WAPIPE_ACCESS_LOG") or None
errorlog = "-"
# Never trust X-Forwarded-* for anything security-related: the signed URL comes from WAPIPE_PUBLIC_URL.
forwarded_allow_ips = "127.0.0.1"


def on_starting(server: Any) -> None:
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(os.path.join(directory, "*.db")):
        os.remove(stale)


def post_worker_init(worker: Any) -> None:
    # The app is loaded: its modules and objects live as long as the worker. Frozen, the garbage
    # collector's full collections stop walking them (a pause of every request thread; workers/signals.py
    # freeze_startup_heap does the same in the Celery workers).
    import gc

    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _created_metrics_dir:
        shutil.rmtree(_created_metrics_dir, ignore_errors=True)


control_socket_disable = True  # one fixed path per user: several servers on a machine would collide
