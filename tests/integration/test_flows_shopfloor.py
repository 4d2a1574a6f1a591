"""Every shop-floor path through the engine, against real PostgreSQL (no Redis: state passed by hand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from shared.flows import repository
from shared.flows.engine import Outcome, advance
from shared.flows.pack import Pack, load_pack
from shared.flows.registry import FlowContext
from shared.flows.seed import seed_shopfloor
from shared.flows.validators import Answer
from tests.integration.flows_support import add_inbound, make_conversation

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


class Chat:
    """One user talking to the engine: each answer is stored as an inbound message first."""

    def __init__(self, db: psycopg.Connection, pack: Pack, phone: str = "+15550100001") -> None:
        self.db, self.pack = db, pack
        self.contact_id, self.conversation_id = make_conversation(db, phone)
        self.state: dict[str, Any] = {}
        self.now = NOW

    def send(self, text: str, reply_id: str | None = None) -> Outcome:
        message_id = add_inbound(self.db, self.contact_id, self.conversation_id, text, reply_id=reply_id)
        ctx = FlowContext(self.db, self.contact_id, self.conversation_id, message_id, self.now)
        outcome = advance(self.pack, self.state, Answer(text, reply_id), ctx)
        self.state = outcome.state
        return outcome


@pytest.fixture
def pack() -> Pack:
    return load_pack("shopfloor")


@pytest.fixture
def chat(db: psycopg.Connection, pack: Pack) -> Chat:
    seed_shopfloor(db, now=NOW)
    return Chat(db, pack)


def test_hi_shows_six_numbered_options_and_a_list(chat: Chat) -> None:
    outcome = chat.send("Hi")
    for number, title in enumerate(
        [
            "Report a defect",
            "Order status",
            "Report maintenance",
            "My open tickets",
            "SLA status of a ticket",
        ],
        start=1,
    ):
        assert f"{number}. {title}" in outcome.text
    assert "6. Talk to a person" in outcome.text
    interactive = outcome.payload["interactive"]
    assert outcome.payload["type"] == "interactive"
    assert interactive["kind"] == "list"
    assert next(row["id"] for row in interactive["sections"][0]["rows"]) == "menu:report_defect"
    assert len(interactive["sections"][0]["rows"]) == 6


def test_defect_report_creates_the_record_and_puts_the_order_on_hold(
    chat: Chat, db: psycopg.Connection
) -> None:
    chat.send("hi")
    assert "order number" in chat.send("1").text
    prompt = chat.send("ord-12345")
    assert "Acme Corp" in prompt.text
    assert "1. Internal Reject" in prompt.text
    assert prompt.payload["interactive"]["kind"] == "buttons"
    assert [b["id"] for b in prompt.payload["interactive"]["buttons"]] == [
        "defect_type:1",
        "defect_type:2",
        "defect_type:3",
    ]
    chat.send("return")
    chat.send("High", reply_id="severity:3")  # a tapped button, accepted like the typed answer
    done = chat.send("Scratches on the left bracket")
    assert "✅ Defect Report Created!" in done.text
    assert "Reference: DEF-20260501120000" in done.text
    record = repository.get_record(db, "DEF-20260501120000")
    assert record["kind"] == "defect"
    assert record["contact_id"] == chat.contact_id
    assert record["data"] == {
        "order_number": "ORD-12345",
        "defect_type": "Return",
        "severity": "High",
        "description": "Scratches on the left bracket",
    }
    assert repository.get_order(db, "ORD-12345")["status"] == "ON HOLD"
    assert chat.state == {"pack": "shopfloor", "flow": None}


def test_unknown_order_is_refused_and_asked_again(chat: Chat) -> None:
    chat.send("1")
    outcome = chat.send("ORD-99999")
    assert "ORD-99999 was not found" in outcome.text
    assert chat.state["flow"] == "report_defect"
    assert chat.state["step"] == 0


def test_wrong_answers_reprompt_with_what_is_allowed(chat: Chat) -> None:
    chat.send("1")
    assert "send it like ORD-12345" in chat.send("12345").text
    chat.send("ORD-12345")
    wrong = chat.send("7")
    assert "number from 1 to 3" in wrong.text
    assert "2. Return" in wrong.text
    assert wrong.payload["interactive"]["kind"] == "buttons"
    assert chat.state["step"] == 1
    assert "How severe" in chat.send("2").text


@pytest.mark.parametrize("word", ["cancel", "MENU", "0"])
def test_cancel_menu_or_zero_goes_back_to_the_menu(chat: Chat, word: str, db: psycopg.Connection) -> None:
    chat.send("1")
    chat.send("ORD-12345")
    outcome = chat.send(word)
    assert "1. Report a defect" in outcome.text
    assert chat.state == {"pack": "shopfloor", "flow": None}
    assert db.execute("SELECT count(*) AS n FROM flow_records WHERE kind = 'defect'").fetchone()["n"] == 0
    assert "order number" in chat.send("1").text


@pytest.mark.parametrize("word", ["Cancel!", "cancel 🙏", "*cancel*", "Menu.", "0."])
def test_a_cancel_word_with_punctuation_or_emoji_leaves_a_text_step(
    chat: Chat, word: str, db: psycopg.Connection
) -> None:
    # At a free-text step anything is an answer: read as the description, it filed the report and put
    # the order on hold, the opposite of what the sender asked for.
    chat.send("1")
    chat.send("ORD-12345")
    chat.send("1")
    assert "Describe the defect" in chat.send("2").text
    outcome = chat.send(word)
    assert "1. Report a defect" in outcome.text
    assert chat.state == {"pack": "shopfloor", "flow": None}
    assert db.execute("SELECT count(*) AS n FROM flow_records WHERE kind = 'defect'").fetchone()["n"] == 0
    assert repository.get_order(db, "ORD-12345")["status"] != "ON HOLD"


def test_menu_option_by_tapped_row_or_title(chat: Chat) -> None:
    assert "Which order?" in chat.send("Order status", reply_id="menu:order_status").text
    chat.send("0")
    assert "Which order?" in chat.send("order STATUS").text


@pytest.mark.parametrize(
    ("order", "sla_status"),
    [("ORD-12345", "on track"), ("ORD-12346", "at risk"), ("ORD-12347", "breached")],
)
def test_order_status_with_sla_state(chat: Chat, order: str, sla_status: str) -> None:
    chat.send("2")
    outcome = chat.send(order.lower())
    assert f"Order {order}" in outcome.text
    assert f"SLA: {sla_status}" in outcome.text
    assert "Status: IN PRODUCTION" in outcome.text
    assert "Progress: " in outcome.text
    assert "Expected date: 2026-05-" in outcome.text
    assert chat.state["flow"] is None


def test_order_status_of_the_seeded_order(chat: Chat) -> None:
    chat.send("2")
    outcome = chat.send("ORD-12345")
    assert "Progress: 65%" in outcome.text
    assert "Expected date: 2026-05-06" in outcome.text


@pytest.mark.parametrize(("urgency", "hours"), [("High", 24), ("Medium", 72), ("Low", 168)])
def test_maintenance_ticket_sla_by_urgency(
    chat: Chat, db: psycopg.Connection, urgency: str, hours: int
) -> None:
    chat.send("3")
    assert "CNC Lathe" in chat.send("mach-001").text
    options = chat.send("Bearing")
    assert options.payload["interactive"]["kind"] == "buttons"
    done = chat.send(urgency)
    assert "Reference: MAINT-20260501120000" in done.text
    assert f"SLA: {hours} h" in done.text
    record = repository.get_record(db, "MAINT-20260501120000")
    assert record["kind"] == "maintenance"
    assert record["status"] == "open"
    assert record["due_at"] == NOW + timedelta(hours=hours)
    assert record["data"] == {"machine_id": "MACH-001", "issue_type": "Bearing", "urgency": urgency}


@pytest.mark.parametrize(
    ("typed", "asked"), [("2.", "Which order?"), ("#3", "Which machine?"), ("five", "Which ticket?")]
)
def test_a_menu_option_typed_as_people_type_numbers_starts_it(chat: Chat, typed: str, asked: str) -> None:
    chat.send("hi")
    assert asked in chat.send(typed).text


def test_a_number_word_past_the_menus_options_is_not_understood(chat: Chat) -> None:
    chat.send("hi")
    assert chat.send("seven").text.startswith("Sorry, I didn't get that.")
    assert chat.state == {"pack": "shopfloor", "flow": None}


def test_a_choice_typed_as_a_word_or_with_its_dot_is_taken(chat: Chat) -> None:
    for answer in ("1)", "ORD-12345", "two", "3."):
        chat.send(answer)
    assert chat.state["answers"] == {"order_number": "ORD-12345", "defect_type": "Return", "severity": "High"}


def test_four_issue_types_are_offered_as_a_list(chat: Chat) -> None:
    chat.send("3")
    assert "Machine MACH-999 was not found" in chat.send("MACH-999").text
    outcome = chat.send("MACH-002")
    assert outcome.payload["interactive"]["kind"] == "list"
    assert "4. Other" in outcome.text


def test_my_open_tickets_lists_only_mine(chat: Chat, db: psycopg.Connection, pack: Pack) -> None:
    assert "You have no open tickets." in chat.send("4").text
    for answer in ("3", "MACH-001", "Hydraulic", "High"):
        chat.send(answer)
    other = Chat(db, pack, phone="+15550100002")
    other.now = NOW + timedelta(seconds=1)
    for answer in ("3", "MACH-002", "Electrical", "Low"):
        other.send(answer)
    listing = chat.send("4").text
    assert "Your open tickets (1)" in listing
    assert "MAINT-20260501120000 (Hydraulic): OK, 1d 0h left" in listing
    assert "MAINT-20260501120001" not in listing


def test_my_open_tickets_with_none_says_so_once(chat: Chat) -> None:
    reply = chat.send("4").text
    assert reply.startswith("📋 You have no open tickets.")
    assert "(0)" not in reply
    assert reply.count("no open tickets") == 1
    assert reply.endswith("Send *menu* for more options.")


@pytest.mark.parametrize(
    ("reference", "state"), [("MAINT-555", "OK"), ("MAINT-556", "WARNING"), ("MAINT-557", "BREACHED")]
)
def test_sla_status_of_a_ticket(chat: Chat, reference: str, state: str) -> None:
    chat.send("5")
    outcome = chat.send(reference.lower())
    assert f"Ticket {reference}: {state}" in outcome.text
    expected = {"OK": "20h 0m left", "WARNING": "12h 0m left", "BREACHED": "overdue by 6h 0m"}[state]
    assert expected in outcome.text


def test_the_sla_of_a_ticket_another_sender_opened_is_not_shown(
    chat: Chat, db: psycopg.Connection, pack: Pack
) -> None:
    """A reference is a timestamp anyone can guess: it must not show someone else's ticket."""
    for answer in ("3", "MACH-001", "Hydraulic", "High"):
        chat.send(answer)
    other = Chat(db, pack, phone="+15550100002")
    other.send("5")
    outcome = other.send("MAINT-20260501120000")
    assert "Ticket MAINT-20260501120000 was not found" in outcome.text
    assert "left" not in outcome.text
    assert other.state["flow"] == "ticket_sla"
    chat.send("5")
    assert "Ticket MAINT-20260501120000: OK" in chat.send("MAINT-20260501120000").text


