"""One ``flows.step``: answer a conversation's pending messages, in the order they were sent, exactly once.

Ordering and exactly-once across several ``flows`` worker processes:

- Flow state is per conversation, not per user: a contact writing to two of our business numbers has two
  conversations (migration 0001, ``conversations_live``), each its own menu, form and cursor. The handler
  stages do not order one conversation against another, so a state shared between them would let one
  conversation's step skip the other's message as already done, or feed it into the other's form.
- A Redis lock per conversation (``flows:lock:conversation:<id>``, SET NX PX with a random token, released
  only by its holder) serialises every step that touches that conversation's flow state. A step that finds
  it held raises :class:`Busy` and the task runs again a moment later, so no worker blocks (those waits
  are bounded and counted apart from the task's retries through an outage: workers/flows.py).
- The lock has a short lease (``LOCK_SECONDS``), so a dead holder's lapses soon, and the step holding it
  renews it every third of the lease from a thread of its own, for as long as it runs: a step slowed past
  the lease (a database under load, a slow lookup or action) keeps its conversation and saves its answer,
  where it would otherwise find its lock lapsed at the save and retry, every retry as slow, the user never
  answered. The renewal compares the token (as the release does): it only extends a lock still ours, and
  stops once it finds it another's. It stops too at ``MAX_HOLD_SECONDS``, the task's time limit, past
  which Celery has stopped the step: a step stuck for good does not hold its conversation for good.
- Inside the lock, a step does not answer only its own message: it answers *every* unanswered inbound
  message of the conversation after the last one handled, up to its own, in id order (ids are assigned
  when the router stores a message, i.e. in arrival order). So if the task for message 2 runs before the
  task for message 1 (two workers, prefetching), it handles 1 then 2, and the task for 1 later finds
  nothing to do. No task waits for another to be delivered, so a lost or delayed task cannot stall a
  conversation, and none can overtake an earlier message.
- The last handled message id is saved in the flow state itself (the ``flow`` key of the conversation's
  session, :func:`session_key`), in the same Redis write as the state and the reply it produced. That
  write is made only while the step still holds the lock: one Lua script compares the lock's token and
  sets the state (:meth:`shared.sessions.Sessions.save`), so a holder whose lease ran out all the same
  (its process stood still past the lease, Redis lost the key) cannot overwrite what the next holder
  saved. A step that finds its lock lost saves nothing, queues no reply and raises :class:`Busy`: its
  task retries, and finds its message answered or answers it. Records a step creates before the save are
  unique on their source message, so the holder that redoes the step gets the same ones.
- Only after the save is the reply queued (idempotency key ``reply:<inbound id>``) and the message
  marked handled. A step stopped in between (a killed worker, a database error) leaves the message
  unmarked, holding the conversation's turn; so every step first finishes the saved id's message when it
  is unmarked: queues the saved reply (stored once, under its key) and marks it handled. A redelivered
  task whose message is at or below the saved id does nothing more, so a flow never advances twice. The
  lock expires (``LOCK_SECONDS``) if its holder dies.
- A step that gave up on its message for good had its sender sent an apology, which marks the message
  handled (shared/replies.py ``apologise``). Its dead letter replayed (``wapipe dlq replay``), the step
  still answers its own message while its reply is missing: the saved reply if the state was saved, else
  the step itself. Never another's: a drain passes such an earlier message over, its sender asked to send
  it again.
- Which earlier messages are the flow's: those the router (workers/inbound.py) dispatched to a handler,
  i.e. whose ``handle:<message id>`` dedupe key it set when publishing, and that no other handler has
  answered (``handled_at``; a ``VERIFY 123456`` goes to the verify stage). Messages it only stored
  (rate-limited, from an opted-out user, in a handed-off conversation) have no such key and are skipped,
  as are those it gave up on, whose key it took instead (shared/queues.py ``handler_published``).
  An earlier message the router has not decided on yet (``routed_at`` unset) makes the step wait
  (:class:`Busy`), unless it is older than ``UNROUTED_GRACE`` (its routing failed for good). That age is
  measured by the database, whose clock stamped ``created_at``: a worker whose clock runs fast would
  otherwise pass over a message still being routed and answer the next first.
- When the session has expired (30 minutes idle) the last handled id is gone with it, unless a form's
  note keeps it (below). Where the flow stopped is then the database's to say: the latest earlier message
  of the conversation dispatched to the flow (``dispatched_to``) and handled. Every later message not
  handled is considered, and a step whose own message is handled does nothing. Known either way, no
  message is left out for its age: the session expires by the workers' clock, which says nothing of when
  the user wrote, so a backlog of any length (flows workers down for an hour while the user sent "hi",
  then "2") is answered in full and in order, whichever task runs first, and an earlier message a drain
  passed over stays passed over. A step stopped between its save and its mark whose session expired
  before its task came again answers its message afresh: still one reply (its key, ``reply:<id>``).
- A flow state left in the user's own session by a version that kept one per user (keyed by phone) is
  carried over, so a form under way at a deploy goes on: by the conversation its cursor (the last message
  it answered) belongs to, while that conversation has no state of its own and none of its messages after
  the cursor was answered; once one is, it is never taken up again. Any other conversation of the user
  starts at the menu, as does this one when the cursor is not its.
- A form does not expire silently. Each save of a state with a form under way also writes, in the same
  guarded step, a note of it (``flows:form:conversation:<id>``, :data:`FORM_NOTE_KEY`), the state itself
  included, that outlives the session by as long as the conversation stays open
  (``WAPIPE_CONVERSATION_IDLE_MINUTES``); a save with no form under way deletes it.
- A form times out by the user's clock, not the workers': an answer sent longer than the session TTL
  after the answer before it, or after the question the user then got, when a backlog held that answer
  and so asked the question late (each message's ``sent_at``, the provider's time, no later than when it
  was stored, and its ``handled_at``: :func:`shared.flows.repository.answered`), was written to a question
  no longer asked (a "2" for a choice would start the menu's option 2): it is not read, its sender is
  told the form timed out and nothing of it was kept, and shown the menu
  (:func:`shared.flows.engine.timed_out`), which ends the form. So is each message the user sent before
  that notice was given (a backlog: "2", then "2" again for want of an answer), which answered the form's
  question as well (:data:`TIMED_OUT_FIELD`); the first sent after it is read as the menu's. A tap on a
  menu row, which answers no form question, starts its flow after the notice. An answer sent in time
  goes on with the form even when a backlog (workers down) held it past the session's expiry: the state
  is then taken from the note. (A note left by a version that kept no state in it still times its form
  out at the first message to find it.)
  An operator clearing the user's sessions (``DELETE /api/v1/sessions/<phone>``) clears the notes of the
  conversations whose state it clears (:func:`form_note_key`): their forms did not time out.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import redis

from shared import verification
from shared.flows import engine, repository
from shared.flows.pack import Flow, Pack
from shared.flows.registry import FlowContext
from shared.flows.validators import Answer
from shared.logging import get_logger
from shared.queues import TASK_TIME_LIMIT_SECONDS, handler_published
from shared.replies import APOLOGY_KEY, reply_key
from shared.sessions import Beside, Sessions
from shared.settings import get_settings
from shared.wire.events import MessageType

log = get_logger(__name__)

LOCK_SECONDS = 30
# A step's lock is renewed no longer than this: Celery stops a task at its time limit (shared/queues.py).
MAX_HOLD_SECONDS = TASK_TIME_LIMIT_SECONDS
UNROUTED_GRACE = timedelta(minutes=5)
# The task the router sends a VERIFY to (workers/inbound.py pick_handler).
VERIFY_TASK = "verify.check_code"
# The dedupe key inbound.route sets when it enqueues a message's handler (workers/inbound.py).
LOCK_KEY = "flows:lock:conversation:{conversation_id}"
SESSION_KEY = "flow"
# The note of a form under way, which outlives the conversation's session (module docstring).
FORM_NOTE_KEY = "flows:form:conversation:{conversation_id}"
# Besides the engine's state, the flow state keeps the last handled message id and the reply to it.
CURSOR_FIELD = "last_message_id"
REPLY_FIELD = "reply"
# The form note keeps the whole flow state too, so that a form whose session expired during a backlog
# goes on (module docstring).
NOTE_STATE_FIELD = "state"
# Kept in the menu's state after a form's timeout notice: that form (``flow``, ``title``), for the messages
# the user sent before the notice reached them, which answered its question too (module docstring).
TIMED_OUT_FIELD = "timed_out"
# The stored types of a message whose body is only its caption (workers/inbound.py): with none, it has
# no text to answer a step with (shared/flows/engine.py).
MEDIA_TYPES = frozenset(
    {MessageType.image, MessageType.video, MessageType.audio, MessageType.document, MessageType.sticker}
)
ReplyFn = Callable[..., Any]  # queue_reply(inbound_id, text, *, payload=None)

# Release or extend the lock only while it is still ours (a holder that outlived its lease must not
# delete the next holder's lock).
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Busy(Exception):
    """Another worker is handling this conversation's messages; retry the step shortly."""


