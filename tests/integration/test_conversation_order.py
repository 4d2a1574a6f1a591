"""Per conversation, messages are handled in the order they were sent, across stages and worker processes.

The scenario is the project bot's: ``/project mobile``, free text, ``/project website``, free text, sent
quickly. Each text must become a proposal in the project chosen just before it, and the replies must come
in the order of the messages, even though commands and parsing run on different queues and processes.
Then the turn itself, at the plain-function level: what holds it (dispatched and unanswered, not yet
routed), what never does (rate-limited messages), and that nothing holds it for ever (a stale predecessor,
a handler that failed for good).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis
import structlog
from celery.exceptions import Retry

from shared.commands.seed_demo import seed
from shared.db import answers, turns
from shared.db.pool import connection
from shared.queues import Job, Publisher
from shared.settings import load_settings
from shared.wire.events import InboundMessage
from tests.fakes.openai_api import FakeOpenAI
from workers import OUTAGE_RETRIES, ordering
from workers import commands as commands_worker
from workers.commands import handle_task
from workers.inbound import route

PHONE = "+15551230000"
BUSINESS = "+14155238886"
TEXT_1 = "Add a login page and a user dashboard by Friday, about 8 hours."
TEXT_2 = "Fix the checkout bug and write the release notes tomorrow, 3 hours each."
SCRIPT = ["/project mobile", TEXT_1, "/project website", TEXT_2]


def message(text: str, phone: str = PHONE) -> InboundMessage:
    """A Twilio text from ``phone`` to the business number, with a message id of its own."""
    return InboundMessage(
        provider="twilio",
        provider_message_id=f"SM{uuid.uuid4().hex}",
        business_number=BUSINESS,
        sender_phone=phone,
        text=text,
        raw={"Body": text},
    )


def event(text: str, phone: str = PHONE) -> dict[str, Any]:
    return message(text, phone).model_dump(mode="json")


def inbound_ids(db: psycopg.Connection) -> list[int]:
    return [row["id"] for row in db.execute("SELECT id FROM messages WHERE direction = 'in' ORDER BY id")]


def routed(db: psycopg.Connection, count: int) -> list[int] | None:
    rows = db.execute("SELECT id FROM messages WHERE direction = 'in' AND routed_at IS NOT NULL ORDER BY id")
    ids = [row["id"] for row in rows]
    return ids if len(ids) == count else None


def handled(db: psycopg.Connection, message_id: int) -> bool:
    row = db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    return row["handled_at"] is not None


def replies(db: psycopg.Connection) -> list[dict[str, Any]]:
    """The replies in the order they were made, with the inbound message each answers."""
    return db.execute(
        "SELECT o.body, i.id AS inbound_id FROM messages o"
        " JOIN messages i ON o.idempotency_key = 'reply:' || i.id"
        " WHERE o.direction = 'out' ORDER BY o.id"
    ).fetchall()


def proposal_projects(db: psycopg.Connection) -> list[tuple[int, str]]:
    rows = db.execute(
        "SELECT p.source_message_id, j.name FROM proposals p JOIN projects j ON j.id = p.project_id"
        " ORDER BY p.source_message_id"
    ).fetchall()
    return [(row["source_message_id"], row["name"]) for row in rows]


def assert_answered_in_order(db: psycopg.Connection, ids: list[int]) -> None:
    assert proposal_projects(db) == [(ids[1], "Mobile App"), (ids[3], "Website Redesign")]
    answers = replies(db)
    assert [row["inbound_id"] for row in answers] == ids
    assert answers[0]["body"].startswith("✅ Project: Mobile App")
    assert answers[1]["body"].startswith("✅ Proposal saved")
    assert answers[2]["body"].startswith("✅ Project: Website Redesign")
    assert answers[3]["body"].startswith("✅ Proposal saved")


# --- real worker processes -----------------------------------------------------------------------------


def test_a_project_switch_waits_for_the_text_sent_before_it(
    clean: None,
    db: psycopg.Connection,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    """No ai worker at first: the first text stays unparsed, so the second switch must wait for it (it
    would otherwise switch the project under the text). Started late, the ai workers let it through."""
    seed(PHONE)
    env = {"WAPIPE_MODE": "project", "WAPIPE_AI": "offline"}
    commands = start_worker(["inbound", "commands"], env=env)
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish(
        [Job("inbound.route", {"event": event(text)}) for text in SCRIPT]
    )
    ids = wait_for(lambda: routed(db, 4), what="the four messages routed")
    wait_for(lambda: handled(db, ids[0]), what="the first project switch")
    # The second switch's task ran: it put itself back to wait for the text before it (not answered it).
    outcomes = wait_for(lambda: task_outcomes(commands.lines(), "commands.handle"), what="the second switch")
    assert "retry" in outcomes
    assert outcomes.count("succeeded") == 1
    assert not handled(db, ids[2])
    assert [row["inbound_id"] for row in replies(db)] == [ids[0]]

    start_worker(["ai", "persist"], env=env)
    wait_for(lambda: len(replies(db)) == 4, what="all four answers")
    assert_answered_in_order(db, ids)


def task_outcomes(lines: list[str], task: str) -> list[str]:
    """What Celery logged of ``task``'s runs ("succeeded", "retry"), once there is more than one."""
    outcomes = [
        outcome
        for line in lines
        if task in line
        for outcome in ("succeeded", "retry")
        if f"{outcome} in" in line or f"{outcome}:" in line
    ]
    return outcomes if len(outcomes) >= 2 else []


