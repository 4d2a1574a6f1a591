"""flows.step's plain function: order, exactly-once and locking, with real PostgreSQL, Redis and replies."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis

from shared.db import messages, turns
from shared.flows import builtin, registry, repository
from shared.flows.pack import PACKS_DIR, Pack, load_pack, parse_pack
from shared.flows.registry import FlowContext
from shared.flows.seed import seed_shopfloor
from shared.flows.service import FORM_NOTE_KEY, LOCK_KEY, LOCK_SECONDS, Busy, Target, process, session_key
from shared.queues import FORGONE, handler_key
from shared.replies import queue_reply
from shared.sessions import Selection, Sessions
from shared.settings import Mode, get_settings
from tests.integration.flows_support import add_conversation, add_inbound, make_conversation
from workers.inbound import pick_handler

PHONE = "+15550100001"


class User:
    def __init__(self, db: psycopg.Connection, redis_client: redis.Redis) -> None:
        self.db, self.redis = db, redis_client
        self.contact_id, self.conversation_id = make_conversation(db, PHONE)
        self.pack: Pack = load_pack("shopfloor")

    def store(
        self, text: str, *, dispatched: bool = True, routed: bool = True, reply_id: str | None = None
    ) -> int:
        """Store a message as inbound.route would; ``dispatched``: it enqueued a handler for it."""
        message_id = add_inbound(
            self.db, self.contact_id, self.conversation_id, text, routed=False, reply_id=reply_id
        )
        if dispatched:  # before it is routed, as the router dispatches
            handler = pick_handler(text, linked=False, mode=Mode.menu)
            turns.mark_dispatched(self.db, message_id, handler)
            self.redis.set(handler_key(message_id), 1)
        if routed:
            messages.mark_routed(self.db, message_id)
        return message_id

    @property
    def target(self) -> Target:
        """Any message of the conversation: what its session and lock are keyed by."""
        return Target(0, self.conversation_id, self.contact_id, PHONE)

    def step(
        self,
        message_id: int,
        reply: Any = queue_reply,
        now: datetime | None = None,
        *,
        pack: Pack | None = None,
        lease_seconds: float = LOCK_SECONDS,
    ) -> int:
        target = Target(message_id, self.conversation_id, self.contact_id, PHONE)
        return process(
            target,
            conn=self.db,
            redis_client=self.redis,
            pack=pack or self.pack,
            reply=reply,
            now=now,
            lease_seconds=lease_seconds,
        )

    @property
    def lock(self) -> str:
        return LOCK_KEY.format(conversation_id=self.conversation_id)

    def replies(self, conversation_id: int | None = None) -> list[str]:
        rows = self.db.execute(
            "SELECT body FROM messages WHERE direction = 'out' AND conversation_id = %s ORDER BY id",
            (conversation_id or self.conversation_id,),
        )
        return [row["body"] for row in rows]

    def handled(self, message_id: int) -> bool:
        row = self.db.execute("SELECT handled_at FROM messages WHERE id = %s", (message_id,)).fetchone()
        return row["handled_at"] is not None

    @property
    def flow(self) -> dict[str, Any]:
        return Sessions(self.redis).load(session_key(self.target)).get("flow", {})


@pytest.fixture
def user(clean: None, db: psycopg.Connection, redis_client: redis.Redis) -> User:
    seed_shopfloor(db)
    return User(db, redis_client)


def test_a_redelivered_step_does_not_advance_the_flow_twice(user: User) -> None:
    hi, one = user.store("hi"), user.store("1")
    assert user.step(hi) == 1
    assert user.step(one) == 1
    assert user.step(one) == 0
    assert user.step(hi) == 0
    assert user.flow["flow"] == "report_defect"
    assert user.flow["step"] == 0
    assert user.flow["last_message_id"] == one
    assert len(user.replies()) == 2
    handled = user.db.execute("SELECT count(*) AS n FROM messages WHERE handled_at IS NOT NULL").fetchone()
    assert handled["n"] == 2


def test_a_later_task_answers_earlier_messages_first_in_order(user: User) -> None:
    ids = [user.store(text) for text in ("hi", "2", "ORD-12345")]
    assert user.step(ids[2]) == 3  # its task ran first: it handles all three, oldest first
    assert user.step(ids[0]) == 0
    assert user.step(ids[1]) == 0
    replies = user.replies()
    assert "1. Report a defect" in replies[0]
    assert "Which order?" in replies[1]
    assert "Order ORD-12345" in replies[2]
    assert user.flow["flow"] is None


def test_messages_the_router_only_stored_are_skipped(user: User) -> None:
    first = user.store("1")
    rate_limited = user.store("ORD-12346", dispatched=False)
    verify = user.store("VERIFY 123456")
    answer = user.store("ORD-12345")
    assert user.step(answer) == 2
    assert user.step(first) == 0
    assert user.step(rate_limited) == 0
    assert user.step(verify) == 0
    assert user.flow["answers"] == {"order_number": "ORD-12345"}
    assert len(user.replies()) == 2


def test_a_message_whose_route_gave_up_is_skipped(user: User) -> None:
    """A route that failed for good before publishing its handler's task took that task's key, so that no
    other run of the route publishes it after (workers/ordering.py give_up_turn). The key is set, yet no
    handler was given the message: it is not the flow's to answer (its dead letter, replayed, routes it)."""
    first = user.store("1")
    given_up = user.store("ORD-12346", dispatched=False)
    user.db.execute("UPDATE messages SET dispatched_to = 'flows.step' WHERE id = %s", (given_up,))
    user.redis.set(handler_key(given_up), FORGONE)
    answer = user.store("ORD-12345")
    assert user.step(answer) == 2
    assert user.step(first) == 0
    assert user.flow["answers"] == {"order_number": "ORD-12345"}
    assert len(user.replies()) == 2


