"""A signed Meta webhook through the real ingress and a real ``inbound`` worker process into PostgreSQL.

Proves the events the Meta blueprint publishes are what ``inbound.route`` consumes: every type stored
once with its provider id, users identified by phone or, when Meta withholds it, by business-scoped id.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import redis

from ingress import create_app
from shared.providers.meta.signature import sign
from shared.settings import load_settings

DATA = Path(__file__).resolve().parents[1] / "data" / "meta"
SECRET = "meta-app-secret"
NAMES = ("text", "image", "interactive_list_reply", "unknown_type", "bsuid_only")


def test_meta_webhooks_are_stored_once_by_the_inbound_worker(
    db: psycopg.Connection, redis_client: redis.Redis, start_worker, wait_for
) -> None:
    client = create_app(load_settings(meta_app_secret=SECRET)).test_client()
    for name in (*NAMES, "text"):  # the text twice: a Meta retry
        body = (DATA / f"{name}.json").read_bytes()
        response = client.post(
            "/webhooks/meta",
            data=body,
            content_type="application/json",
            headers={"X-Hub-Signature-256": sign(SECRET, body)},
        )
        assert response.status_code == 200, name

    start_worker(["inbound"], env={"WAPIPE_MODE": "assistant"})

    def stored() -> list[dict] | None:
        found = db.execute(
            "SELECT m.type, m.body, c.phone, c.bsuid FROM messages m"
            " JOIN contacts c ON c.id = m.contact_id"
            " WHERE m.provider = 'meta' AND m.direction = 'in' ORDER BY m.id"
        ).fetchall()
        return found if len(found) >= len(NAMES) else None

    rows = wait_for(stored, timeout=60, what="five stored Meta messages")
    assert len(rows) == len(NAMES)
    assert {row["type"] for row in rows} == {"text", "image", "interactive", "unknown"}
    assert {row["phone"] for row in rows} == {"+16505551234"}
    assert {row["bsuid"] for row in rows} == {"US.13491208655302741918"}
    assert "Café para mañana ¿sí? 😀" in {row["body"] for row in rows}