@dataclass(frozen=True)
class Target:
    """The inbound message a step was enqueued for, and whose conversation and session it belongs to."""

    message_id: int
    conversation_id: int
    contact_id: int | None
    user_key: str  # E.164 phone, or the Meta BSUID when there is no phone


def session_key(target: Target) -> str:
    """The session (:class:`shared.sessions.Sessions`) that holds the target conversation's flow state.

    The conversation id makes it one per conversation; the user key in front lets the sessions listing
    (``/api/v1/sessions``) show whose it is, masked like the user's own session.
    """
    return f"{target.user_key}/conversation/{target.conversation_id}"


def reply_id_from(payload: dict[str, Any] | None) -> str | None:
    """The id of the button or list row the user tapped, as stored with the inbound message."""
    if not payload:
        return None
    reply = payload.get("reply")
    if isinstance(reply, dict) and reply.get("id"):
        return str(reply["id"])
    for key in ("reply_id", "button_id", "list_id"):
        if payload.get(key):
            return str(payload[key])
    return None


class _Lock:
    def __init__(self, client: redis.Redis, conversation_id: int, lease_seconds: float) -> None:
        self._redis = client
        self._key = LOCK_KEY.format(conversation_id=conversation_id)
        self._token = secrets.token_hex(16)
        self._lease_ms = max(1, round(lease_seconds * 1000))

    def acquire(self) -> bool:
        return bool(self._redis.set(self._key, self._token, nx=True, px=self._lease_ms))

    @property
    def claim(self) -> tuple[str, str]:
        """The lock's key and our token: what a write made only while we hold the lock compares."""
        return self._key, self._token

    def still_held(self) -> bool:
        """True (and the lease renewed) while the lock is ours."""
        return bool(self._redis.eval(_EXTEND, 1, self._key, self._token, self._lease_ms))

    def release(self) -> None:
        self._redis.eval(_RELEASE, 1, self._key, self._token)

    @contextlib.contextmanager
    def renewed(self) -> Iterator[None]:
        """Renew the lease every third of it while the block runs, from a thread: a step's slow database
        call or action has no point at which it could renew the lease itself."""
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(done,), name=f"renew {self._key}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def _renew(self, done: threading.Event) -> None:
        until = time.monotonic() + MAX_HOLD_SECONDS
        while not done.wait(self._lease_ms / 3000):
            if time.monotonic() >= until:
                log.warning("flows.lock_renewal_stopped", lock=self._key, held_seconds=MAX_HOLD_SECONDS)
                return
            try:
                if not self.still_held():
                    # Another's now: the step's next check or its guarded save finds it out and stops.
                    log.warning("flows.lock_renewal_refused", lock=self._key)
                    return
            except redis.RedisError as error:
                # Try again at the next third: a lease lapsed meanwhile makes the save refuse, nothing worse.
                log.warning("flows.lock_renewal_failed", lock=self._key, error=type(error).__name__)