class SlowOpenAI(FakeOpenAI):
    """A model that takes a moment to answer, so a quick command would overtake the parse if it could."""

    def _next(self) -> Any:
        time.sleep(0.3)
        return super()._next()


def test_rapid_messages_on_several_processes_are_answered_in_order(
    clean: None,
    db: psycopg.Connection,
    test_servers: dict[str, str],
    start_worker: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    seed(PHONE)
    with SlowOpenAI() as model:
        env = {
            "WAPIPE_MODE": "project",
            "WAPIPE_AI": "openai",
            "OPENAI_API_KEY": "sk-order",
            "OPENAI_BASE_URL": model.url,
        }
        start_worker(["inbound"], env=env)
        # Three processes, each taking commands, ai and persist tasks: any of them may pick any message.
        start_worker(["commands", "ai", "persist"], concurrency=3, env=env)
        Publisher(test_servers["WAPIPE_REDIS_URL"]).publish(
            [Job("inbound.route", {"event": event(text)}) for text in SCRIPT]
        )
        wait_for(lambda: len(replies(db)) == 4, what="all four answers")
    ids = inbound_ids(db)
    assert_answered_in_order(db, ids)
    assert len(model.completions()) == 2


# --- the turn, as plain functions ----------------------------------------------------------------------


def conversation(db: psycopg.Connection, phone: str = PHONE) -> tuple[int, int]:
    contact = db.execute("INSERT INTO contacts (phone) VALUES (%s) RETURNING id", (phone,)).fetchone()["id"]
    conversation_id = db.execute(
        "INSERT INTO conversations (contact_id, provider, business_number) VALUES (%s, 'twilio', %s)"
        " RETURNING id",
        (contact, BUSINESS),
    ).fetchone()["id"]
    return contact, conversation_id


def inbound(
    db: psycopg.Connection,
    convo: tuple[int, int],
    *,
    age: str = "0 seconds",
    routed: bool = True,
    dispatched: str | None = None,
    handler: str = "commands.handle",
    answered: bool = False,
) -> int:
    """An inbound message ``age`` old; ``dispatched``: how long ago the router dispatched it (None: never)."""
    contact, conversation_id = convo
    return db.execute(
        "INSERT INTO messages (conversation_id, contact_id, direction, provider, provider_message_id, body,"
        " created_at, routed_at, dispatched_at, dispatched_to, handled_at)"
        " VALUES (%(c)s, %(k)s, 'in', 'twilio', %(sid)s, 'hi', now() - %(age)s::interval,"
        " CASE WHEN %(routed)s THEN now() END, now() - %(dispatched)s::interval,"
        " CASE WHEN %(dispatched)s::interval IS NOT NULL THEN %(handler)s END,"
        " CASE WHEN %(answered)s THEN now() END) RETURNING id",
        {
            "c": conversation_id,
            "k": contact,
            "sid": f"SM{uuid.uuid4().hex}",
            "age": age,
            "routed": routed,
            "dispatched": dispatched,
            "handler": handler,
            "answered": answered,
        },
    ).fetchone()["id"]


def ahead_of(message_id: int, own_stage: str | None = None) -> turns.Turn:
    """The message's turn; a handler's first read of the message (shared/db/answers.py) must agree."""
    with connection() as conn:
        turn = turns.ahead_of(conn, message_id, own_stage)
    with connection() as conn:
        start = answers.start(conn, message_id, reply_key=f"reply:{message_id}", own_stage=own_stage)
    assert start.turn == turn
    return turn


def test_a_dispatched_unanswered_or_unrouted_message_holds_the_turn(
    clean: None, db: psycopg.Connection
) -> None:
    convo = conversation(db)
    answered = inbound(db, convo, dispatched="2 seconds", answered=True)
    stored_only = inbound(db, convo)  # routed without a dispatch: rate-limited, opted out, handed off
    pending = inbound(db, convo, dispatched="1 second")
    later = inbound(db, convo, dispatched="0 seconds")
    assert ahead_of(answered) == turns.Turn(None)
    assert ahead_of(stored_only) == turns.Turn(None)
    assert ahead_of(pending) == turns.Turn(None)
    assert ahead_of(later) == turns.Turn(pending)
    # Another conversation's messages never hold this one's turn.
    other = inbound(db, conversation(db, "+15550009999"), dispatched="0 seconds")
    assert ahead_of(other) == turns.Turn(None)
    # A message already answered (a redelivered task) waits for nothing.
    db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (later,))
    assert ahead_of(later) == turns.Turn(None)

    # Not routed yet: the router may still hand it to a handler, so what comes after it waits.
    unrouted = inbound(db, convo, routed=False)
    last = inbound(db, convo, dispatched="0 seconds")
    db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (pending,))
    assert ahead_of(last) == turns.Turn(unrouted)