def test_a_verify_whose_code_was_checked_is_still_skipped(user: User) -> None:
    """Once the verify stage has checked a VERIFY, its stored code is redacted: a step behind it, before
    the verify stage marks it answered, must still leave it to that stage, not read it as a menu answer."""
    verify = user.store("VERIFY [redacted]")
    user.db.execute("UPDATE messages SET dispatched_to = 'verify.check_code' WHERE id = %s", (verify,))
    answer = user.store("1")
    assert user.step(answer) == 1
    keys = user.db.execute("SELECT idempotency_key FROM messages WHERE direction = 'out'").fetchall()
    assert [row["idempotency_key"] for row in keys] == [f"reply:{answer}"]


def test_an_earlier_message_not_yet_routed_makes_the_step_wait(user: User) -> None:
    first = user.store("1", routed=False)
    second = user.store("ORD-12345")
    with pytest.raises(Busy):
        user.step(second)
    user.db.execute("UPDATE messages SET routed_at = now() WHERE id = %s", (first,))
    assert user.step(second) == 2
    assert user.flow["step"] == 1


def stored_ago(user: User, message_id: int, minutes: float) -> None:
    """Backdate a message by the database's own clock, as if the router stored it ``minutes`` ago."""
    user.db.execute(
        "UPDATE messages SET created_at = now() - make_interval(mins => %s) WHERE id = %s",
        (minutes, message_id),
    )


def sent_ago(user: User, message_id: int, minutes: float) -> None:
    """Backdate a message as if its user sent it ``minutes`` ago (the provider's time, and the router's)."""
    user.db.execute(
        "UPDATE messages SET created_at = now() - make_interval(mins => %(m)s),"
        " payload = payload || jsonb_build_object('sent_at', now() - make_interval(mins => %(m)s))"
        " WHERE id = %(id)s",
        {"m": minutes, "id": message_id},
    )


def answered_ago(user: User, message_id: int, minutes: float) -> None:
    """Backdate when the flow answered a message (its next question), by the database's clock."""
    user.db.execute(
        "UPDATE messages SET handled_at = now() - make_interval(mins => %s) WHERE id = %s",
        (minutes, message_id),
    )


def _half_a_defect_report(user: User, minutes_ago: float, *, asked_ago: float | None = None) -> None:
    """Report a defect, order ORD-12345, sent ``minutes_ago``: the form now asks for the defect type,
    asked ``asked_ago`` (when the answers were sent, unless a backlog held them)."""
    for text in ("1", "ORD-12345"):
        message_id = user.store(text)
        sent_ago(user, message_id, minutes_ago)
        user.step(message_id)
        answered_ago(user, message_id, minutes_ago if asked_ago is None else asked_ago)


def test_an_answer_sent_in_time_is_read_though_a_backlog_outlived_the_session(user: User) -> None:
    """The user answered 5 minutes after the question; the flows workers were down for 40 (a backlog):
    the session has expired by the time the step runs, but the form had not timed out for the user."""
    _half_a_defect_report(user, minutes_ago=40)
    answer = user.store("2")  # Return
    sent_ago(user, answer, 35)
    Sessions(user.redis).clear(session_key(user.target))  # the session's TTL ran out during the outage
    assert user.step(answer) == 1
    reply = user.replies()[-1]
    assert "timed out" not in reply
    assert "How severe is it?" in reply
    assert user.flow["answers"] == {"order_number": "ORD-12345", "defect_type": "Return"}


def test_an_answer_to_a_question_a_backlog_delayed_is_read_though_the_last_answer_is_older(
    user: User,
) -> None:
    """The user answered 40 minutes ago; a backlog held that answer, so its next question was asked only
    now, and the user answers it at once: the form did not time out, whatever the last answer's age."""
    _half_a_defect_report(user, minutes_ago=40, asked_ago=0)
    assert user.step(user.store("2")) == 1  # Return
    reply = user.replies()[-1]
    assert "timed out" not in reply
    assert "How severe is it?" in reply
    assert user.flow["answers"] == {"order_number": "ORD-12345", "defect_type": "Return"}


def test_a_backlog_past_the_session_is_answered_in_order_by_a_later_task(user: User) -> None:
    """Two answers sent in time wait out an outage longer than the session; the later one's task runs
    first: both are read, oldest first, and the earlier one's task finds nothing left to do."""
    _half_a_defect_report(user, minutes_ago=40)
    defect_type, severity = user.store("2"), user.store("High")
    sent_ago(user, defect_type, 35)
    sent_ago(user, severity, 34)
    Sessions(user.redis).clear(session_key(user.target))
    assert user.step(severity) == 2
    assert user.step(defect_type) == 0
    assert user.replies()[-2:] == [
        "How severe is it?\n1. Low\n2. Medium\n3. High\n(send *0* or *cancel* to go back to the menu)",
        "Describe the defect in a few words.\n(send *0* or *cancel* to go back to the menu)",
    ]
    assert user.flow["answers"]["severity"] == "High"


def test_an_answer_sent_after_the_session_is_timed_out_though_its_state_was_still_there(user: User) -> None:
    """Timed out by when the user sent it: 31 minutes after the last answer, whenever the step runs."""
    _half_a_defect_report(user, minutes_ago=31)
    assert user.flow["step"] == 1  # the state is still in Redis (the workers ran late)
    assert user.step(user.store("2")) == 1
    assert "*Report a defect* form timed out after 30 minutes" in user.replies()[-1]
    assert user.flow["flow"] is None


@pytest.fixture
def one_minute_sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """WAPIPE_SESSION_TTL=60 for the test, the settings read again before it and after."""
    monkeypatch.setenv("WAPIPE_SESSION_TTL", "60")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.usefixtures("one_minute_sessions")
def test_a_form_timed_out_after_one_minute_says_so_in_the_singular(user: User) -> None:
    _half_a_defect_report(user, minutes_ago=2)
    Sessions(user.redis).clear(session_key(user.target))
    assert user.step(user.store("2")) == 1
    assert "*Report a defect* form timed out after 1 minute without an answer" in user.replies()[-1]


