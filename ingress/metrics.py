"""Prometheus metrics, correct under several gunicorn workers.

Each gunicorn worker is its own process with its own counters. With ``PROMETHEUS_MULTIPROC_DIR`` set
(``gunicorn_conf.py`` and ``wapipe web`` set it before any worker starts), prometheus_client writes every
value to a per-process file there and ``/metrics`` sums the files of all workers, living and dead, so a
scrape answered by any worker sees the whole server. Without it (tests, ``flask run``) the ordinary
in-process registry is used.
https://prometheus.github.io/client_python/multiprocess/
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

bp = Blueprint("metrics", __name__)

# Every label value is a new series kept for the life of the process (and of its file in the multiprocess
# directory), so a label may only take values from a fixed set: gunicorn passes on any method token a
# client invents, and each one would otherwise become another histogram.
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED = "unmatched"  # no route (404) or a route without this method (405): URLs are not labels

WEBHOOKS = Counter(
    "wapipe_webhooks_received",
    "Webhook requests by provider, kind (message, status, unknown) and outcome "
    "(enqueued, duplicate, forbidden, malformed, too_large, unavailable, other_channel).",
    ["provider", "kind", "outcome"],
)
SIGNATURE_FAILURES = Counter(
    "wapipe_webhook_signature_failures",
    "Webhooks refused because their signature was missing or wrong.",
    ["provider"],
)
DUPLICATES = Counter(
    "wapipe_webhook_duplicates",
    "Webhook events already enqueued once (provider retries, redeliveries); acknowledged, not re-enqueued.",
    ["provider"],
)
ENQUEUE_FAILURES = Counter(
    "wapipe_enqueue_failures",
    "Publishes that failed because the broker (Redis) was unreachable; answered with 503.",
    ["queue"],
)
REQUEST_LATENCY = Histogram(
    "wapipe_http_request_duration_seconds",
    "Time from request start to response, by Flask endpoint (unmatched for 404/405) and method "
    "(other for a non-standard one).",
    ["endpoint", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


@bp.get("/metrics")
def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _start_timer() -> None:
    g.wapipe_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.get("wapipe_started")
    if started is not None:
        method = request.method if request.method in STANDARD_METHODS else OTHER_METHOD
        REQUEST_LATENCY.labels(request.endpoint or UNMATCHED, method).observe(time.perf_counter() - started)
    return response


def register(app: Flask) -> Any:
    """Time every request (registered before the blueprints, so their hooks are inside the timing)."""
    app.before_request(_start_timer)
    app.after_request(_observe)