def test_a_stale_predecessor_is_passed_over_with_a_warning(
    clean: None, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    convo = conversation(db)
    died = inbound(db, convo, age="6 minutes", dispatched="6 minutes")  # its handler died for good
    message = inbound(db, convo, dispatched="0 seconds")
    assert ahead_of(message) == turns.Turn(None, (died,))
    with structlog.testing.capture_logs() as logs:
        # A logger made inside the capture: the module's may have cached an earlier configuration's
        # processors (cache_logger_on_first_use) when an earlier test used it, which the capture would not
        # see.
        monkeypatch.setattr(ordering, "log", structlog.get_logger(ordering.__name__))
        # Dispatched just now, and nothing but the dead message ahead: it goes at once, each time, and so
        # does every message after it.
        assert ordering.check_turn(message) is True
        assert ordering.check_turn(message) is True
    warned = [entry["earlier_message_id"] for entry in logs if entry["log_level"] == "warning"]
    assert warned == [died, died]
    task = QueuedTask()  # likewise with the turn read with the message
    commands_worker.handle(message, task=task)
    assert task.waits == []
    assert [row["inbound_id"] for row in replies(db)] == [message]
    # Past the horizon it is not even looked at any more.
    db.execute(
        "UPDATE messages SET created_at = now() - %(horizon)s,"
        " dispatched_at = dispatched_at - %(horizon)s WHERE id <> %(id)s",
        {"horizon": turns.HORIZON, "id": message},
    )
    assert ahead_of(message) == turns.Turn(None)


def test_a_message_that_may_be_found_stale_itself_looks_twice_before_passing_over(
    clean: None, db: psycopg.Connection
) -> None:
    """Dispatched long ago (waiting through a backlog), a message that would pass over a dead one is close
    to stale itself: a later message may soon pass it over, so it marks itself first and looks again."""
    convo = conversation(db)
    died = inbound(db, convo, age="6 minutes", dispatched="6 minutes")
    old = inbound(db, convo, age="280 seconds", dispatched="280 seconds")
    assert ahead_of(old) == turns.Turn(None, (died,))
    assert ordering.check_turn(old) is False
    assert ordering.check_turn(old) is True


def test_a_fresh_message_behind_two_stale_ones_looks_twice(clean: None, db: psycopg.Connection) -> None:
    """The second stale message may be a waiter about to pass over the first, not yet marked: a message
    dispatched just now still looks again before passing both, and then waits for it if it was."""
    convo = conversation(db)
    died, waiter = (inbound(db, convo, age="6 minutes", dispatched="6 minutes") for _ in range(2))
    fresh = inbound(db, convo, dispatched="0 seconds")
    assert ordering.check_turn(fresh) is False  # its first look
    assert ordering.check_turn(waiter) is False  # the waiter's first look marks it
    assert ordering.check_turn(fresh) is False  # so the fresh one waits for it
    assert ordering.check_turn(waiter) is True

    # Both dead: the second look passes them over.
    convo = conversation(db, "+15550001111")
    died, lost = (inbound(db, convo, age="6 minutes", dispatched="6 minutes") for _ in range(2))
    fresh = inbound(db, convo, dispatched="0 seconds")
    assert ahead_of(fresh) == turns.Turn(None, (died, lost))
    assert ordering.check_turn(fresh) is False
    assert ordering.check_turn(fresh) is True


def test_a_flows_step_behind_a_stale_message_looks_twice(clean: None, db: psycopg.Connection) -> None:
    """flows.step reads its turn without the other flows.step messages: its lone stale predecessor may be
    a waiter about to pass over one of those, so it looks twice, however fresh."""
    convo = conversation(db)
    inbound(db, convo, age="6 minutes", dispatched="6 minutes", handler="flows.step")
    verify = inbound(db, convo, age="6 minutes", dispatched="6 minutes", handler="verify.check_code")
    step = inbound(db, convo, dispatched="0 seconds", handler="flows.step")
    assert ahead_of(step, own_stage="flows.step") == turns.Turn(None, (verify,))
    assert ordering.check_turn(step, own_stage="flows.step") is False
    assert ordering.check_turn(step, own_stage="flows.step") is True


def test_a_handler_that_fails_for_good_releases_the_turn(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    convo = conversation(db)
    failing = inbound(db, convo, dispatched="0 seconds")
    later = inbound(db, convo, dispatched="0 seconds")
    assert ahead_of(later) == turns.Turn(failing)
    ordering.mark_retrying(failing, due=time.time() + 60)  # its retries ran out after this one
    handle_task.on_failure(RuntimeError("boom"), "task-id", (), {"message_id": failing}, None)
    assert ahead_of(later) == turns.Turn(None)
    row = db.execute("SELECT dispatched_at, handled_at FROM messages WHERE id = %s", (failing,)).fetchone()
    assert row == {"dispatched_at": None, "handled_at": None}  # released, not claimed as answered
    assert redis_client.exists(ordering.retrying_key(failing)) == 0  # nor claimed as retrying


def test_a_stale_predecessor_being_retried_is_waited_for(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    """A database outage longer than the grace: the earlier message's handler is retrying after failing, not
    dead. The later message waits for it (however the stage reads its turn), its wait counted from when
    that retry is due, and still while the retry is a little overdue (a busy queue)."""
    convo = conversation(db)
    died = inbound(db, convo, age="20 minutes", dispatched="20 minutes")
    retrying = inbound(db, convo, age="20 minutes", dispatched="20 minutes")
    later = inbound(db, convo, age="20 minutes", dispatched="20 minutes")
    assert ahead_of(later) == turns.Turn(None, (died, retrying))
    now = time.time()
    ordering.mark_retrying(retrying, due=now + 120, now=now)

    task = QueuedTask()
    with pytest.raises(Retry):
        ordering.take_turn(task, later)
    with pytest.raises(Retry):
        commands_worker.handle(later, task=task)  # the turn read with the message
    assert [wait["headers"][ordering.WAITING_SINCE_HEADER] for wait in task.waits] == [now + 120] * 2
    assert ordering.check_turn(later) is False

    overdue = now - turns.STALE_AFTER.total_seconds() + 10
    redis_client.delete(ordering.retrying_key(retrying))  # a mark never goes back: set it afresh
    ordering.mark_retrying(retrying, due=overdue, now=now)
    assert ordering.waits_for(later, ahead_of(later), now=now) == ordering.Wait(overdue)
    assert replies(db) == []


def test_a_message_waiting_for_a_retried_one_is_waited_for_in_turn(
    clean: None, db: psycopg.Connection
) -> None:
    """Through an outage longer than the grace, three handlers failed and were retried. The second's retry
    came back long ago and has been waiting since for the first, which is still retrying. Once the first is
    answered, the second is about to go: the third waits for it, though the second's own retry was due
    longer ago than the grace."""
    convo = conversation(db)
    first, second, third = (inbound(db, convo, age="20 minutes", dispatched="20 minutes") for _ in range(3))
    now, grace = time.time(), turns.STALE_AFTER.total_seconds()
    ordering.mark_retrying(first, due=now + 120, now=now)
    ordering.mark_retrying(second, due=now - grace - 1, now=now)
    with pytest.raises(Retry):
        ordering.take_turn(QueuedTask(), second)

    db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (first,))
    for _ in range(2):  # however many times it looks
        assert ordering.check_turn(third) is False
    assert ordering.check_turn(second) is True


def test_two_waiters_finding_the_same_message_stale_go_in_turn(clean: None, db: psycopg.Connection) -> None:
    """The first message's handler died; the next two were dispatched the same moment and waited for it.
    Both find it stale at once, and the second is stale by then too: whichever looks first, the second is
    answered before the third."""
    convo = conversation(db)
    died, second, third = (inbound(db, convo, age="6 minutes", dispatched="6 minutes") for _ in range(3))
    assert ahead_of(third) == turns.Turn(None, (died, second))
    third_went = False
    for _ in range(3):  # the third looks first each time
        third_went = third_went or ordering.check_turn(third)
        if ordering.check_turn(second):
            break
    else:
        pytest.fail("the second message never went")
    assert not third_went
    assert ordering.check_turn(third) is False  # the second is being answered
    db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (second,))
    assert ordering.check_turn(third) or ordering.check_turn(third)


def test_a_waiter_stale_behind_a_live_message_keeps_its_turn(
    clean: None, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    """The earlier message's route failed after storing it and was retried: it dispatched it again a
    moment ago, long after the second message was dispatched. The second has waited all along, stale
    itself by now, behind a message that is not: once the first is answered, the second is about to go,
    so the third, however fresh, waits for it instead of passing it over as dead."""
    convo = conversation(db)
    first = inbound(db, convo, age="8 minutes", dispatched="10 seconds")
    second = inbound(db, convo, age="8 minutes", dispatched="8 minutes")
    third = inbound(db, convo, dispatched="0 seconds")
    assert ahead_of(second) == turns.Turn(first)
    assert ordering.check_turn(second) is False
    assert ordering.check_turn(third) is False

    db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (first,))
    for _ in range(2):  # however many times it looks
        assert ordering.check_turn(third) is False
    assert ordering.check_turn(second) is True

    # A waiter dispatched a moment ago cannot be found stale before its next look: it costs no mark.
    convo = conversation(db, "+15550002222")
    inbound(db, convo, dispatched="10 seconds")
    fresh = inbound(db, convo, dispatched="0 seconds")
    assert ordering.check_turn(fresh) is False
    assert redis_client.exists(ordering.retrying_key(fresh)) == 0


def test_more_than_fifty_stale_messages_hide_nothing_after_them(clean: None, db: psycopg.Connection) -> None:
    """A burst from one sender whose handlers were lost (the broker's data with them), then a message
    being answered now: every message after it waits for it, however many dead ones come first; and among
    the dead ones, one whose handler is retrying is waited for wherever it is."""
    convo = conversation(db)
    dead = [inbound(db, convo, age="20 minutes", dispatched="20 minutes") for _ in range(60)]
    live = inbound(db, convo, dispatched="10 seconds")
    later = inbound(db, convo, dispatched="0 seconds")
    for _ in range(3):  # however many times it looks
        assert ordering.check_turn(later) is False
    assert ahead_of(later) == turns.Turn(live, tuple(dead))

    db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (live,))
    now = time.time()
    ordering.mark_retrying(dead[-5], due=now + 60, now=now)
    assert ahead_of(later) == turns.Turn(None, tuple(dead))
    assert ordering.waits_for(later, ahead_of(later), now=now) == ordering.Wait(now + 60)
    for _ in range(3):
        assert ordering.check_turn(later) is False