def test_an_unrouted_message_older_than_the_grace_is_skipped(user: User) -> None:
    lost = user.store("1", routed=False)
    stored_ago(user, lost, 6)
    hi = user.store("hi")
    assert user.step(hi) == 1
    assert len(user.replies()) == 1


def test_a_worker_whose_clock_runs_fast_still_waits_for_an_earlier_unrouted_message(user: User) -> None:
    # The grace is measured on the database's clock, which stamped created_at: a worker 6 minutes ahead
    # must not pass over a message the router is still deciding on and answer the next one first.
    first = user.store("1", routed=False)
    second = user.store("ORD-12345")
    with pytest.raises(Busy):
        user.step(second, now=datetime.now(UTC) + timedelta(minutes=6))
    user.db.execute("UPDATE messages SET routed_at = now() WHERE id = %s", (first,))
    assert user.step(second, now=datetime.now(UTC) + timedelta(minutes=6)) == 2
    assert user.flow["step"] == 1


def test_a_worker_whose_clock_runs_slow_skips_an_unrouted_message_past_the_grace(user: User) -> None:
    lost = user.store("1", routed=False)
    stored_ago(user, lost, 6)
    hi = user.store("hi")
    assert user.step(hi, now=datetime.now(UTC) - timedelta(minutes=10)) == 1
    assert len(user.replies()) == 1


@pytest.mark.parametrize("answered_before", [False, True], ids=["new conversation", "idle at the menu"])
def test_menu_messages_a_backlog_held_past_the_session_are_all_answered_in_order(
    user: User, answered_before: bool
) -> None:
    """No form under way, the session expired, and the flows workers down for 40 minutes while the user
    sent "hi", then "2": the later one's task runs first. Both are answered, oldest first, once."""
    if answered_before:
        earlier = user.store("hi")
        sent_ago(user, earlier, 120)
        user.step(earlier)
        Sessions(user.redis).clear(session_key(user.target))  # what 30 minutes without a message does
    hi, two = user.store("hi"), user.store("2")
    sent_ago(user, hi, 40)
    sent_ago(user, two, 39)
    assert user.step(two) == 2
    assert user.step(hi) == 0
    assert user.step(two) == 0
    replies = user.replies()[1:] if answered_before else user.replies()
    assert len(replies) == 2
    assert "1. Report a defect" in replies[0]
    assert "Which order?" in replies[1]
    assert user.handled(hi)
    assert user.handled(two)


def test_a_message_passed_over_is_not_answered_by_a_drain_after_the_session_expired(user: User) -> None:
    """The flow answered a later message while this one's routing was stuck: once routed, it is not
    answered in a drain either, though the session (and the cursor in it) has expired meanwhile."""
    lost = user.store("1", routed=False)
    stored_ago(user, lost, 6)
    hi = user.store("hi")
    assert user.step(hi) == 1
    user.db.execute("UPDATE messages SET routed_at = now() WHERE id = %s", (lost,))
    Sessions(user.redis).clear(session_key(user.target))
    two = user.store("2")
    assert user.step(two) == 1
    assert not user.handled(lost)
    assert "Which order?" in user.replies()[-1]


def test_a_closed_conversations_unanswered_message_is_not_answered_in_the_next_one(user: User) -> None:
    old = user.store("1")
    sent_ago(user, old, 40)
    user.db.execute(
        "UPDATE conversations SET status = 'closed', closed_at = now() WHERE id = %s", (user.conversation_id,)
    )
    user.conversation_id = add_conversation(user.db, user.contact_id, "+15550009999")
    assert user.step(user.store("hi")) == 1
    assert len(user.replies()) == 1
    assert "1. Report a defect" in user.replies()[0]
    assert not user.handled(old)


def test_busy_while_another_worker_holds_the_conversations_lock(user: User) -> None:
    message_id = user.store("hi")
    lock = LOCK_KEY.format(conversation_id=user.conversation_id)
    user.redis.set(lock, "someone-else", px=30_000)
    with pytest.raises(Busy):
        user.step(message_id)
    user.redis.delete(lock)
    assert user.step(message_id) == 1


def _die_before_queuing(inbound_id: int, text: str, **kwargs: Any) -> int:
    raise SystemExit("worker killed")


def _die_after_queuing(inbound_id: int, text: str, **kwargs: Any) -> int:
    queue_reply(inbound_id, text, **kwargs)
    raise SystemExit("worker killed")


@pytest.mark.parametrize("reply_then_die", [_die_before_queuing, _die_after_queuing])
def test_a_worker_dying_after_saving_its_step_sends_the_saved_reply_once(
    user: User, reply_then_die: Any
) -> None:
    """The state is saved before the reply is queued: the redelivered task sends the saved reply, and
    neither redoes the step nor creates a second record."""
    for text in ("1", "ORD-12345", "Other", "High"):
        user.step(user.store(text))
    last = user.store("paint bubbles")
    with pytest.raises(SystemExit):
        user.step(last, reply=reply_then_die)
    assert user.flow["last_message_id"] == last
    assert not user.handled(last)
    assert user.step(last) == 0
    assert user.handled(last)
    records = user.db.execute("SELECT reference FROM flow_records WHERE kind = 'defect'").fetchall()
    assert len(records) == 1
    replies = user.replies()
    assert len(replies) == 5
    assert replies[-1].startswith("✅ Defect Report Created!")
    assert records[0]["reference"] in replies[-1]
    assert user.flow["flow"] is None


def test_a_handed_off_conversation_gets_no_answer(user: User) -> None:
    user.step(user.store("6"))
    later = user.store("hello?")
    assert user.step(later) == 0
    assert len(user.replies()) == 1


