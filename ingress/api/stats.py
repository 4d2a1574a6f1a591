"""``GET /api/v1/stats``: activity figures overall, per provider and per business number.

See :mod:`shared.db.stats` for what each figure means; the whole answer costs two aggregate queries, each
a scan of ``messages`` (seconds on a big database). A dashboard polling it, or several at once, would keep
PostgreSQL scanning the same rows, so each process answers every caller with the figures it computed
within :data:`MAX_AGE_SECONDS` (``generated_at`` says when), and callers arriving while they are computed
wait for them instead of starting scans of their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify

from ingress.auth import require_api_key
from ingress.per_app import per_app
from shared.db import stats
from shared.db.pool import connection

bp = Blueprint("stats_api", __name__, url_prefix="/api/v1/stats")

MAX_AGE_SECONDS = 30.0
CACHE_KEY = "wapipe.stats_cache"


class _Latest:
    """The latest answer of one process, and the lock that makes concurrent callers share its computing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.body: dict[str, object] | None = None
        self.computed_at = 0.0

    def get(self, compute: Callable[[], dict[str, object]]) -> dict[str, object]:
        with self.lock:
            if self.body is None or time.monotonic() - self.computed_at >= MAX_AGE_SECONDS:
                # A failure (PostgreSQL away) raises here and keeps no answer: the next caller tries again.
                self.body = compute()
                self.computed_at = time.monotonic()
            return self.body


def _figures(figures: stats.Figures) -> dict[str, object]:
    body = asdict(figures)
    if figures.avg_first_response_seconds is not None:
        body["avg_first_response_seconds"] = round(figures.avg_first_response_seconds, 3)
    return body


@bp.get("")
@require_api_key
def get_stats() -> Response:
    return jsonify(per_app(CACHE_KEY, _Latest).get(_compute))


def _compute() -> dict[str, object]:
    with connection() as conn:
        result = stats.compute(conn)
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "overall": _figures(result.overall),
        "by_provider": [
            {"provider": provider, **_figures(figures)}
            for provider, figures in sorted(result.by_provider.items())
        ],
        "by_number": [
            {"provider": provider, "business_number": number, **_figures(figures)}
            for (provider, number), figures in sorted(
                result.by_number.items(), key=lambda item: (item[0][0], item[0][1] or "")
            )
        ],
    }
