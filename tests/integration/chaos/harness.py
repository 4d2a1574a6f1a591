"""What the chaos tests share: linked users, signed Twilio webhooks, a fake Twilio API that records when
each request arrived (and can be switched into an outage), and the checks "exactly one reply each".

The pipeline under test is the real one: the Flask ingress (in this process, through its test client),
real Celery prefork worker processes per stage (``inbound``, ``commands``, ``notify``), PostgreSQL, Redis,
and the real twilio SDK talking to :class:`ChaosTwilioAPI` on 127.0.0.1.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from flask.testing import FlaskClient
from psycopg.rows import dict_row

from ingress import create_app
from shared.bot.commands import HELP_TEXT
from shared.broker import Channel
from shared.db import links, users
from shared.providers.twilio.signature import sign
from shared.queues import QUEUES
from shared.settings import load_settings
from tests.fakes.http_server import Incoming, Reply, retry_after_header
from tests.fakes.twilio_api import WHATSAPP_NUMBER, FakeTwilioAPI, Scripted, busiest_second, twilio_error

PUBLIC_URL = "https://hooks.example.com"
WEBHOOK_PATH = "/webhooks/twilio"
# Pools as production runs them (Procfile): one per stage, two prefork children each.
POOLS: tuple[tuple[str, ...], ...] = (("inbound",), ("commands",), ("notify",))
# Every user sends one message, so per-user limits (10 inbound a minute, 20 sends a minute) never apply
# and the recipient alone tells which inbound message a reply answers.
WORKER_ENV = {"WAPIPE_MODE": "project"}


def phones(count: int, offset: int = 0) -> list[str]:
    """Distinct possible (fictional 555-01xx style) US numbers, one per simulated user."""
    return [f"+1202555{(offset + i) % 10000:04d}" for i in range(count)]


def seed_linked_users(database_url: str, numbers: Iterable[str]) -> None:
    """Link each number to its own user (what ``VERIFY <code>`` leaves behind), in one transaction."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        for number in numbers:
            user_id = uuid.uuid5(uuid.NAMESPACE_URL, f"wapipe-chaos:{number}")
            users.ensure_user(conn, user_id, f"Chaos {number[-4:]}")
            links.link_phone(conn, user_id, number)


def message_sid(phone: str) -> str:
    return "SM" + uuid.uuid5(uuid.NAMESPACE_URL, f"wapipe-chaos-sid:{phone}").hex


class Ingress:
    """The real ingress app on a given Redis, and signed Twilio webhooks posted to it."""

    def __init__(self, redis_url: str, auth_token: str) -> None:
        settings = load_settings(
            redis_url=redis_url,
            public_url=PUBLIC_URL,
            twilio_account_sid="AC" + "0" * 32,
            twilio_auth_token=auth_token,
            twilio_whatsapp_number=WHATSAPP_NUMBER,
            log_level="WARNING",
        )
        self.app = create_app(settings)
        self._token = auth_token
        self._local = threading.local()

    def client(self) -> FlaskClient:
        # Flask's test client is not meant to be shared between threads: one per thread.
        if not hasattr(self._local, "client"):
            self._local.client = self.app.test_client()
        return self._local.client

    def send(self, phone: str, text: str = "/help") -> int:
        """POST what Twilio sends when ``phone`` writes ``text``; return the HTTP status."""
        sid = message_sid(phone)
        form = {
            "MessageSid": sid,
            "SmsMessageSid": sid,
            "AccountSid": "AC" + "0" * 32,
            "From": f"whatsapp:{phone}",
            "To": f"whatsapp:{WHATSAPP_NUMBER}",
            "Body": text,
            "NumMedia": "0",
            "ProfileName": "Chaos",
            "WaId": phone.lstrip("+"),
            "ApiVersion": "2010-04-01",
        }
        headers = {"X-Twilio-Signature": sign(self._token, PUBLIC_URL + WEBHOOK_PATH, form)}
        return self.client().post(WEBHOOK_PATH, data=form, headers=headers).status_code

    def send_until_accepted(self, phone: str, give_up_after: float = 120.0) -> tuple[int, list[int]]:
        """What Twilio does: retry a webhook answered 5xx until it gets a 2xx; return (final, all codes)."""
        codes = []
        deadline = time.monotonic() + give_up_after
        while True:
            code = self.send(phone)
            codes.append(code)
            if code < 500 or time.monotonic() > deadline:
                return code, codes
            time.sleep(0.2)


