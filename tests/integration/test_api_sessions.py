"""``/api/v1/sessions`` against the session's real Redis: masked listing, cursors, delete."""

from __future__ import annotations

import socket

import psycopg
import pytest
import redis
from flask.testing import FlaskClient

from ingress import create_app
from shared.flows.pack import load_pack
from shared.flows.seed import seed_shopfloor
from shared.flows.service import FORM_NOTE_KEY, Target, process, session_key
from shared.queues import handler_key
from shared.replies import queue_reply
from shared.sessions import Sessions
from shared.settings import load_settings
from tests.integration.flows_support import add_conversation, add_inbound, make_conversation

KEY = {"X-API-Key": "sessions-test-key"}


@pytest.fixture
def client(clean: None) -> FlaskClient:
    return create_app(load_settings(api_keys="sessions-test-key", default_region="US")).test_client()


def test_lists_sessions_masked_with_ttl_and_flow_step_but_no_answers(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    # A short TTL, so we can see that listing does not renew it to the app's 30 minutes.
    sessions = Sessions(redis_client, ttl_seconds=100)
    sessions.save("+14155550101", {"workspace_id": "w-1", "project_id": "p-1"})
    sessions.save(
        "+14155550102",
        {
            "flow": {
                "pack": "shopfloor",
                "flow": "report_defect",
                "step": 2,
                "answers": {"order_number": "ORD-12345", "description": "secret detail"},
            }
        },
    )

    response = client.get("/api/v1/sessions", headers=KEY)

    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "4155550101" not in text
    assert "4155550102" not in text
    assert "ORD-12345" not in text
    assert "secret detail" not in text
    body = response.get_json()
    assert body["next_cursor"] is None
    by_user = {row["user"]: row for row in body["data"]}
    assert set(by_user) == {"+*******0101", "+*******0102"}
    assert by_user["+*******0101"]["workspace_id"] == "w-1"
    assert by_user["+*******0101"]["project_id"] == "p-1"
    assert by_user["+*******0101"]["flow"] is None
    assert by_user["+*******0102"]["flow"] == {"pack": "shopfloor", "flow": "report_defect", "step": 2}
    assert all(0 < row["ttl_seconds"] <= 100 for row in body["data"])
    assert 0 < redis_client.ttl("session:+14155550101") <= 100


def test_listing_pages_through_every_session_once(client: FlaskClient, redis_client: redis.Redis) -> None:
    sessions = Sessions(redis_client, ttl_seconds=600)
    phones = {f"+1415555{n:04d}" for n in range(1000, 1025)}
    for phone in phones:
        sessions.save(phone, {"project_id": "p"})
    redis_client.set("unrelated:key", "x")

    seen: list[str] = []
    url = "/api/v1/sessions?limit=10"
    pages = 0
    for pages in range(1, 30):  # noqa: B007 - the count of pages is asserted below
        body = client.get(url, headers=KEY).get_json()
        seen += [row["user"] for row in body["data"]]
        if body["next_cursor"] is None:
            break
        url = f"/api/v1/sessions?limit=10&cursor={body['next_cursor']}"
    assert sorted(seen) == sorted("+*******" + phone[-4:] for phone in phones)
    assert pages >= 2


def test_deletes_a_session_by_phone_in_any_format(client: FlaskClient, redis_client: redis.Redis) -> None:
    sessions = Sessions(redis_client, ttl_seconds=600)
    sessions.save("+14155550101", {"project_id": "p"})
    sessions.save("+14155550102", {"project_id": "q"})
    # The menu state of each of their conversations (shared/flows/service.py session_key) goes too.
    for key in ("+14155550101/conversation/7", "+14155550101/conversation/8", "+14155550102/conversation/9"):
        sessions.save(key, {"flow": {"name": "order"}})

    response = client.delete("/api/v1/sessions/(415)%20555-0101", headers=KEY)

    assert response.status_code == 204
    assert sessions.load("+14155550101") == {}
    assert sessions.load("+14155550101/conversation/7") == sessions.load("+14155550101/conversation/8") == {}
    assert sessions.load("+14155550102") == {"project_id": "q"}
    assert sessions.load("+14155550102/conversation/9") == {"flow": {"name": "order"}}
    again = client.delete("/api/v1/sessions/+14155550101", headers=KEY)
    assert again.status_code == 404
    assert again.get_json()["error"]["code"] == "not_found"


class MenuUser:
    """A contact of the shop-floor menu bot, its messages answered by the real flows step."""

    def __init__(self, db: psycopg.Connection, redis_client: redis.Redis, phone: str) -> None:
        self.db, self.redis, self.phone = db, redis_client, phone
        self.contact_id, self.conversation_id = make_conversation(db, phone)

    def send(self, text: str, conversation_id: int | None = None) -> str:
        """Store ``text`` as the router would, answer it, and return the reply."""
        conversation_id = conversation_id or self.conversation_id
        message_id = add_inbound(self.db, self.contact_id, conversation_id, text)
        self.redis.set(handler_key(message_id), 1)
        target = Target(message_id, conversation_id, self.contact_id, self.phone)
        process(target, conn=self.db, redis_client=self.redis, pack=load_pack("shopfloor"), reply=queue_reply)
        reply = self.db.execute(
            "SELECT body FROM messages WHERE direction = 'out' AND conversation_id = %s"
            " ORDER BY id DESC LIMIT 1",
            (conversation_id,),
        ).fetchone()
        return reply["body"]


def test_a_user_cleared_mid_form_is_not_told_next_that_the_form_timed_out(
    client: FlaskClient, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    """The note of a form under way outlives the menu state (shared/flows/service.py), so that a message
    after the state expired is told the form timed out: a clear must take the note with the state."""
    seed_shopfloor(db)
    cleared = MenuUser(db, redis_client, "+14155550101")
    other_number = add_conversation(db, cleared.contact_id, "+15550008888")
    for conversation_id in (cleared.conversation_id, other_number):
        cleared.send("1", conversation_id)  # Report a defect: which order?
    cleared.send("ORD-12345")  # what type of defect? 1. Internal Reject 2. Return 3. Other
    untouched = MenuUser(db, redis_client, "+14155550102")
    untouched.send("1")

    assert client.delete("/api/v1/sessions/+14155550101", headers=KEY).status_code == 204

    for conversation_id in (cleared.conversation_id, other_number):
        reply = cleared.send("2", conversation_id)
        assert "timed out" not in reply
        assert "Which order?" in reply  # the menu's option 2, the form being gone
    # Another user's form, its state expired: still told, once, that it timed out. Its "1" was sent and
    # answered 31 minutes ago (the timeout is judged by when the user sent each message).
    db.execute(
        "UPDATE messages SET created_at = created_at - interval '31 minutes',"
        " handled_at = handled_at - interval '31 minutes',"
        " payload = jsonb_build_object('sent_at', now() - interval '31 minutes')"
        " WHERE conversation_id = %s AND direction = 'in'",
        (untouched.conversation_id,),
    )
    Sessions(redis_client).clear(session_key(Target(0, untouched.conversation_id, None, untouched.phone)))
    assert redis_client.exists(FORM_NOTE_KEY.format(conversation_id=untouched.conversation_id))
    assert "*Report a defect* form timed out" in untouched.send("2")


def test_invalid_phone_or_paging_is_422(client: FlaskClient) -> None:
    bad_phone = client.delete("/api/v1/sessions/not-a-phone", headers=KEY)
    assert bad_phone.status_code == 422
    assert bad_phone.get_json()["error"]["message"].startswith("phone:")
    assert bad_phone.get_json()["error"]["field"] == "phone"
    # A SCAN cursor is unsigned 64-bit; thousands of digits were a 500 in int() itself.
    for query, name in (
        ("limit=0", "limit"),
        ("limit=999", "limit"),
        ("cursor=x", "cursor"),
        (f"cursor={2**64}", "cursor"),
        ("cursor=" + "9" * 5000, "cursor"),
    ):
        response = client.get(f"/api/v1/sessions?{query}", headers=KEY)
        assert response.status_code == 422
        assert response.get_json()["error"]["message"].startswith(f"{name}:")
        assert response.get_json()["error"]["field"] == name


def test_an_unreachable_redis_is_503_not_500(clean: None) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_settings(api_keys="sessions-test-key", redis_url=f"redis://127.0.0.1:{port}/0")
    client = create_app(settings).test_client()

    response = client.get("/api/v1/sessions", headers=KEY)

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"