def process(
    target: Target,
    *,
    conn: psycopg.Connection,
    redis_client: redis.Redis,
    pack: Pack,
    reply: ReplyFn,
    now: datetime | None = None,
    lease_seconds: float = LOCK_SECONDS,
) -> int:
    """Answer the target's conversation up to the target message; return how many messages were handled.

    ``now`` is the time the flow itself sees (an SLA's "time remaining"), the database's when not given;
    which messages are too old to wait for or to answer is always the database's to say.

    Raises :class:`Busy` when another worker holds the conversation's lock.
    """
    lock = _Lock(redis_client, target.conversation_id, lease_seconds)
    if not lock.acquire():
        raise Busy(target.message_id)
    try:
        with lock.renewed():
            return _process_locked(target, conn, redis_client, pack, reply, now, lock)
    finally:
        lock.release()


def _process_locked(
    target: Target,
    conn: psycopg.Connection,
    redis_client: redis.Redis,
    pack: Pack,
    reply: ReplyFn,
    now: datetime | None,
    lock: _Lock,
) -> int:
    sessions = Sessions(redis_client)
    session = sessions.load(session_key(target))
    state = session.get(SESSION_KEY) or _carried_over(conn, sessions, target)
    lapsed = None
    if not state:
        note = _noted_form(redis_client, target)
        if note is not None and isinstance(note.get(NOTE_STATE_FIELD), dict):
            # The session expired by the workers' clock, which says nothing of when the user answered (a
            # backlog): the form goes on from its noted state, the answers' sent times judge (_lapsed).
            state = note[NOTE_STATE_FIELD]
        else:
            lapsed = note  # noted by a version that kept no state: the form is gone
    cursor = state.get(CURSOR_FIELD)
    keys = reply_keys(target.message_id)
    if isinstance(cursor, int):
        # Only the cursor: an earlier id may be a message the drain passed over, which the flow never
        # answered. (A state saved by a version that queued the reply before the save has no reply to send.)
        # The step's own message, saved but answered only by an apology, is owed its reply (a replay).
        if not repository.is_handled(conn, cursor) or (
            cursor == target.message_id and repository.apologised_only(conn, keys)
        ):
            _finish(conn, cursor, state, reply)
        if target.message_id <= cursor:
            conn.commit()
            log.info("flows.step_already_done", message_id=target.message_id)
            return 0
    rows = repository.pending_inbound(
        conn,
        target.conversation_id,
        # With no cursor, the database knows where the flow stopped: every later message is the flow's,
        # however long a backlog held it.
        cursor if isinstance(cursor, int) else None,
        target.message_id,
        grace_seconds=UNROUTED_GRACE.total_seconds(),
        reply_keys=keys,
    )
    conn.commit()
    if not rows or rows[-1]["id"] != target.message_id:
        # Already handled, by a step whose state has since expired: nothing to redo. Earlier messages
        # still unanswered have tasks of their own.
        log.info("flows.step_already_handled", message_id=target.message_id)
        return 0
    handled = 0
    last = repository.answered(conn, cursor) if isinstance(cursor, int) else None
    for row in rows:
        if row["id"] != target.message_id:
            verdict = _earlier_message(row, redis_client)
            if verdict == "wait":
                raise Busy(target.message_id)
            if verdict == "skip":
                continue
        if not lock.still_held():  # lost while the last message's step ran: stop before this one's
            raise _lost(row["id"], target)
        live = repository.conversation_state(conn, target.conversation_id)
        if live is None or live["status"] != "open" or live["opted_out"]:
            # Handed to a person, closed or opted out: the bot says nothing more in this conversation. The
            # message is settled all the same (as replies.answer_as_bot settles it): left unhandled, it
            # kept its turn, and the drain after the conversation was handed back answered it, long after
            # the person had.
            log.info("flows.conversation_not_open", conversation_id=target.conversation_id)
            repository.mark_handled(conn, row["id"])
            conn.commit()
            continue
        form_lapsed = lapsed or _lapsed(pack, state, last, row) or _told_timed_out(pack, state, last, row)
        outcome = _respond(row, target, conn, pack, state, form_lapsed, now)
        lapsed = None  # told once, with the first answer after the form's state expired
        # Answered below, after every later row was sent: those the user wrote without its question.
        last = repository.Answered(row["sent_at"], None)
        conn.commit()
        state = {
            **outcome.state,
            CURSOR_FIELD: row["id"],
            REPLY_FIELD: {"text": outcome.text, "payload": outcome.payload},
        }
        if form_lapsed is not None and _form_under_way(pack, state) is None:
            state[TIMED_OUT_FIELD] = {"flow": form_lapsed.get("flow"), "title": form_lapsed.get("title")}
        session = {**session, SESSION_KEY: state}
        note = _form_note(pack, target, state)
        if not sessions.save(session_key(target), session, while_held=lock.claim, beside=note):
            raise _lost(row["id"], target)
        _finish(conn, row["id"], state, reply)
        handled += 1
    return handled