@dataclass(frozen=True)
class Arrival:
    at: float  # time.monotonic() when the request arrived (its connection came in)
    status: int  # what the fake answered
    to: str
    body: str


class ChaosTwilioAPI(FakeTwilioAPI):
    """The fake Twilio API, timing every request, with an optional outage decided per request.

    ``outage`` returns the error to answer now (``Scripted``) or None to answer as usual (201).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outage: Callable[[], Scripted | None] = lambda: None

    def answer(self, request: Incoming) -> Reply:
        scripted = self.outage()
        if scripted is not None:
            with self._lock:
                self._script.appendleft(scripted)
        return super().answer(request)

    @property
    def arrivals(self) -> list[Arrival]:
        return [
            Arrival(r.arrived, r.status, r.form.get("To", ""), r.form.get("Body", ""))
            for r in self.requests()
        ]

    def replies_per_recipient(self) -> collections.Counter[str]:
        """How many messages the fake accepted (201) per recipient E.164 number."""
        return collections.Counter(a.to.removeprefix("whatsapp:") for a in self.arrivals if a.status == 201)

    def max_per_second(self, statuses: Iterable[int] | None = None) -> int:
        """The most requests (with these statuses, default all) inside any one-second window."""
        return busiest_second(self.arrival_times(statuses))


def outage_error(status: int, retry_after: float | None = None) -> Scripted:
    return Scripted(status, twilio_error(status), retry_after_header(retry_after))


# The concurrent-script race in ChaosTwilioAPI._handle (another request popping our scripted answer) is
# harmless for the tests: only the time window matters, not which request gets which error.


def queues_empty(client: redis.Redis) -> bool:
    """No task waiting on any queue, nor held by a worker: a message a worker took (running, prefetched,
    or a retry counting down) stays in the broker's ``unacked`` hash until acked, so a task stuck there,
    lost with its worker until the visibility timeout, keeps this False."""
    return all(client.llen(queue) == 0 for queue in QUEUES) and client.hlen(Channel.unacked_key) == 0


def held_tasks(client: redis.Redis) -> list[tuple[str, str | None]]:
    """(task, eta) of every message a worker holds: what keeps :func:`queues_empty` False."""
    held = []
    for raw in client.hvals(Channel.unacked_key):
        payload = json.loads(raw)[0]
        headers = payload.get("headers") or {}
        held.append((str(headers.get("task")), headers.get("eta")))
    return sorted(held, key=lambda item: (item[0], item[1] or ""))


def reply_rows(database_url: str) -> list[dict[str, Any]]:
    """Per inbound message: its sender, and its replies' statuses and bodies."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            """
            SELECT i.id, c.phone,
                   array_remove(array_agg(o.status ORDER BY o.id), NULL) AS statuses,
                   array_remove(array_agg(o.body ORDER BY o.id), NULL) AS bodies
              FROM messages i
              JOIN contacts c ON c.id = i.contact_id
              LEFT JOIN messages o
                ON o.direction = 'out'
               AND (o.idempotency_key = 'reply:' || i.id OR o.idempotency_key LIKE 'reply:' || i.id || ':%')
             WHERE i.direction = 'in'
             GROUP BY i.id, c.phone
            """
        ).fetchall()


def sent_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM messages WHERE direction = 'out' AND status = 'sent'"
        ).fetchone()
        return int(row[0]) if row else 0


def assert_exactly_one_reply_each(fake: ChaosTwilioAPI, database_url: str, numbers: list[str]) -> None:
    """Every number got exactly one reply at the provider, the help text; the database agrees."""
    per_recipient = fake.replies_per_recipient()
    missing = [n for n in numbers if per_recipient[n] == 0]
    doubled = {n: c for n, c in per_recipient.items() if c > 1}
    strangers = set(per_recipient) - set(numbers)
    assert not missing, f"{len(missing)} messages got no reply, e.g. {missing[:5]}"
    assert not doubled, f"{len(doubled)} recipients got more than one reply: {list(doubled.items())[:5]}"
    assert not strangers, f"replies to numbers that wrote nothing: {sorted(strangers)[:5]}"
    bodies = {a.body for a in fake.arrivals if a.status == 201}
    assert bodies == {HELP_TEXT}

    rows = reply_rows(database_url)
    assert sorted(r["phone"] for r in rows) == sorted(numbers)  # each inbound message stored once
    wrong = [r for r in rows if r["statuses"] != ["sent"]]
    assert not wrong, f"{len(wrong)} inbound messages without exactly one sent reply: {wrong[:3]}"