def test_a_message_sent_as_the_conversation_was_handed_over_is_not_answered_once_it_is_handed_back(
    user: User,
) -> None:
    """Dispatched to the flow before the handover, it is settled, not left for a later drain to answer."""
    six, hello = user.store("6"), user.store("hello?")
    assert user.step(hello) == 1  # "6" hands the conversation over; "hello?" is for the person
    assert user.handled(hello)  # its turn ends: the conversation's later messages do not wait for it
    user.db.execute("UPDATE conversations SET status = 'open' WHERE id = %s", (user.conversation_id,))
    assert user.step(user.store("2")) == 1
    assert user.step(six) == 0
    replies = user.replies()
    assert len(replies) == 2
    assert "a member of the team" in replies[0]
    assert "Which order?" in replies[1]


def test_an_expired_session_starts_over_at_the_menu(user: User) -> None:
    one = user.store("1")
    sent_ago(user, one, 31)
    user.step(one)
    answered_ago(user, one, 31)
    Sessions(user.redis).clear(session_key(user.target))  # what 30 minutes without a message does
    outcome_id = user.store("ORD-12345")
    assert user.step(outcome_id) == 1
    assert "1. Report a defect" in user.replies()[-1]


def test_an_answer_to_a_form_that_timed_out_is_told_so_and_not_read_as_a_menu_choice(user: User) -> None:
    """Half a defect report, then 30 minutes of silence: the "2" that answers its next question (Return)
    must not start the menu's option 2 (Order status) on the user's behalf."""
    _half_a_defect_report(user, minutes_ago=31)  # what type of defect? 1. Internal Reject 2. Return 3. Other
    Sessions(user.redis).clear(session_key(user.target))  # what 30 minutes without a message does
    assert user.step(user.store("2")) == 1
    notice = user.replies()[-1]
    assert "*Report a defect* form timed out after 30 minutes" in notice
    assert "nothing was submitted" in notice
    assert "1. Report a defect" in notice  # the menu again
    assert user.flow["flow"] is None
    mine = user.db.execute("SELECT count(*) AS n FROM flow_records WHERE contact_id = %s", (user.contact_id,))
    assert mine.fetchone()["n"] == 0
    user.step(user.store("2"))  # told once: now it is a menu choice
    assert "Which order?" in user.replies()[-1]


@pytest.mark.parametrize("later_task_first", [False, True], ids=["in order", "later task first"])
def test_answers_a_backlog_held_after_one_that_timed_out_are_not_read_as_menu_choices(
    user: User, later_task_first: bool
) -> None:
    """The form timed out; the workers being down, the user sent "2" (Return) and, hearing nothing, "2"
    again. Both were written to the form's question, before the notice: neither may start the menu's
    option 2 (Order status). A message sent after the notice is a menu choice again."""
    _half_a_defect_report(user, minutes_ago=45)
    first, again = user.store("2"), user.store("2")
    sent_ago(user, first, 5)
    sent_ago(user, again, 4)
    if later_task_first:
        assert user.step(again) == 2
    else:
        assert user.step(first) == 1
        assert user.step(again) == 1
    replies = user.replies()[-2:]
    assert all("*Report a defect* form timed out" in reply for reply in replies)
    assert all("Which order?" not in reply for reply in replies)
    assert user.flow["flow"] is None
    user.step(user.store("2"))  # sent after the notice: a menu choice
    assert "Which order?" in user.replies()[-1]


def test_a_tap_on_the_menu_after_a_form_timed_out_starts_the_flow_tapped(user: User) -> None:
    """A row tapped in the menu list is a menu choice whatever question was asked before: the notice,
    then the flow tapped, with no second tap needed."""
    _half_a_defect_report(user, minutes_ago=31)
    Sessions(user.redis).clear(session_key(user.target))
    assert user.step(user.store("Order status", reply_id="menu:order_status")) == 1
    reply = user.replies()[-1]
    assert reply.startswith("⏱️ Your *Report a defect* form timed out after 30 minutes")
    assert "Which order? Send its number" in reply
    assert user.flow["flow"] == "order_status"


@pytest.mark.parametrize("word", ["hi", "menu", "cancel"])
def test_a_menu_word_after_a_form_timed_out_gets_the_menu(user: User, word: str) -> None:
    _half_a_defect_report(user, minutes_ago=31)
    assert user.step(user.store(word)) == 1
    reply = user.replies()[-1]
    assert "*Report a defect* form timed out" in reply
    assert "1. Report a defect" in reply
    assert user.flow["flow"] is None


@pytest.mark.parametrize("ending", [["cancel"], ["ORD-12345", "1", "1", "Scratched"]])
def test_a_form_cancelled_or_finished_is_not_reported_as_timed_out(user: User, ending: list[str]) -> None:
    user.step(user.store("1"))
    for text in ending:
        user.step(user.store(text))
    Sessions(user.redis).clear(session_key(user.target))
    user.step(user.store("2"))
    assert "Which order?" in user.replies()[-1]


def test_a_timed_out_form_of_one_conversation_is_not_reported_in_another(user: User) -> None:
    number_2 = add_conversation(user.db, user.contact_id, "+15550008888")
    user.step(user.store("1"))
    Sessions(user.redis).clear(session_key(user.target))
    to_number_2 = add_inbound(user.db, user.contact_id, number_2, "2")
    user.redis.set(handler_key(to_number_2), 1)
    target_2 = Target(to_number_2, number_2, user.contact_id, PHONE)
    assert process(target_2, conn=user.db, redis_client=user.redis, pack=user.pack, reply=queue_reply) == 1
    assert "Which order?" in user.replies(number_2)[-1]