def longest_outage_retries() -> float:
    """How long a task retried through an outage (OUTAGE_RETRIES) may take to give up: the most each of its
    countdowns may be (Celery's exponential backoff, each drawn below its cap), added up."""
    backoff, cap = OUTAGE_RETRIES["retry_backoff"], OUTAGE_RETRIES["retry_backoff_max"]
    return sum(min(cap, backoff * 2**retry) for retry in range(OUTAGE_RETRIES["max_retries"]))


def test_a_predecessor_retried_through_the_longest_outage_is_still_waited_for(
    clean: None, db: psycopg.Connection
) -> None:
    """Its handler failing through an outage of more than an hour, the earlier message's last retry is due
    about 68 minutes after it was dispatched, and holds the turn for the grace past then: until then, a
    later message waits for it, however long ago it was dispatched."""
    convo = conversation(db)
    grace = turns.STALE_AFTER.total_seconds()
    dispatched = f"{longest_outage_retries() + grace - 60} seconds"  # its last retry due a while ago
    retrying = inbound(db, convo, age=dispatched, dispatched=dispatched)
    later = inbound(db, convo, dispatched="0 seconds")
    now = time.time()
    ordering.mark_retrying(retrying, due=now - grace + 60, now=now)
    assert ahead_of(later) == turns.Turn(None, (retrying,))
    assert ordering.waits_for(later, ahead_of(later), now=now) == ordering.Wait(now - grace + 60)


