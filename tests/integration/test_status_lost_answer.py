"""A send whose answer was lost is settled by the provider's receipts, which name it by our own id.

notify fails such a send as ``outcome_unknown`` with a dead letter (tests/integration/
test_notify_unknown_outcome.py): the provider may have it, and we never learnt its id. Each send names our
message to the provider (Meta's ``biz_opaque_callback_data``, a query parameter of Twilio's StatusCallback
URL), so the signed receipts that prove delivery still find it: the message takes the provider's id and
status, its letter is closed (``wapipe dlq replay`` no longer offers it), and nothing is sent twice. A
receipt whose id names another provider's message, or one that already has a provider id, changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from twilio.request_validator import RequestValidator

from ingress import create_app
from shared.db import dead_letters, sending
from shared.providers.meta.client import MetaSender
from shared.providers.twilio.client import TwilioSender
from shared.settings import load_settings
from shared.wire.events import DeliveryStatus
from tests.integration import webhook_signing as hooks
from tests.integration.test_notify_send import a_reply, message, statuses, twilio_settings
from tests.integration.test_notify_unknown_outcome import SlowGraph, SlowTwilio, short_timeout  # noqa: F401
from workers.notify import dispatch
from workers.status import apply

DATA = Path(__file__).resolve().parents[1] / "data"
WAMID = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI0LOST01="


def pending_letters(db: Any) -> list[int | None]:
    return [letter.message_id for letter in dead_letters.list_pending(db)]


def meta_receipt(wamid: str, status: str, callback_data: str | None, **extra: Any) -> bytes:
    body = json.loads((DATA / "meta" / "status_delivered.json").read_text())
    item = body["entry"][0]["changes"][0]["value"]["statuses"][0]
    item.update(id=wamid, status=status, **extra)
    if callback_data is not None:
        item["biz_opaque_callback_data"] = callback_data
    return json.dumps(body).encode()


def received_status_events(redis_client: Any, response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    events = [job["event"] for job in hooks.queued(redis_client, "status")]
    redis_client.delete("status")
    return events


def post_meta(redis_client: Any, body: bytes) -> list[dict[str, Any]]:
    app = create_app(hooks.settings())
    response = hooks.signed(app, "meta", body, hooks.JSON).send(app.test_client())
    return received_status_events(redis_client, response)


def lost_graph_send(db: Any) -> tuple[int, SlowGraph, Any]:
    graph = SlowGraph("meta-token")
    graph.__enter__()
    settings = load_settings(
        provider="meta", meta_access_token="meta-token", meta_phone_number_id="999999",
        meta_graph_url=graph.url,
    )  # fmt: skip
    own = a_reply("Your code is 1234")
    assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "dead"
    assert (message(db, own)["status"], pending_letters(db)) == ("failed", [own])
    return own, graph, settings


def test_a_graph_send_whose_answer_was_lost_is_delivered_by_its_receipt(db, redis_client) -> None:
    own, graph, settings = lost_graph_send(db)
    try:
        [sent] = graph.received
        # The send named our message; Meta echoes it in the message's status webhooks.
        assert sent.json["biz_opaque_callback_data"] == f"wapipe:{own}"

        [event] = post_meta(redis_client, meta_receipt(WAMID, "delivered", f"wapipe:{own}"))
        applied = apply(event)

        assert applied is not None
        assert (applied.message_id, applied.changed) == (own, True)
        row = message(db, own)
        assert (row["status"], row["provider_message_id"], row["error_code"]) == ("delivered", WAMID, None)
        assert statuses(db, own)[-1] == "delivered"
        # `wapipe dlq replay` no longer offers it, and the job delivered again sends nothing.
        assert pending_letters(db) == []
        db.execute("UPDATE messages SET send_after = NULL WHERE id = %s", (own,))
        assert dispatch(own, settings=settings, sender=MetaSender(settings)) == "skipped"
        assert len(graph.received) == 1
        # Later receipts find it by the provider id as any other's.
        [read] = post_meta(redis_client, meta_receipt(WAMID, "read", f"wapipe:{own}"))
        assert apply(read).changed is True
        assert message(db, own)["status"] == "read"
    finally:
        graph.__exit__(None, None, None)


def test_a_failed_receipt_makes_a_lost_send_a_plain_provider_failure(db, redis_client) -> None:
    own, graph, _ = lost_graph_send(db)
    graph.__exit__(None, None, None)
    errors = [{"code": 131026, "title": "Message undeliverable"}]

    [event] = post_meta(redis_client, meta_receipt(WAMID, "failed", f"wapipe:{own}", errors=errors))
    assert apply(event) is not None

    row = message(db, own)
    assert (row["status"], row["provider_message_id"], row["error_code"], row["error_message"]) == (
        "failed",
        WAMID,
        "131026",
        "Message undeliverable",
    )
    assert pending_letters(db) == []


def test_a_twilio_send_whose_answer_was_lost_is_delivered_by_its_signed_receipt(db, redis_client) -> None:
    with SlowTwilio() as fake:
        settings = twilio_settings(fake)
        own = a_reply("Your code is 1234")
        assert dispatch(own, settings=settings, sender=TwilioSender(settings)) == "dead"
        [created] = fake.created()
    callback = urlsplit(created.form["StatusCallback"])
    assert callback.path == "/webhooks/twilio"
    assert callback.query == f"wapipe_message={own}"

    # Twilio signs the URL it calls, query included: the check must hold with our parameter in it.
    form = {
        "MessageSid": created.sid,
        "SmsSid": created.sid,
        "MessageStatus": "delivered",
        "To": created.form["To"],
        "From": created.form["From"],
        "AccountSid": fake.account_sid,
    }
    path = f"{callback.path}?{callback.query}"
    signature = RequestValidator(hooks.TWILIO_TOKEN).compute_signature(hooks.PUBLIC_URL + path, form)
    app = create_app(hooks.settings())
    response = app.test_client().post(
        path, data=urlencode(form), content_type=hooks.FORM, headers={"X-Twilio-Signature": signature}
    )
    [event] = received_status_events(redis_client, response)
    assert event["our_message_id"] == own

    assert apply(event) is not None
    row = message(db, own)
    assert (row["status"], row["provider_message_id"], row["error_code"]) == ("delivered", created.sid, None)
    assert pending_letters(db) == []

    # Our id moved into the query changes what Twilio signed: a forged one is refused.
    forged = app.test_client().post(
        f"{callback.path}?wapipe_message={own + 1}",
        data=urlencode(form),
        content_type=hooks.FORM,
        headers={"X-Twilio-Signature": signature},
    )
    assert forged.status_code == 403


@pytest.mark.parametrize(
    ("row_update", "provider"),
    [
        # A receipt of another provider naming our id.
        ("status = 'failed', error_code = 'outcome_unknown'", "twilio"),
        # A message that already has its provider id: the receipt is for some other message.
        ("status = 'sent', provider_message_id = 'wamid.OTHER', error_code = NULL", "meta"),
        # A message that failed for a known reason: nothing unknown to settle.
        ("status = 'failed', error_code = '131026'", "meta"),
        # A send not yet put to the provider (its claim's unsent mark still on).
        ("status = 'sending', unsent_claim = 1, error_code = NULL", "meta"),
    ],
)
def test_a_receipt_naming_our_id_for_a_message_it_cannot_be_for_changes_nothing(
    db, redis_client, row_update: str, provider: str
) -> None:
    own = a_reply("Your code is 1234")
    db.execute(f"UPDATE messages SET provider = 'meta', {row_update} WHERE id = %s", (own,))  # noqa: S608
    db.execute(
        "INSERT INTO dead_letters (task_name, message_id, payload, error, attempts)"
        " VALUES ('notify.send', %s, '{}', 'outcome_unknown: lost', 1)",
        (own,),
    )
    before = message(db, own)

    applied = sending.apply_status(
        db,
        provider=provider,
        provider_message_id="SM" + "ab" * 16 if provider == "twilio" else WAMID,
        status=DeliveryStatus.delivered,
        our_message_id=own,
    )

    assert applied is None
    assert message(db, own) == before
    assert pending_letters(db) == [own]


def test_a_signed_meta_receipt_with_a_forged_id_changes_nothing(db, redis_client) -> None:
    own, graph, _ = lost_graph_send(db)
    graph.__exit__(None, None, None)
    other = a_reply("Another one")
    before = message(db, other)

    forged = (f"wapipe:{own + 100}", f"wapipe:{other}", "wapipe:x", str(own), "someone else's")
    for n, data in enumerate(forged):
        [event] = post_meta(redis_client, meta_receipt(f"{WAMID}{n}", "delivered", data))
        assert apply(event) is None

    assert message(db, own)["status"] == "failed"
    assert message(db, other) == before
    assert pending_letters(db) == [own]