def test_through_the_real_router_in_menu_mode(user: User) -> None:
    """inbound.route's dispatch marker is what flows.step reads to tell the flow's messages apart."""
    from shared.flows.service import step
    from shared.settings import load_settings
    from shared.wire.events import InboundMessage
    from workers.inbound import route

    settings = load_settings(mode="menu")
    ids = []
    for number, text in enumerate(("hi", "2", "ord-12345")):
        event = InboundMessage(
            provider="twilio",
            provider_message_id=f"SMroute{number}",
            business_number="+15550009999",
            sender_phone="+15550100099",
            text=text,
        )
        outcome = route(event.model_dump(mode="json"), settings=settings)
        assert outcome.handler == "flows.step"
        ids.append(outcome.message_id)
    assert step(ids[-1]) == 3
    assert step(ids[0]) == 0
    bodies = [
        row["body"]
        for row in user.db.execute("SELECT body FROM messages WHERE direction = 'out' ORDER BY id").fetchall()
    ]
    assert "Order ORD-12345" in bodies[-1]
    assert len(bodies) == 3


def test_each_business_number_is_its_own_menu_with_its_own_cursor(user: User) -> None:
    """One contact writing to two of our numbers has two conversations, which do not wait for each other:
    the later message's step may run first, and must neither skip the earlier one nor fill its form."""
    number_2 = add_conversation(user.db, user.contact_id, "+15550008888")
    user.step(user.store("1"))  # number 1: report a defect, which order?
    to_number_1 = user.store("ORD-12345")
    to_number_2 = add_inbound(user.db, user.contact_id, number_2, "ORD-12345")
    user.redis.set(handler_key(to_number_2), 1)
    target_2 = Target(to_number_2, number_2, user.contact_id, PHONE)
    assert process(target_2, conn=user.db, redis_client=user.redis, pack=user.pack, reply=queue_reply) == 1
    assert user.step(to_number_1) == 1
    assert user.handled(to_number_1)
    assert user.handled(to_number_2)
    assert "1. Report a defect" in user.replies(number_2)[-1]  # number 2 had no form going: the menu
    assert "What type of defect?" in user.replies()[-1]  # number 1's form took its own answer


def _step_other(user: User, conversation_id: int, text: str) -> int:
    """The contact's message to another of our numbers (conversation ``conversation_id``), stepped."""
    message_id = add_inbound(user.db, user.contact_id, conversation_id, text)
    user.redis.set(handler_key(message_id), 1)
    target = Target(message_id, conversation_id, user.contact_id, PHONE)
    return process(target, conn=user.db, redis_client=user.redis, pack=user.pack, reply=queue_reply)


def test_two_conversations_of_one_phone_keep_their_own_flow_choice(user: User) -> None:
    """One person writing to two of our numbers: each number's menu choice is its own, and the person's
    project selection, kept per phone, is left as it was."""
    chooser = uuid.uuid4()
    Sessions(user.redis).select(PHONE, chooser, workspace_id="w1", project_id="p1")
    number_2 = add_conversation(user.db, user.contact_id, "+15550008888")
    user.step(user.store("1"))  # number 1: report a defect
    _step_other(user, number_2, "2")  # number 2: order status
    user.step(user.store("ORD-12345"))
    _step_other(user, number_2, "ORD-12345")
    assert "What type of defect?" in user.replies()[-1]
    assert "📦 Order ORD-12345" in user.replies(number_2)[-1]
    assert Sessions(user.redis).selected(PHONE, chooser) == Selection("w1", "p1")


def _legacy_session(user: User, cursor: int, **flow: Any) -> None:
    """The flow state as a version keeping one per phone left it, in the person's own session, beside
    their project selection."""
    state = {"pack": "shopfloor", "flow": None, "step": 0, "answers": {}, "found": {}, **flow}
    user.db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (cursor,))
    Sessions(user.redis).save(
        PHONE, {"user_id": "u1", "project_id": "p1", "flow": {**state, "last_message_id": cursor}}
    )


def test_a_form_under_way_in_the_phones_session_goes_on_after_the_upgrade(user: User) -> None:
    """A deploy finds a form half-filled under the phone's key: the conversation of its last answer
    carries on with it, once; the person's other conversation does not take it."""
    number_2 = add_conversation(user.db, user.contact_id, "+15550008888")
    _legacy_session(user, user.store("1"), flow="report_defect")  # which order?
    assert _step_other(user, number_2, "ORD-12345") == 1
    assert "1. Report a defect" in user.replies(number_2)[-1]
    answer = user.store("ORD-12345")
    assert user.step(answer) == 1
    assert "What type of defect?" in user.replies()[-1]
    assert user.flow["last_message_id"] == answer
    Sessions(user.redis).clear(session_key(user.target))  # the form expires, the old state is still there
    user.redis.delete(FORM_NOTE_KEY.format(conversation_id=user.conversation_id))
    user.step(user.store("2"))
    assert "Which order?" in user.replies()[-1]  # not the old form's defect type, taken up again
    assert Sessions(user.redis).load(PHONE)["project_id"] == "p1"


def test_a_flow_state_in_the_phones_session_whose_message_is_unknown_is_ignored(user: User) -> None:
    """Its last answer gone (or never stored here), it belongs to no conversation: they start over."""
    hi = user.store("hi")
    _legacy_session(user, hi + 5, flow="report_defect")
    user.db.execute("UPDATE messages SET handled_at = now() WHERE id = %s", (hi,))
    answer = user.store("ORD-12345")
    assert user.step(answer) == 1
    assert "1. Report a defect" in user.replies()[-1]
    assert user.flow["last_message_id"] == answer


