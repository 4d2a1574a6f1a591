"""The spine with real Celery worker processes: route -> handler job; reply -> notify.send -> fake Twilio ->
status receipts; the inbound rate limit held across two worker processes."""

from __future__ import annotations

import uuid

from shared.queues import Job, Publisher
from shared.replies import queue_reply
from shared.wire.events import InboundMessage, StatusUpdate
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.integration.test_inbound_routing import event, queued
from workers.inbound import RATE_LIMIT_TEXT, route


def publish_route(redis_url: str, payload: dict, dedupe: bool = True) -> None:
    """What the ingress does with a verified webhook."""
    key = InboundMessage.model_validate(payload).dedupe_key if dedupe else None
    Publisher(redis_url).publish([Job("inbound.route", {"event": payload}, dedupe_key=key)])


def test_an_inbound_job_from_a_new_sender_enqueues_the_commands_handler_once(
    db, redis_client, test_servers, start_worker, wait_for
) -> None:
    worker = start_worker(["inbound", "notify", "status"], concurrency=2, env={"WAPIPE_MODE": "project"})
    payload = event("hello", phone="+15557654321")
    publish_route(test_servers["WAPIPE_REDIS_URL"], payload)
    publish_route(test_servers["WAPIPE_REDIS_URL"], payload, dedupe=False)  # a duplicate past the ingress

    jobs = wait_for(lambda: queued(redis_client, "commands"), what="the commands job")
    # Both deliveries finish: the later one either sees a routed duplicate, or (racing the first) finishes
    # the routing itself, where the handler job's dedupe key still keeps one job.
    wait_for(
        lambda: (
            sum(
                ("duplicate inbound message ignored" in line or "inbound message routed" in line)
                for line in worker.lines()
            )
            == 2
        ),
        what="both deliveries to be routed",
    )
    message = db.execute("SELECT id, body, routed_at FROM messages WHERE direction = 'in'").fetchall()
    assert len(message) == 1
    assert message[0]["routed_at"] is not None
    assert queued(redis_client, "commands") == jobs == [("commands.handle", {"message_id": message[0]["id"]})]
    assert "+15557654321" not in worker.output()  # phone numbers are masked in worker logs


def test_a_reply_goes_through_notify_to_twilio_once_and_receipts_move_it_forward(
    db, redis_client, test_servers, start_worker, wait_for
) -> None:
    with FakeTwilioAPI() as fake:
        fake.respond(500)  # the first attempt fails; the in-call retry sends it
        worker = start_worker(["notify", "status"], env=fake.credentials_env())
        inbound = route(event("hello"))
        message_id = queue_reply(inbound.message_id, "Hi Ana!")

        row = wait_for(
            lambda: db.execute(
                "SELECT status, provider, provider_message_id FROM messages"
                " WHERE id = %s AND status = 'sent'",
                (message_id,),
            ).fetchone(),
            what="the reply to be sent",
        )
        assert [r.status for r in fake.requests()] == [500, 201]
        [created] = fake.created()
        assert created.form["Body"] == "Hi Ana!"
        assert (row["provider"], row["provider_message_id"]) == ("twilio", created.sid)

        publisher = Publisher(test_servers["WAPIPE_REDIS_URL"])
        for status in ("read", "delivered"):  # out of order
            update = StatusUpdate(provider="twilio", provider_message_id=created.sid, status=status)
            publisher.publish(
                [Job("status.apply", {"event": update.model_dump(mode="json")}, update.dedupe_key)]
            )
        wait_for(
            lambda: (
                db.execute(
                    "SELECT count(*) AS n FROM message_events"
                    " WHERE message_id = %s AND status IN ('read', 'delivered')",
                    (message_id,),
                ).fetchone()["n"]
                == 2
            ),
            what="both receipts in the timeline",
        )
        assert (
            db.execute("SELECT status FROM messages WHERE id = %s", (message_id,)).fetchone()["status"]
            == "read"
        )
        # A redelivered notify.send for the same message sends nothing more.
        publisher.publish([Job("notify.send", {"message_id": message_id})])
        wait_for(lambda: "outbound message already handled" in worker.output(), what="the redelivered job")
        assert len(fake.created()) == 1


def test_eleven_messages_across_two_worker_processes_ten_handled_one_polite_reply(
    db, redis_client, test_servers, start_worker, wait_for
) -> None:
    start_worker(["inbound"], concurrency=2)
    start_worker(["inbound"], concurrency=2)
    phone = "+15550001234"
    for i in range(11):
        publish_route(
            test_servers["WAPIPE_REDIS_URL"], event(f"message {i} {uuid.uuid4().hex[:4]}", phone=phone)
        )

    wait_for(
        lambda: (
            db.execute(
                "SELECT count(*) AS n FROM messages WHERE direction = 'in' AND routed_at IS NOT NULL"
            ).fetchone()["n"]
            == 11
        ),
        what="all 11 messages routed",
    )
    assert len(queued(redis_client, "commands")) == 10
    replies = db.execute("SELECT body FROM messages WHERE direction = 'out'").fetchall()
    assert [r["body"] for r in replies] == [RATE_LIMIT_TEXT]
    assert len(queued(redis_client, "notify")) == 1