def _respond(
    row: dict[str, Any],
    target: Target,
    conn: psycopg.Connection,
    pack: Pack,
    state: dict[str, Any],
    lapsed: dict[str, Any] | None,
    now: datetime | None,
) -> engine.Outcome:
    """The flow's answer to the message ``row``: the engine's step from ``state``, or, when a form
    ``lapsed``, the notice that it timed out and the menu, the message not read as an answer nor as a
    menu choice, unless it is a tap on the menu (:func:`shared.flows.engine.timed_out`)."""
    answer = Answer(
        row["body"] or "",
        reply_id_from(row["payload"]),
        location=row["type"] == "location",
        # As inbound.route stores one (workers/inbound.py); a reply routed by the release before has no key.
        flow_reply=isinstance(row["payload"], dict) and "flow_reply" in row["payload"],
        media=row["type"] in MEDIA_TYPES,
        # Reactions and WhatsApp's notices are never dispatched, nor a type the router cannot read
        # (workers/inbound.py): a shared contact, an order or a tap reaches a step, with no text of its own.
        text_message=row["type"] == MessageType.text,
    )
    ctx = FlowContext(
        conn=conn,
        contact_id=target.contact_id,
        conversation_id=target.conversation_id,
        message_id=row["id"],
        # The database's clock, as the records the flow compares it with (created_at, due_at) use.
        now=now or repository.db_now(conn),
    )
    if lapsed is not None:
        log.info("flows.form_timed_out", conversation_id=target.conversation_id, flow=lapsed.get("flow"))
        return engine.timed_out(pack, lapsed, minutes=_ttl_minutes(), answer=answer, ctx=ctx)
    engine_state = {key: value for key, value in state.items() if key not in (CURSOR_FIELD, REPLY_FIELD)}
    return engine.advance(pack, engine_state, answer, ctx)