def test_a_stale_predecessor_whose_retry_is_long_overdue_is_passed_over(
    clean: None, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its retry due longer than the grace ago, a handler marked as retrying is lost after all."""
    convo = conversation(db)
    lost = inbound(db, convo, age="20 minutes", dispatched="20 minutes")
    later = inbound(db, convo, dispatched="0 seconds")
    now = time.time()
    due = now - turns.STALE_AFTER.total_seconds() - 1
    ordering.mark_retrying(lost, due=due, now=due - 60)  # the mark itself is still there
    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(ordering, "log", structlog.get_logger(ordering.__name__))  # see above
        assert ordering.waits_for(later, ahead_of(later), now=now) is None
        assert ordering.check_turn(later) is True
    warned = [entry["earlier_message_id"] for entry in logs if entry["log_level"] == "warning"]
    assert warned == [lost, lost]


class QueuedTask:
    """What :func:`workers.ordering.take_turn` sees of a ``commands.handle`` task delivered by a worker;
    records the waits it schedules instead of publishing them."""

    name = "commands.handle"

    def __init__(self) -> None:
        self.request = SimpleNamespace(called_directly=False, is_eager=False)
        self.waits: list[dict[str, Any]] = []

    def signature_from_request(self, request: Any, **options: Any) -> Any:
        return SimpleNamespace(apply_async=lambda: self.waits.append(options))


def test_a_command_waits_for_its_turn_before_any_effect(clean: None, db: psycopg.Connection) -> None:
    """commands.handle checks the turn in the read that loads its message, before it answers."""
    seed(PHONE)
    convo = conversation(db)
    earlier = inbound(db, convo, dispatched="0 seconds", handler="ai.parse_proposal")
    switch = inbound(db, convo, dispatched="0 seconds")
    db.execute("UPDATE messages SET body = '/project mobile' WHERE id = %s", (switch,))
    task = QueuedTask()
    with pytest.raises(Retry):
        commands_worker.handle(switch, task=task)
    [wait] = task.waits
    assert wait["headers"][ordering.TURN_WAITS_HEADER] == 1
    assert time.time() - wait["headers"][ordering.WAITING_SINCE_HEADER] < 60  # when it began to wait
    assert replies(db) == []
    assert not handled(db, switch)

    db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (earlier,))
    reply_id = commands_worker.handle(switch, task=task)
    assert [row["inbound_id"] for row in replies(db)] == [switch]
    assert handled(db, switch)
    assert len(task.waits) == 1
    # Redelivered after it answered: handled, so nothing is ahead of it; the same reply, sent again.
    db.execute("UPDATE messages SET handled_at = NULL WHERE id = %s", (earlier,))
    assert commands_worker.handle(switch, task=task) == reply_id
    assert len(replies(db)) == 1


def test_flows_waits_only_for_other_stages_messages(clean: None, db: psycopg.Connection) -> None:
    convo = conversation(db)
    menu_answer = inbound(db, convo, dispatched="0 seconds", handler="flows.step")
    step = inbound(db, convo, dispatched="0 seconds", handler="flows.step")
    # flows.step drains its own earlier messages in order under its lock (shared/flows/service.py).
    assert ahead_of(step, own_stage="flows.step") == turns.Turn(None)
    assert ahead_of(step) == turns.Turn(menu_answer)
    verify = inbound(db, convo, dispatched="0 seconds", handler="verify.check_code")
    after_verify = inbound(db, convo, dispatched="0 seconds", handler="flows.step")
    assert ahead_of(after_verify, own_stage="flows.step") == turns.Turn(verify)


def test_rate_limited_messages_never_hold_the_turn(
    clean: None, db: psycopg.Connection, redis_client: Any
) -> None:
    """The real router: a rate-limited message is stored and routed, never dispatched."""
    first = route(event("hello"), load_settings(rate_limit_per_minute=1))
    limited = route(event("hello again"), load_settings(rate_limit_per_minute=1))
    later = route(event("/help"), load_settings(rate_limit_per_minute=100))
    assert (first.action, limited.action, later.action) == ("handler", "rate_limited", "handler")
    dispatched = db.execute(
        "SELECT id, dispatched_to FROM messages"
        " WHERE direction = 'in' AND dispatched_at IS NOT NULL ORDER BY id"
    ).fetchall()
    assert dispatched == [
        {"id": first.message_id, "dispatched_to": "commands.handle"},
        {"id": later.message_id, "dispatched_to": "commands.handle"},
    ]
    assert first.message_id is not None
    assert later.message_id is not None
    assert ahead_of(later.message_id) == turns.Turn(first.message_id)
    commands_worker.handle(first.message_id)  # answered: the rate-limited one is all that is left before
    assert ahead_of(later.message_id) == turns.Turn(None)


@pytest.mark.parametrize(("waits", "low", "high"), [(0, 0.025, 0.05), (3, 0.2, 0.4), (50, 0.5, 1.0)])
def test_waits_start_short_and_stay_at_most_a_second(waits: int, low: float, high: float) -> None:
    assert low <= ordering.wait_seconds(waits) <= high
