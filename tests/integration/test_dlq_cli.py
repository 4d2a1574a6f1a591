"""``wapipe dlq list`` and ``wapipe dlq replay`` as subprocesses against the test database and Redis, on dead
letters made by notify.send's real path (the Twilio sender against a fake Twilio API that answers 500)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import pytest
import redis
from psycopg.types.json import Jsonb

from shared.commands import dlq
from shared.providers.twilio.client import TwilioSender
from shared.queues import QUEUES, Job, Publisher, get_publisher
from shared.replies import queue_reply
from shared.settings import Settings, load_settings
from tests.fakes.silent_server import SilentServer
from tests.fakes.twilio_api import ACCOUNT_SID, AUTH_TOKEN, WHATSAPP_NUMBER, FakeTwilioAPI
from tests.integration.test_inbound_routing import event, queued
from tests.integration.test_notify_unknown_outcome import SidlessTwilio
from workers.inbound import route
from workers.notify import dispatch

PHONES = ["+14155550101", "+14155550102"]


def wapipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "dlq", *args],
        env=dict(os.environ),  # the session's WAPIPE_DATABASE_URL / WAPIPE_REDIS_URL
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def twilio_settings(api_url: str, **more: Any) -> Settings:
    """Settings sending through the fake Twilio API at ``api_url``."""
    return load_settings(
        provider="twilio",
        twilio_api_url=api_url,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_whatsapp_number=WHATSAPP_NUMBER,
        **more,
    )


@pytest.fixture
def dead(db: psycopg.Connection, redis_client: redis.Redis) -> list[int]:
    """Two replies whose only attempt failed with a Twilio 500: dead letters; their notify jobs drained."""
    ids = []
    with FakeTwilioAPI() as fake:
        settings = twilio_settings(fake.url, send_max_attempts=1)
        for phone in PHONES:
            inbound = route(event("hello", phone=phone), load_settings())
            message_id = queue_reply(inbound.message_id, "Your order shipped")
            fake.respond(500)  # the one attempt WAPIPE_SEND_MAX_ATTEMPTS allows
            assert dispatch(message_id, settings=settings, sender=TwilioSender(settings)) == "dead"
            ids.append(message_id)
    redis_client.delete("notify")
    return ids


def letters(db: psycopg.Connection) -> list[dict]:
    return db.execute("SELECT id, message_id, replayed_at FROM dead_letters ORDER BY id").fetchall()


def test_list_shows_each_pending_letter_with_a_masked_recipient(db, dead: list[int]) -> None:
    result = wapipe("list")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "TASK", "MESSAGE", "TO", "ERROR", "ATTEMPTS", "CREATED"]
    assert len(lines) == 3
    for line, (letter, message_id) in zip(lines[1:], zip(letters(db), dead, strict=True), strict=True):
        cells = line.split()
        assert cells[:3] == [str(letter["id"]), "notify.send", str(message_id)]
        assert "20500" in line  # the provider's error code
    assert "0101" in result.stdout
    for phone in PHONES:
        assert phone not in result.stdout  # masked


def test_replay_queues_the_message_again_once(db, redis_client, dead: list[int]) -> None:
    first = letters(db)[0]

    result = wapipe("replay", str(first["id"]))

    assert result.returncode == 0, result.stderr
    assert "replayed" in result.stdout
    message = db.execute(
        "SELECT status, attempts, error_code FROM messages WHERE id = %s", (dead[0],)
    ).fetchone()
    assert (message["status"], message["attempts"], message["error_code"]) == ("queued", 0, None)
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": dead[0]})]
    assert letters(db)[0]["replayed_at"] is not None
    assert letters(db)[1]["replayed_at"] is None

    again = wapipe("replay", str(first["id"]))  # idempotent: nothing more happens
    assert again.returncode == 0
    assert "already replayed" in again.stdout
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": dead[0]})]
    assert "0101" not in wapipe("list").stdout  # only the other one is pending

    # The replayed message now goes out.
    with FakeTwilioAPI() as fake:
        settings = twilio_settings(fake.url)
        assert dispatch(dead[0], settings=settings, sender=TwilioSender(settings)) == "sent"
        assert len(fake.created()) == 1


def test_replay_all_and_bad_arguments(db, redis_client, dead: list[int]) -> None:
    assert wapipe("replay").returncode == 2
    assert wapipe("replay", "--all", "1").returncode == 2
    assert wapipe("replay", "999999").returncode == 1

    result = wapipe("replay", "--all")

    assert result.returncode == 0, result.stderr
    assert sorted(kwargs["message_id"] for _, kwargs in queued(redis_client, "notify")) == sorted(dead)
    assert all(letter["replayed_at"] is not None for letter in letters(db))
    assert wapipe("replay", "--all").stdout.strip() == "no pending dead letters"
    assert wapipe("list").stdout.strip() == "no pending dead letters"


def discards(db: psycopg.Connection) -> list[dict]:
    return db.execute(
        "SELECT id, replayed_at, discarded_at, discard_reason FROM dead_letters ORDER BY id"
    ).fetchall()


def messages_rows(db: psycopg.Connection) -> list[dict]:
    return db.execute("SELECT * FROM messages ORDER BY id").fetchall()


def nothing_queued(redis_client: redis.Redis) -> bool:
    return all(queued(redis_client, queue) == [] for queue in QUEUES)


@pytest.fixture
def no_jobs(redis_client: redis.Redis, dead: list[int]) -> None:
    """Every queue empty (the fixture's inbound messages left their handler jobs), so any job seen was
    enqueued by the command under test."""
    redis_client.delete(*QUEUES)


def test_discard_closes_pending_letters_with_their_reason_and_enqueues_nothing(
    db, redis_client, dead: list[int], no_jobs: None
) -> None:
    before = messages_rows(db)
    ids = [str(letter["id"]) for letter in letters(db)]

    result = wapipe("discard", *ids, "--reason", "delivered, per the Twilio log")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"dead letter {i}: discarded" for i in ids]
    for letter in discards(db):
        assert letter["discarded_at"] is not None
        assert letter["discard_reason"] == "delivered, per the Twilio log"
        assert letter["replayed_at"] is None
    assert wapipe("list").stdout.strip() == "no pending dead letters"
    assert nothing_queued(redis_client)
    assert messages_rows(db) == before  # the failed messages stay failed, untouched
    for phone in PHONES:
        assert phone not in result.stdout


def test_discard_needs_a_reason_and_ids(db, dead: list[int]) -> None:
    letter_id = str(letters(db)[0]["id"])

    assert wapipe("discard", letter_id).returncode == 2
    assert wapipe("discard", letter_id, "--reason", "  ").returncode == 2
    assert wapipe("discard", "--reason", "why").returncode == 2
    assert all(letter["discarded_at"] is None for letter in discards(db))


def test_discard_of_a_letter_not_pending_changes_nothing_and_exits_non_zero(
    db, redis_client, dead: list[int], no_jobs: None
) -> None:
    replayed, pending = (letter["id"] for letter in letters(db))
    assert wapipe("replay", str(replayed)).returncode == 0
    redis_client.delete("notify")
    before = discards(db)

    result = wapipe("discard", str(replayed), "999999", str(pending), "--reason", "not worth it")

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"dead letter {replayed}: already replayed",
        "dead letter 999999: unknown",
        f"dead letter {pending}: discarded",
    ]
    after = discards(db)
    assert after[0] == before[0]  # the replayed one keeps its state, no reason added
    assert after[1]["discard_reason"] == "not worth it"

    again = wapipe("discard", str(pending), "--reason", "changed my mind")
    assert again.returncode == 1
    assert again.stdout.strip() == f"dead letter {pending}: already discarded"
    assert discards(db)[1] == after[1]  # first reason and time kept
    assert nothing_queued(redis_client)


def test_replay_of_a_discarded_letter_does_nothing(db, redis_client, dead: list[int], no_jobs: None) -> None:
    letter_id = str(letters(db)[0]["id"])
    assert wapipe("discard", letter_id, "--reason", "resent by hand").returncode == 0
    before = messages_rows(db)

    result = wapipe("replay", letter_id)

    assert result.returncode == 1
    assert f"dead letter {letter_id}: discarded" in result.stdout
    assert nothing_queued(redis_client)
    assert messages_rows(db) == before  # still failed, not queued again
    assert discards(db)[0]["replayed_at"] is None

    result = wapipe("replay", "--all")  # only the other letter is pending
    assert result.returncode == 0, result.stderr
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": dead[1]})]


def test_a_replay_whose_task_cannot_be_enqueued_leaves_the_letter_pending(
    db, redis_client, dead: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = letters(db)[0]
    monkeypatch.setenv("WAPIPE_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there

    down = wapipe("replay", str(first["id"]))

    assert down.returncode == 1
    assert "not enqueued" in down.stdout
    assert "still pending" in down.stdout
    # Not closed with nothing done: still listed, and replayed once the broker is back.
    assert letters(db)[0]["replayed_at"] is None
    monkeypatch.undo()
    assert "0101" in wapipe("list").stdout
    up = wapipe("replay", str(first["id"]))
    assert up.returncode == 0, up.stdout
    # The first attempt had queued the message again already (notify.sweep enqueues a queued message whose
    # job is overdue), so this one only closes the letter.
    assert f"message {dead[0]} is queued" in up.stdout
    assert letters(db)[0]["replayed_at"] is not None


@pytest.fixture
def unknown_outcome(db: psycopg.Connection, redis_client: redis.Redis, dead: list[int]) -> int:
    """Beside the two letters of ``dead``, a reply Twilio created but answered without its sid: failed as
    ``outcome_unknown`` with a dead letter (the provider may well have delivered it)."""
    with SidlessTwilio() as fake:
        settings = twilio_settings(fake.url)
        inbound = route(event("hello", phone="+14155550103"), load_settings())
        message_id = queue_reply(inbound.message_id, "Your code is 1234")
        assert dispatch(message_id, settings=settings, sender=TwilioSender(settings)) == "dead"
    redis_client.delete(*QUEUES)
    return message_id


def test_replay_all_leaves_an_outcome_unknown_send_to_be_named(
    db, redis_client, dead: list[int], unknown_outcome: int
) -> None:
    unknown_letter = letters(db)[-1]
    assert unknown_letter["message_id"] == unknown_outcome

    result = wapipe("replay", "--all")

    assert result.returncode == 1  # something was left for the operator
    assert f"dead letter {unknown_letter['id']}: refused" in result.stdout
    assert "provider's log" in result.stdout
    # The two failed sends are queued again; the one that may have been delivered is not.
    assert sorted(kwargs["message_id"] for _, kwargs in queued(redis_client, "notify")) == sorted(dead)
    assert letters(db)[-1]["replayed_at"] is None
    status = db.execute("SELECT status FROM messages WHERE id = %s", (unknown_outcome,)).fetchone()
    assert status["status"] == "failed"

    named = wapipe("replay", str(unknown_letter["id"]))  # the operator checked the log and names it

    assert named.returncode == 0, named.stdout
    assert ("notify.send", {"message_id": unknown_outcome}) in queued(redis_client, "notify")
    assert letters(db)[-1]["replayed_at"] is not None


def test_replay_all_with_force_still_leaves_an_outcome_unknown_send_to_be_named(
    db, redis_client, dead: list[int], unknown_outcome: int
) -> None:
    # --force overrides the staleness of handler letters; it must not also resend, in bulk, messages the
    # provider may have delivered.
    result = wapipe("replay", "--all", "--force")

    assert result.returncode == 1
    queued_ids = sorted(kwargs["message_id"] for _, kwargs in queued(redis_client, "notify"))
    assert queued_ids == sorted(dead)
    assert letters(db)[-1]["replayed_at"] is None


def test_list_masks_a_phone_number_in_a_letter_stored_before_errors_were_scrubbed(db) -> None:
    # A letter as an older release wrote it: the provider's error text, number and all.
    db.execute(
        "INSERT INTO dead_letters (task_name, payload, error, attempts) VALUES ('notify.send', %s, %s, 60)",
        (Jsonb({"message_id": 1}), "SendError: 63024 Invalid recipient whatsapp:+15551234567"),
    )

    result = wapipe("list")

    assert result.returncode == 0, result.stderr
    assert "63024" in result.stdout
    assert "4567" in result.stdout  # enough to tell the recipient apart, as elsewhere
    assert "5551234" not in result.stdout


@pytest.mark.parametrize(
    "error",
    [
        "HTTPError: GET https://ops:Pa55w0rdZ@api.example.com/v1",
        "HTTPError: https://cb.example.com/s?token=Tok3nValueZ&x=1",
        "HTTPError: https://maps.example.com/g?q=a&api_key=K3yValueZ",
        "AuthError: Authorization: Bearer Tok3nValueZ.abc",
        "AuthError: OpenAI refused sk-proj-Tok3nValueZ123",
        "AuthError: token 0123456789abcdef0123456789abcdef",
    ],
)
def test_list_redacts_a_secret_in_a_letter_stored_before_errors_were_scrubbed(db, error: str) -> None:
    # A letter as an older release wrote it: the client's error text, credentials and all.
    db.execute(
        "INSERT INTO dead_letters (task_name, payload, error, attempts) VALUES ('verify.check', %s, %s, 3)",
        (Jsonb({"message_id": 1}), error),
    )

    result = wapipe("list")

    assert result.returncode == 0, result.stderr
    for secret in ("Pa55w0rdZ", "Tok3nValueZ", "K3yValueZ", "0123456789abcdef0123456789abcdef"):
        assert secret not in result.stdout
    assert "[redacted]" in result.stdout


def test_a_letter_of_an_unknown_task_is_reported_left_pending_and_the_rest_replayed(
    db, redis_client, dead: list[int], no_jobs: None
) -> None:
    # A task of a queue this release does not know (renamed or removed since the letter was written).
    stray = db.execute(
        "INSERT INTO dead_letters (task_name, payload, error, attempts) VALUES ('outbox.relay', %s, 'x', 1)"
        " RETURNING id",
        (Jsonb({}),),
    ).fetchone()["id"]

    result = wapipe("replay", "--all")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"dead letter {stray}: unknown task" in result.stdout
    assert sorted(kwargs["message_id"] for _, kwargs in queued(redis_client, "notify")) == sorted(dead)
    pending = db.execute("SELECT replayed_at FROM dead_letters WHERE id = %s", (stray,)).fetchone()
    assert pending["replayed_at"] is None  # still listed, for an operator to discard
    assert "outbox.relay" in wapipe("list").stdout


class LandedButTimedOut:
    """The broker takes the job, and its answer is lost (a timeout): the publish raises though it landed.
    Before raising, the job runs and fails again at once, as a worker taking it that moment would."""

    def __init__(self, real: Publisher, run_job: Callable[[], None]) -> None:
        self._real = real
        self._run_job = run_job
        self.redis = real.redis

    def publish(self, jobs: Iterable[Job]) -> list[bool]:
        self._real.publish(jobs)
        self._run_job()
        raise redis.TimeoutError("Timeout reading from socket")


def test_a_replay_whose_task_landed_and_failed_again_says_so(
    db, redis_client, dead: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = letters(db)[0]

    def fail_again() -> None:
        redis_client.delete("notify")  # taken by the worker below
        with FakeTwilioAPI() as fake:
            settings = twilio_settings(fake.url, send_max_attempts=1)
            fake.respond(500)
            assert dispatch(dead[0], settings=settings, sender=TwilioSender(settings)) == "dead"

    monkeypatch.setattr(dlq, "get_publisher", lambda: LandedButTimedOut(get_publisher(), fail_again))

    code = dlq.run(argparse.Namespace(action="replay", ids=[first["id"]], all=False, force=False))

    out = capsys.readouterr().out
    [again] = [row for row in letters(db) if row["message_id"] == dead[0] and row["id"] != first["id"]]
    # Before: "it shows replayed, but its task was not enqueued", while it had run and failed again.
    assert "not enqueued" not in out
    assert f"see dead letter {again['id']}" in out
    assert code == 1  # a letter for the message is still pending
    assert letters(db)[0]["replayed_at"] is not None  # its task did run: closed, the new one is pending
    assert again["replayed_at"] is None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_replay_interrupted_while_it_enqueues_leaves_each_letter_to_be_replayed_once(
    db, redis_client, dead: list[int], signum: signal.Signals
) -> None:
    # Ctrl-C (or a SIGTERM) while a letter's job was on its way to the broker ended the command there: the
    # letter was marked replayed, in a transaction already committed, and its job was never enqueued.
    with SilentServer() as broker:
        env = {**os.environ, "WAPIPE_REDIS_URL": f"redis://127.0.0.1:{broker.port}/0"}
        replay = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "dlq", "replay", "--all"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert broker.wait_for_request(timeout=60), "the replay never reached the broker"
            replay.send_signal(signum)  # while it waits on the broker's answer for the first letter
            out, err = replay.communicate(timeout=60)
        finally:
            if replay.poll() is None:
                replay.kill()
                replay.wait()

    # The first letter's job could not be enqueued: it is pending again, as the second one still is.
    assert all(letter["replayed_at"] is None for letter in letters(db))
    assert replay.returncode == 128 + signum, (replay.returncode, out, err)
    assert "Traceback" not in err
    [said] = err.strip().splitlines()
    assert said.startswith("wapipe dlq replay: interrupted"), said
    assert "1 of 2" in said, said

    again = wapipe("replay", "--all")

    assert again.returncode == 0, again.stdout + again.stderr
    assert all(letter["replayed_at"] is not None for letter in letters(db))
    # The first attempt had queued the first message again (notify.sweep enqueues a queued message whose
    # job is overdue), so the second only closes its letter; the other's job is enqueued once.
    assert f"message {dead[0]} is queued" in again.stdout
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": dead[1]})]
    statuses = db.execute("SELECT status FROM messages WHERE id = ANY(%s)", (dead,)).fetchall()
    assert [row["status"] for row in statuses] == ["queued", "queued"]


class InterruptedWhilePublishing:
    """The operator's Ctrl-C arrives while the job is being enqueued (the real publisher enqueues it)."""

    def __init__(self, real: Publisher) -> None:
        self._real = real
        self.redis = real.redis

    def publish(self, jobs: Iterable[Job]) -> list[bool]:
        os.kill(os.getpid(), signal.SIGINT)
        return self._real.publish(jobs)


def test_an_interrupt_while_a_letter_is_replayed_finishes_that_letter_and_stops(
    db, redis_client, dead: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dlq, "get_publisher", lambda: InterruptedWhilePublishing(get_publisher()))

    try:
        code = dlq.run(argparse.Namespace(action="replay", ids=[], all=True, force=False))
    except KeyboardInterrupt:
        pytest.fail("the interrupt ended the replay in the middle of a letter")

    assert code == 128 + signal.SIGINT
    captured = capsys.readouterr()
    first, second = letters(db)
    assert f"dead letter {first['id']}: replayed" in captured.out
    assert f"dead letter {second['id']}:" not in captured.out
    [said] = captured.err.strip().splitlines()
    assert "1 of 2" in said, said
    # The letter in hand was replayed, its job enqueued once; the next one was left for the next replay.
    assert queued(redis_client, "notify") == [("notify.send", {"message_id": dead[0]})]
    assert first["replayed_at"] is not None
    assert second["replayed_at"] is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the command's handling undone