def _carried_over(conn: psycopg.Connection, sessions: Sessions, target: Target) -> dict[str, Any]:
    """The flow state a version keeping one per user left in the user's own session, when it is the target
    conversation's to go on with (module docstring); else none."""
    legacy = sessions.peek(target.user_key).get(SESSION_KEY)
    if not isinstance(legacy, dict) or not isinstance(legacy.get(CURSOR_FIELD), int):
        return {}
    if not repository.last_answered_in(conn, target.conversation_id, legacy[CURSOR_FIELD]):
        return {}
    log.info("flows.state_carried_over", conversation_id=target.conversation_id, flow=legacy.get("flow"))
    return legacy


def form_note_key(conversation_id: int | str) -> str:
    """The key of the note of a form under way in the conversation (module docstring)."""
    return FORM_NOTE_KEY.format(conversation_id=conversation_id)


def _noted_form(redis_client: redis.Redis, target: Target) -> dict[str, Any] | None:
    """The note of the form under way when the conversation's flow state expired (its ``flow`` id,
    ``title`` and the ``state`` itself), if one was: read only when the state is gone."""
    raw = redis_client.get(form_note_key(target.conversation_id))
    return json.loads(raw) if raw is not None else None


def _form_under_way(pack: Pack, state: dict[str, Any]) -> Flow | None:
    """The pack's flow whose form ``state`` is in, if any (a finished or cancelled one is idle)."""
    return pack.flow(state.get("flow") or "") if state.get("pack") == pack.name else None


def _lapsed(
    pack: Pack, state: dict[str, Any], last: repository.Answered | None, row: dict[str, Any]
) -> dict[str, Any] | None:
    """The form under way in ``state`` (as a note has it) when the user sent ``row`` longer than the
    session's TTL after the form last heard from them or they from it (``last``: the answer before, and
    when its question was asked): timed out for the user, whenever the step got to it."""
    flow = _form_under_way(pack, state)
    if flow is None or last is None:
        return None
    since = last.sent_at
    if last.answered_at is not None and last.answered_at <= row["sent_at"]:
        # The user had the question since it was asked: a backlog that held the answer before it (and so
        # the question) must not count against them.
        since = max(since, last.answered_at)
    if row["sent_at"] - since <= timedelta(seconds=get_settings().session_ttl_seconds):
        return None
    return {"flow": flow.id, "title": flow.title}