def _mark_handled_fails_once(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """The database (or the worker) fails right after the step saved its state, before marking it handled."""
    real = repository.mark_handled

    def fail_once(conn: psycopg.Connection, message_id: int) -> None:
        monkeypatch.setattr(repository, "mark_handled", real)
        raise error

    monkeypatch.setattr(repository, "mark_handled", fail_once)


@pytest.mark.parametrize(
    "error", [psycopg.OperationalError("server closed the connection"), SystemExit("worker killed")]
)
def test_a_step_stopped_before_marking_its_message_marks_it_when_redelivered(
    user: User, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """Else the answered message would hold its conversation's turn until the stale grace (5 minutes)."""
    hi = user.store("hi")
    _mark_handled_fails_once(monkeypatch, error)
    with pytest.raises(type(error)):
        user.step(hi)
    assert user.flow["last_message_id"] == hi
    assert not user.handled(hi)
    assert user.step(hi) == 0  # the task again, retried or redelivered: nothing to answer twice
    assert user.handled(hi)
    assert len(user.replies()) == 1


def test_an_earlier_message_drained_but_not_marked_is_marked_by_the_next_step(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    hi, one = user.store("hi"), user.store("1")
    _mark_handled_fails_once(monkeypatch, SystemExit("worker killed"))
    with pytest.raises(SystemExit):
        user.step(one)  # drains hi first, and dies after saving it
    assert user.step(one) == 1
    assert user.handled(hi)
    assert user.handled(one)
    assert len(user.replies()) == 2


def test_a_message_the_drain_passed_over_is_not_marked_handled_by_its_late_task(user: User) -> None:
    """Its routing failed for good, so the flow never answered it: it must not look answered."""
    lost = user.store("1", routed=False)
    stored_ago(user, lost, 6)
    hi = user.store("hi")
    assert user.step(hi) == 1
    user.db.execute("UPDATE messages SET routed_at = now() WHERE id = %s", (lost,))
    assert user.step(lost) == 0
    assert not user.handled(lost)
    assert user.handled(hi)


def test_a_handled_message_redelivered_after_the_session_expired_changes_nothing(user: User) -> None:
    one = user.store("1")
    assert user.step(one) == 1
    Sessions(user.redis).clear(session_key(user.target))  # 30 minutes go by, then the task comes again
    assert user.step(one) == 0
    assert user.flow == {}  # not a defect report begun behind the user's back
    assert len(user.replies()) == 1


class _Recorded:
    """The replies one worker's step queued (through the real queue_reply)."""

    def __init__(self) -> None:
        self.inbound_ids: list[int] = []

    def __call__(self, inbound_id: int, text: str, **kwargs: Any) -> int:
        self.inbound_ids.append(inbound_id)
        return queue_reply(inbound_id, text, **kwargs)


def _lease_runs_out_before_the_save(user: User, monkeypatch: pytest.MonkeyPatch, takeover: int) -> None:
    """The next flow-state save pauses (a GC, a slow call) past the lock's lease: the lock expires and
    another worker takes the conversation and steps it up to ``takeover`` before the save goes on."""
    real_save = Sessions.save

    def pause_then_save(self: Sessions, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(Sessions, "save", real_save)
        user.redis.delete(LOCK_KEY.format(conversation_id=user.conversation_id))  # the lease ran out
        user.step(takeover)  # the other worker, under a lock of its own
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Sessions, "save", pause_then_save)


def test_a_step_that_lost_its_lock_neither_saves_its_state_nor_replies(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else the stale state overwrites the newer one: the other worker's answer is lost, and the user's
    next answer is taken for the question they already answered."""
    user.step(user.store("hi"))
    two, order = user.store("2"), user.store("ORD-12345")
    _lease_runs_out_before_the_save(user, monkeypatch, takeover=order)
    stale = _Recorded()
    with contextlib.suppress(Busy):  # its task retries (the next test), to find its message answered
        user.step(two, reply=stale)
    assert user.flow["last_message_id"] == order
    assert user.flow["flow"] is None  # the order status was given: back at the menu
    assert stale.inbound_ids == []
    assert user.step(two) == 0
    replies = user.replies()
    assert len(replies) == 3
    assert "Order ORD-12345" in replies[-1]


def test_a_step_that_lost_its_lock_retries_rather_than_leave_its_own_message_unanswered(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that took over stepped only up to its own, earlier message."""
    one, order = user.store("1"), user.store("ORD-12345")
    _lease_runs_out_before_the_save(user, monkeypatch, takeover=one)
    with pytest.raises(Busy):
        user.step(order)  # drains "1" first, and loses the lock saving it
    assert user.step(order) == 1  # the retry
    assert user.handled(order)
    assert user.flow["answers"] == {"order_number": "ORD-12345"}
    assert len(user.replies()) == 2


# The lock's lease in the slow-step tests: short, so a step outlasts it without the tests taking 30 s.
SHORT_LEASE = 1.0
SLOW_PACK = """
[pack]
name = "slow"

[[flows]]
id = "report"
title = "Report"

[flows.action]
name = "slow_record"
prefix = "SLOW"
reply = "Recorded as {reference}."
"""


def _slow_pack(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> Pack:
    """A pack whose one flow (no questions: "1" runs it) stores a record, then takes as long as
    ``meanwhile`` (a slow database under load, a slow call) before it answers."""

    def slow_record(ctx: FlowContext, data: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
        values = builtin.create_record(ctx, data, options)
        meanwhile()
        return values

    slow = registry.Registered("slow_record", slow_record, registry.ACTIONS["create_record"].provides)
    monkeypatch.setitem(registry.ACTIONS, "slow_record", slow)
    return parse_pack(SLOW_PACK, source="slow.toml")


def test_a_step_slower_than_its_lease_keeps_the_lock_and_answers_once(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else the save finds the lock lapsed, the task retries, each retry as slow: the user never gets an
    answer, and meanwhile another worker may take the conversation and answer out of order."""
    taken_by_another: list[Any] = []

    def past_the_lease() -> None:
        time.sleep(2.5 * SHORT_LEASE)
        # Another worker's step for this conversation, trying the lock as it does (SET NX).
        taken_by_another.append(user.redis.set(user.lock, "another-worker", nx=True, px=30_000))

    pack = _slow_pack(monkeypatch, past_the_lease)
    report = user.store("1")
    assert user.step(report, pack=pack, lease_seconds=SHORT_LEASE) == 1
    assert taken_by_another == [None]  # the lock was still the slow step's
    assert user.flow["last_message_id"] == report
    assert user.handled(report)
    assert not user.redis.exists(user.lock)  # released, not renewed after the step
    assert user.step(report, pack=pack, lease_seconds=SHORT_LEASE) == 0  # its task again: nothing to redo
    records = user.db.execute("SELECT reference FROM flow_records WHERE kind = 'report'").fetchall()
    assert len(records) == 1
    assert user.replies() == [f"Recorded as {records[0]['reference']}."]


def test_a_step_whose_lock_was_taken_over_while_it_ran_neither_saves_nor_replies(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewing keeps a running step's lock, but cannot win it back: once another worker holds it (the
    step's process stood still past the lease, a Redis failover lost the key), the step saves nothing,
    queues no reply, and leaves the other worker's lock as it is."""

    def taken_over() -> None:
        user.redis.set(user.lock, "another-worker", px=30_000)
        time.sleep(2.5 * SHORT_LEASE)  # the renewals due meanwhile find the lock another's

    pack = _slow_pack(monkeypatch, taken_over)
    report = user.store("1")
    stale = _Recorded()
    with pytest.raises(Busy):
        user.step(report, reply=stale, pack=pack, lease_seconds=SHORT_LEASE)
    assert user.flow == {}
    assert stale.inbound_ids == []
    assert user.replies() == []
    assert not user.handled(report)
    assert user.redis.get(user.lock) == b"another-worker"
    assert user.redis.pttl(user.lock) > 2.5 * SHORT_LEASE * 1000  # not renewed to our lease either


def _shopfloor_with(texts: str) -> Pack:
    """The shop-floor pack with ``texts`` (TOML lines) added to its [pack] table."""
    text = (PACKS_DIR / "shopfloor.toml").read_text(encoding="utf-8")
    return parse_pack(text.replace("[pack]\n", f"[pack]\n{texts}\n", 1))


def test_what_a_lookup_finds_or_refuses_is_told_in_the_packs_own_words(user: User) -> None:
    pack = _shopfloor_with(
        'order_not_found = "No encuentro el pedido {value}. Revisa el número."\n'
        'time_left = "quedan {time}"\n'
        'overdue_by = "vencido hace {time}"'
    )
    user.step(user.store("2"), pack=pack)  # Order status: which order?
    user.step(user.store("ORD-99999"), pack=pack)
    assert user.replies()[-1].startswith("⚠️ No encuentro el pedido ORD-99999. Revisa el número.\n")
    user.step(user.store("cancel"), pack=pack)
    for text in ("5", "MAINT-555", "5", "MAINT-557"):  # SLA status of a ticket: 20 h left, then breached
        user.step(user.store(text), pack=pack)
    assert re.search(r"quedan (19h 59m|20h 0m) \(due ", user.replies()[-3])
    assert "vencido hace 6h" in user.replies()[-1]
    assert "left" not in user.replies()[-3]


# As inbound.route stores a shared location: no body, the place in the payload.
LOCATION = {"latitude": 4.6097, "longitude": -74.0817, "name": "Planta 2"}

OPTIONAL_NOTE = """\
[pack]
name = "notes"

[[flows]]
id = "note"
title = "Leave a note"

  [[flows.steps]]
  name = "note"
  prompt = "Anything to add? (optional)"
  kind = "text"
  min_length = 0

  [flows.action]
  name = "reply"
  reply = "Noted: '{note}'."
"""


def test_a_shared_location_is_not_taken_as_a_forms_answer_and_the_question_is_asked_again(
    user: User,
) -> None:
    user.step(user.store("1"))  # Report a defect: its first question
    asked = user.flow
    location = add_inbound(
        user.db, user.contact_id, user.conversation_id, None, type="location", payload={"location": LOCATION}
    )
    user.redis.set(handler_key(location), 1)
    user.step(location)

    assert user.replies()[-1].startswith("⚠️ 📍 A shared location can't answer this question.")
    assert user.flow["step"] == asked["step"]
    assert user.flow["answers"] == asked["answers"]


def test_a_shared_location_is_no_empty_answer_to_an_optional_text(user: User) -> None:
    pack = parse_pack(OPTIONAL_NOTE)
    user.step(user.store("1"), pack=pack)
    location = add_inbound(
        user.db, user.contact_id, user.conversation_id, None, type="location", payload={"location": LOCATION}
    )
    user.redis.set(handler_key(location), 1)
    user.step(location, pack=pack)

    # Before: the form took it as an empty note and finished, the place lost ("Noted: ''.").
    assert "Noted" not in user.replies()[-1]
    assert user.flow["flow"] == "note"
    user.step(user.store("by the press"), pack=pack)
    assert user.replies()[-1] == "Noted: 'by the press'."


# As inbound.route stores a submitted WhatsApp Flow (a template's Flow button): no body, the Flow's own
# answers in the payload, none of them an answer to the menu form's question.
FLOW_REPLY = {"name": "flow", "body": "Sent", "response": {"flow_token": "t-1", "rating": "5"}}


def test_a_submitted_whatsapp_flow_is_no_empty_answer_to_an_optional_text(user: User) -> None:
    pack = parse_pack(OPTIONAL_NOTE)
    user.step(user.store("1"), pack=pack)
    submitted = add_inbound(
        user.db,
        user.contact_id,
        user.conversation_id,
        None,
        type="interactive",
        payload={"flow_reply": FLOW_REPLY},
    )
    user.redis.set(handler_key(submitted), 1)
    user.step(submitted, pack=pack)

    # Before: the form took it as an empty note and finished ("Noted: ''."), the Flow's answers not its own.
    assert user.replies()[-1].startswith("⚠️ 📋 A form sent in WhatsApp can't answer this question.")
    assert user.flow["flow"] == "note"
    user.step(user.store("by the press"), pack=pack)
    assert user.replies()[-1] == "Noted: 'by the press'."


def _media(user: User, kind: str, caption: str | None = None) -> int:
    """A message of ``kind`` as inbound.route stores one: a photo, sticker, voice note, video or document,
    its caption, if any, its body (a voice note or sticker has none); or one that has no text of its own:
    a shared contact card, an order (a cart) sent without a note, an interactive reply or template button
    whose tap did not parse (neither has a tapped id)."""
    media_id = add_inbound(user.db, user.contact_id, user.conversation_id, caption, type=kind)
    user.redis.set(handler_key(media_id), 1)
    return media_id


MEDIA_NOTICE = "⚠️ 📎 A photo, video, voice note, sticker or file can't answer this question."
NO_TEXT_NOTICE = "⚠️ 💬 A shared contact or another message without text can't answer this question."
NOT_AN_ANSWER = [
    *((kind, MEDIA_NOTICE) for kind in ("image", "sticker", "audio", "video", "document")),
    *((kind, NO_TEXT_NOTICE) for kind in ("contacts", "order", "interactive", "button")),
]


@pytest.mark.parametrize(("kind", "notice"), NOT_AN_ANSWER)
def test_a_message_with_no_text_is_no_empty_answer_to_an_optional_text(
    user: User, kind: str, notice: str
) -> None:
    pack = parse_pack(OPTIONAL_NOTE)
    user.step(user.store("1"), pack=pack)
    user.step(_media(user, kind), pack=pack)

    # Before: the form took it as an empty note and finished ("Noted: ''."), the user's media or card
    # ignored.
    assert user.replies()[-1].startswith(notice)
    assert user.flow["flow"] == "note"
    assert user.flow["answers"] == {}
    user.step(user.store("by the press"), pack=pack)
    assert user.replies()[-1] == "Noted: 'by the press'."


@pytest.mark.parametrize(("kind", "notice"), [NOT_AN_ANSWER[0], NOT_AN_ANSWER[-4]])
def test_a_message_with_no_text_to_a_required_step_is_told_the_same(
    user: User, kind: str, notice: str
) -> None:
    user.step(user.store("1"))  # Report a defect: which order?
    asked = user.flow
    user.step(_media(user, kind))

    # Before: "That doesn't look right. Please send it like ORD-12345.", as if it were mistyped.
    assert user.replies()[-1].startswith(f"{notice} That doesn't look right. Please send it like ORD-12345.")
    assert user.flow["step"] == asked["step"]
    assert user.flow["answers"] == asked["answers"]


def test_the_caption_of_a_photo_is_its_answer(user: User) -> None:
    pack = parse_pack(OPTIONAL_NOTE)
    user.step(user.store("1"), pack=pack)
    user.step(_media(user, "image", caption="crack by the press"), pack=pack)
    assert user.replies()[-1] == "Noted: 'crack by the press'."


@pytest.mark.parametrize(
    ("key", "kind", "told"),
    [
        ("media_not_an_answer", "audio", "📎 Escribe tu respuesta."),
        ("no_text_not_an_answer", "contacts", "💬 Escribe tu respuesta."),
    ],
)
def test_a_message_with_no_text_is_told_in_the_packs_own_words(
    user: User, key: str, kind: str, told: str
) -> None:
    spanish = f'name = "notes"\n{key} = "{told}"'
    pack = parse_pack(OPTIONAL_NOTE.replace('name = "notes"', spanish, 1))
    user.step(user.store("1"), pack=pack)
    user.step(_media(user, kind), pack=pack)
    assert user.replies()[-1].startswith(f"⚠️ {told}")


def test_the_note_sent_with_an_order_is_its_answer(user: User) -> None:
    pack = parse_pack(OPTIONAL_NOTE)
    user.step(user.store("1"), pack=pack)
    order = add_inbound(user.db, user.contact_id, user.conversation_id, "two of these", type="order")
    user.redis.set(handler_key(order), 1)
    user.step(order, pack=pack)
    assert user.replies()[-1] == "Noted: 'two of these'."


def test_a_tapped_button_is_still_a_choice(user: User) -> None:
    user.step(user.store("1"))
    user.step(user.store("ORD-12345"))  # What type of defect?
    tapped = add_inbound(
        user.db, user.contact_id, user.conversation_id, None, type="interactive", reply_id="defect_type:2"
    )
    user.redis.set(handler_key(tapped), 1)
    user.step(tapped)
    assert user.flow["answers"]["defect_type"] == "Return"


def test_a_translated_pack_of_the_release_before_answers_media_to_an_optional_text_in_its_words(
    user: User,
) -> None:
    spanish = (
        'name = "notes"\ntext_length_invalid = "Envía un texto de {min_length} a {max_length} caracteres."'
    )
    pack = parse_pack(OPTIONAL_NOTE.replace('name = "notes"', spanish, 1))
    user.step(user.store("1"), pack=pack)
    user.step(_media(user, "image"), pack=pack)

    # Before: "⚠️ 📎 A photo, video, voice note, sticker or file can't answer this question. Please send a
    # text of at most 500 characters, or *skip* to skip this question.", all in English.
    assert user.replies()[-1].startswith("⚠️ Envía un texto de 0 a 500 caracteres.\n")
    assert user.flow["answers"] == {}
    user.step(user.store("junto a la prensa"), pack=pack)
    assert user.replies()[-1] == "Noted: 'junto a la prensa'."


def test_an_optional_text_is_skipped_by_the_skip_word_it_is_told_of(user: User) -> None:
    pack = parse_pack(OPTIONAL_NOTE)
    user.step(user.store("1"), pack=pack)
    user.step(_media(user, "audio"), pack=pack)

    # Before: "... can't answer this question. Please send a text of 0 to 500 characters.", and no
    # message skipped the note: WhatsApp sends no empty text, and a photo is no answer (b07f51e).
    told = user.replies()[-1]
    assert "Please send a text of at most 500 characters, or *skip* to skip this question." in told
    assert "0 to 500" not in told
    user.step(user.store("Skip"), pack=pack)
    assert user.replies()[-1] == "Noted: ''."
    assert user.flow["flow"] is None
