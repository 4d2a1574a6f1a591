"""``GET /api/v1/stats``: activity figures overall, per provider and per business number.

See :mod:`shared.db.stats` for what each figure means; the whole answer costs two aggregate queries.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify

from ingress.auth import require_api_key
from shared.db import stats
from shared.db.pool import connection

bp = Blueprint("stats_api", __name__, url_prefix="/api/v1/stats")


def _figures(figures: stats.Figures) -> dict[str, object]:
    body = asdict(figures)
    if figures.avg_first_response_seconds is not None:
        body["avg_first_response_seconds"] = round(figures.avg_first_response_seconds, 3)
    return body


@bp.get("")
@require_api_key
def get_stats() -> Response:
    with connection() as conn:
        result = stats.compute(conn)
    return jsonify(
        {
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
    )