def _told_timed_out(
    pack: Pack, state: dict[str, Any], last: repository.Answered | None, row: dict[str, Any]
) -> dict[str, Any] | None:
    """The form whose timeout the menu in ``state`` was told with, when the user sent ``row`` before that
    notice was (``last``: the message it answered, and when): written to the form's question, not to the
    menu, it is no menu choice either."""
    told = state.get(TIMED_OUT_FIELD)
    if not isinstance(told, dict) or _form_under_way(pack, state) is not None or last is None:
        return None
    if last.answered_at is not None and last.answered_at <= row["sent_at"]:
        return None
    return told


def _form_note(pack: Pack, target: Target, state: dict[str, Any]) -> Beside:
    """The note saved with ``state``: of its form under way, or the note's deletion when none is."""
    key = form_note_key(target.conversation_id)
    flow = _form_under_way(pack, state)
    if flow is None:
        return Beside(key)
    settings = get_settings()
    # A message after the conversation closes (idle that long) opens a new one, with no state and no
    # note: past that the note is of no use. The session's TTL on top keeps it past the session's end.
    ttl = settings.conversation_idle_minutes * 60 + settings.session_ttl_seconds
    note = {"flow": flow.id, "title": flow.title, NOTE_STATE_FIELD: state}
    return Beside(key, json.dumps(note, separators=(",", ":")), ttl)


def _ttl_minutes() -> int:
    """The session's time to live as the timed-out notice says it, in whole minutes."""
    return max(1, round(get_settings().session_ttl_seconds / 60))


def reply_keys(message_id: int) -> repository.ReplyKeys:
    """The keys of the reply to inbound ``message_id`` and of the apology of a step that gave up on it."""
    return repository.ReplyKeys(reply_key(message_id), reply_key(message_id, APOLOGY_KEY))


def _finish(conn: psycopg.Connection, message_id: int, state: dict[str, Any], reply: ReplyFn) -> None:
    """After the state answering ``message_id`` is saved: queue the reply saved with it, mark it handled."""
    saved = state.get(REPLY_FIELD)
    if isinstance(saved, dict):
        reply(message_id, saved["text"], payload=saved.get("payload"))
    repository.mark_handled(conn, message_id)
    conn.commit()


def _lost(message_id: int, target: Target) -> Busy:
    """The lock's lease ran out (a pause, a lost key) and another worker may hold it: stop, and retry."""
    log.warning("flows.lock_lost", message_id=message_id, conversation_id=target.conversation_id)
    return Busy(target.message_id)


def _earlier_message(row: dict[str, Any], redis_client: redis.Redis) -> str:
    """``handle`` an earlier message of the conversation, ``skip`` it (not the flow's), or ``wait``."""
    # The router sends a VERIFY to verify.check_code, in every mode; once checked its code is redacted, and
    # only its dispatch still says what it is.
    if row["dispatched_to"] == VERIFY_TASK or verification.is_verify_code(row["body"]):
        return "skip"
    if row["routed_at"] is None:
        # past_grace is the database's verdict (repository.pending_inbound), not this worker's clock's.
        return "skip" if row["past_grace"] else "wait"
    if not handler_published(redis_client, row["id"]):
        return "skip"
    return "handle"


@functools.cache
def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)


def step(message_id: int) -> int:
    """What the ``flows.step`` task runs: load the inbound message, then :func:`process` it."""
    from shared.db.messages import get_inbound
    from shared.db.pool import connection
    from shared.flows.pack import get_pack
    from shared.replies import queue_reply

    record = get_inbound(message_id)
    target = Target(message_id, record.conversation_id, record.contact_id, record.user_key)
    settings = get_settings()
    with connection() as conn:
        return process(
            target,
            conn=conn,
            redis_client=_redis_client(settings.redis_url or "redis://127.0.0.1:6379/0"),
            pack=get_pack(),
            reply=queue_reply,
        )
