"""End to end: POST /api/v1/messages -> a real notify worker -> the Meta sender against a fake Graph API ->
signed Meta status webhooks through the ingress -> a real status worker -> GET shows the whole timeline."""

from __future__ import annotations

import json
from pathlib import Path

from ingress import create_app
from shared.providers.meta.signature import sign
from shared.settings import load_settings
from tests.fakes.meta_graph import FakeGraph

DATA = Path(__file__).resolve().parents[1] / "data" / "meta"
KEY = "e2e-api-key"
SECRET = "e2e-meta-app-secret"
TOKEN = "e2e-graph-token"
PHONE_NUMBER_ID = "106540352242922"


def status_webhook(wamid: str, status: str, timestamp: int) -> bytes:
    payload = json.loads((DATA / "status_delivered.json").read_text())
    receipt = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    receipt.update({"id": wamid, "status": status, "timestamp": str(timestamp)})
    return json.dumps(payload).encode()


def test_an_api_message_is_sent_by_the_worker_and_its_receipts_show_in_the_timeline(
    db, redis_client, start_worker, wait_for
) -> None:
    with FakeGraph(TOKEN) as graph:
        provider = {
            "WAPIPE_PROVIDER": "meta",
            "META_ACCESS_TOKEN": TOKEN,
            "META_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
            "META_GRAPH_URL": graph.url,
        }
        start_worker(["notify", "status"], concurrency=2, env=provider)
        settings = load_settings(
            api_keys=KEY,
            meta_app_secret=SECRET,
            provider="meta",
            meta_access_token=TOKEN,
            meta_phone_number_id=PHONE_NUMBER_ID,
            meta_graph_url=graph.url,
            default_region="US",
        )
        client = create_app(settings).test_client()
        auth = {"X-API-Key": KEY}

        created = client.post(
            "/api/v1/messages",
            json={
                "to": "(650) 555-1234",
                "type": "template",
                "template": {"name": "ticket_assigned", "language": "en_US", "variables": ["#42"]},
            },
            headers={**auth, "Idempotency-Key": "ticket-42-assigned"},
        )
        assert created.status_code == 202
        message_id = created.get_json()["id"]

        wamid = wait_for(
            lambda: db.execute(
                "SELECT provider_message_id FROM messages WHERE id = %s AND status = 'sent'", (message_id,)
            ).fetchone(),
            what="the message to be sent",
        )["provider_message_id"]
        [request] = graph.received
        assert request.path == f"/v21.0/{PHONE_NUMBER_ID}/messages"
        assert request.json["to"] == "+16505551234"
        assert request.json["template"]["name"] == "ticket_assigned"

        for status, timestamp in (("delivered", 1_900_000_010), ("read", 1_900_000_020)):
            body = status_webhook(wamid, status, timestamp)
            response = client.post(
                "/webhooks/meta",
                data=body,
                content_type="application/json",
                headers={"X-Hub-Signature-256": sign(SECRET, body)},
            )
            assert response.status_code == 200

        def read() -> dict | None:
            body = client.get(f"/api/v1/messages/{message_id}", headers=auth).get_json()
            return body if body["status"] == "read" and len(body["timeline"]) == 4 else None

        shown = wait_for(read, what="the read receipt in the timeline")
        assert shown["to"] == "+16505551234"
        assert shown["type"] == "template"
        assert shown["error"] is None
        assert [event["status"] for event in shown["timeline"]] == ["queued", "sent", "delivered", "read"]

        # The caller retrying its request gets the same message, not a second send.
        again = client.post(
            "/api/v1/messages",
            json={
                "to": "+16505551234",
                "type": "template",
                "template": {"name": "ticket_assigned", "language": "en_US", "variables": ["#42"]},
            },
            headers={**auth, "Idempotency-Key": "ticket-42-assigned"},
        )
        assert again.status_code == 200
        assert again.get_json() == {"id": message_id, "status": "read"}
        assert len(graph.received) == 1