def test_sla_status_of_an_unknown_ticket_asks_again(chat: Chat) -> None:
    chat.send("5")
    assert "MAINT-1 was not found" in chat.send("MAINT-1").text
    assert chat.state["flow"] == "ticket_sla"


def test_talk_to_a_person_hands_the_conversation_over(chat: Chat, db: psycopg.Connection) -> None:
    outcome = chat.send("6")
    assert "member of the team" in outcome.text
    status = db.execute("SELECT status FROM conversations WHERE id = %s", (chat.conversation_id,)).fetchone()
    assert status["status"] == "handoff"


def test_two_reports_in_the_same_second_get_distinct_references(chat: Chat, db: psycopg.Connection) -> None:
    for _ in range(2):
        for answer in ("1", "ORD-12346", "Other", "Low", "dent"):
            chat.send(answer)
    references = [
        row["reference"] for row in db.execute("SELECT reference FROM flow_records WHERE kind = 'defect'")
    ]
    assert sorted(references) == ["DEF-20260501120000", "DEF-20260501120000-2"]


def test_a_final_action_is_idempotent_on_its_source_message(chat: Chat, db: psycopg.Connection) -> None:
    for answer in ("1", "ORD-12345", "Other", "Low"):
        chat.send(answer)
    state = chat.state
    message_id = add_inbound(db, chat.contact_id, chat.conversation_id, "dent")
    ctx = FlowContext(db, chat.contact_id, chat.conversation_id, message_id, NOW)
    first = advance(chat.pack, state, Answer("dent"), ctx)
    again = advance(
        chat.pack,
        state,
        Answer("dent"),
        FlowContext(db, chat.contact_id, chat.conversation_id, message_id, NOW + timedelta(seconds=5)),
    )
    assert first.text == again.text
    assert db.execute("SELECT count(*) AS n FROM flow_records WHERE kind = 'defect'").fetchone()["n"] == 1


def test_seed_is_idempotent(db: psycopg.Connection) -> None:
    first = seed_shopfloor(db, now=NOW)
    assert first == {"orders": 4, "machines": 4, "tickets": 3}
    assert seed_shopfloor(db) == {"orders": 0, "machines": 0, "tickets": 0}
    assert repository.get_order(db, "ORD-12345")["customer"] == "Acme Corp"
    assert repository.get_machine(db, "MACH-001")["name"] == "CNC Lathe"
    assert repository.get_record(db, "MAINT-555")["kind"] == "maintenance"


def test_wapipe_seed_demo_flows_shopfloor(db: psycopg.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    from shared.cli import main

    assert main(["seed-demo", "--flows", "shopfloor"]) == 0
    assert "Flow pack shopfloor: 4 new orders, 4 new machines, 3 new tickets" in capsys.readouterr().out
    assert main(["seed-demo", "--flows", "shopfloor"]) == 0
    assert "0 new orders, 0 new machines, 0 new tickets" in capsys.readouterr().out
    assert repository.get_order(db, "ORD-12345") is not None
