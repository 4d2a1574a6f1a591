"""``inbound.route``: store an inbound message once, then decide who answers it.

One transaction in the common case, with one statement for the store (shared/db/inbound_store.py): the
contact (created or refreshed), its live conversation (opened if none), the message (unique on provider
+ provider id: a duplicate stops there), the raw event and what the decision reads; then the per-user
rate limit and, when the handler picked by ``WAPIPE_MODE`` (INTERFACES.md, "Routing") answers it, the
mark that it was dispatched. After the commit the handler's job is published with the message id, then
the message is marked routed. Reactions and WhatsApp's system notices (never answered nor counted),
opt-out words, an opted-out sender, a conversation handed to a person, a rate-limited message and one we
cannot read are stored the same way and acted on after the commit (their replies read the stored
message); an opt-out or opt-in changes the contact in the storing transaction already, so the next
message of the conversation is stored as this one leaves the contact. A message's media are downloaded
(``inbound.fetch_media``) unless its sender opted out or is over the rate limit; a handed-off
conversation's are, since a person reads them.

Before it stores anything, a route task waits for the messages that reached the ingress before its own in
the same conversation to be stored (shared/arrivals.py): ids, and so the order the handlers answer in,
follow arrival order even when two router processes take two messages of a conversation at once.

Safe to run twice: the message row's ``routed_at`` is set only after the decision's effects are done, and
every effect is idempotent (the handler job carries the dedupe key ``handle:<message id>``, replies have
idempotency keys, the rate-limit window counts a message id once). So a route redelivered after the
store committed but before the handler was enqueued enqueues it, exactly once: the handler the message was
dispatched to, not one decided again (its job may be queued already).
"""

from __future__ import annotations

import functools
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from celery import Task

from shared import arrivals, verification
from shared.arrivals import lines_of
from shared.bot.commands import is_command
from shared.db import answers, assistant_configs, contacts, conversations, inbound_store, messages, turns
from shared.db.pool import autocommit, connection, transaction
from shared.logging import get_logger, redact_verify_codes
from shared.phone import contact_phone
from shared.queues import Job, get_publisher, handler_key
from shared.ratelimit import InboundVerdict, RateLimiter
from shared.replies import confirm_opt_in, confirm_opt_out, queue_reply, reply_key
from shared.settings import Mode, Settings, get_settings
from shared.wire.events import InboundMessage, MessageType, inbound_key_parts
from shared.words import trimmed
from workers import event_task, ordering
from workers.base import WapipeTask

log = get_logger(__name__)

OPT_OUT_TEXT = (
    "You have been unsubscribed and will receive no more messages from us. Send START to subscribe again."
)
# Each notice names words that opt back in or out by default (shared/settings.py): a Spanish speaker is
# told the Spanish word.
OPT_OUT_TEXT_ES = (
    "Te has dado de baja y no recibirás más mensajes nuestros. Envía ALTA para volver a suscribirte."
)
OPT_IN_TEXT = "You are subscribed again. Send STOP at any time to unsubscribe."
OPT_IN_TEXT_ES = "Vuelves a estar suscrito. Envía BAJA cuando quieras darte de baja."
# The words, as :func:`_keyword` leaves them, answered in Spanish.
_SPANISH_OPT_OUT = "baja"
_SPANISH_OPT_IN = "alta"
RATE_LIMIT_TEXT = (
    "You're sending messages too fast. Please wait a minute: messages sent meanwhile won't be answered."
)
UNREADABLE_TEXT = "Sorry, I can't read this kind of message. Please send it as text, a photo or a document."

# Outcomes whose media are not downloaded: the sender asked for no messages, or sends faster than the bot
# answers. Their files would take WAPIPE_MEDIA_DIR's room (one sender posting 16 MB files in a loop could
# fill the disk) for messages nobody reads; the message keeps what the provider sent (a media id or URL).
# A handed-off conversation's media are downloaded: a person reads them.
_MEDIA_NOT_FETCHED = frozenset({"opted_out", "from_opted_out", "rate_limited"})

# Events that arrive as messages but say nothing to answer: a reaction to one of ours (or its removal),
# WhatsApp's own notices (the user changed number). Stored, never dispatched, not counted toward the
# sender's limit: a handler would read the emoji or the notice as typed text.
_NOT_MESSAGES = frozenset({MessageType.reaction, MessageType.system})


@dataclass(frozen=True)
class RouteOutcome:
    """What routing did with the message; ``action`` is one of the names below."""

    message_id: int | None
    # duplicate | not_a_message | opted_out | opted_in | from_opted_out | handoff | rate_limited | unreadable
    # | handler | given_up (another run of the route gave the message up meanwhile: _dispatch_after_commit)
    action: str
    handler: str | None = None


def route(
    event: dict[str, Any],
    settings: Settings | None = None,
    inbound: InboundMessage | None = None,
    on_stored: Callable[[int], None] | None = None,
) -> RouteOutcome:
    """Store the inbound event and hand it to its handler; see the module docstring. ``inbound``: the
    event already validated. ``on_stored``: called with the message's id once it is stored (by this run
    or an earlier one) and not routed yet."""
    settings = settings or get_settings()
    inbound = inbound or InboundMessage.model_validate(event)
    # One pooled connection for the common path: the storing transaction (which also dispatches), the
    # publish, then the mark of routed.
    with connection() as conn:
        try:
            stored = _store_and_dispatch(conn, inbound, event, settings)
        except _ConcurrentDuplicate:
            stored = None
        if stored is not None and on_stored is not None:
            on_stored(stored.message_id)
        # Stored (now, or before): the next message of the conversation may be stored.
        _leave_line(inbound)
        if stored is None:
            log.info("duplicate inbound message ignored", provider=inbound.provider)
            return RouteOutcome(None, "duplicate")
        if stored.handler is not None:
            _publish_stored(inbound, stored)
            with autocommit(conn):  # one statement: no BEGIN and COMMIT round trips
                messages.mark_routed(conn, stored.message_id)
            return _routed(RouteOutcome(stored.message_id, "handler", stored.handler))
    # The rarer outcomes, and a redelivered route finishing what an earlier run began, are decided after
    # the commit (their effects queue replies that read the stored message); the media fetch, when the
    # outcome wants it, is published before the message is marked routed, so a redelivery publishes it.
    outcome = _decide(stored.message_id, settings, stored.facts, stored.verdict)
    if inbound.media and outcome.action not in _MEDIA_NOT_FETCHED:
        get_publisher().publish([_media_job(stored.message_id)])
    with transaction() as conn:
        messages.mark_routed(conn, outcome.message_id)
        # A message given up keeps its code: a replay of the letter of the run that gave it up routes it.
        if outcome.handler is None and outcome.action != "given_up" and _is_verify(inbound):
            _forget_unchecked_code(conn, outcome.message_id)
    return _routed(outcome)


def _forget_unchecked_code(conn: psycopg.Connection, message_id: int) -> None:
    """Redact the code of a VERIFY routed to no handler (its sender over the rate limit or opted out, its
    conversation handed to a person): the verify stage, which redacts a code once checked, never sees it.
    Codes are stored hashed only; the raw event log never had it (:func:`_as_logged`). In the transaction
    that marks it routed: a route retried before that still finds the code, should it dispatch it then."""
    messages.redact_verify_code(conn, message_id)


def _is_verify(inbound: InboundMessage) -> bool:
    """Whether the message is a ``VERIFY 123456``, read as the router reads its stored body (its text,
    whitespace collapsed), without reading it back."""
    return verification.is_verify_code(collapse(inbound.answer_text))


def _routed(outcome: RouteOutcome) -> RouteOutcome:
    log.info(
        "inbound message routed",
        message_id=outcome.message_id,
        action=outcome.action,
        handler=outcome.handler,
    )
    return outcome


@dataclass(frozen=True)
class _Facts:
    """What the decision reads about a stored inbound message and its sender."""

    message_id: int
    contact_id: int
    type: MessageType
    text: str  # the body, whitespace collapsed
    reply_id: str | None  # the id (payload) of the button or list row tapped
    user_key: str
    opted_out: bool
    conversation_status: str
    linked: bool  # the sender's phone is linked to a user of the host application
    assistant_number: bool  # the number it came in on has its own assistant config
    # Stored by an earlier run of the route, which dispatched it to no handler (read again to decide).
    stored_earlier: bool = False


@dataclass(frozen=True)
class _Stored:
    """The storing transaction's result. ``facts`` (and ``verdict``, when the message was counted toward
    its sender's limit) only for a message stored by this run; ``handler`` when it was dispatched."""

    message_id: int
    facts: _Facts | None = None
    verdict: InboundVerdict | None = None
    handler: str | None = None


class _ConcurrentDuplicate(Exception):
    pass


class _StoredBefore(Exception):
    def __init__(self, message_id: int, routed: bool) -> None:
        super().__init__(message_id)
        self.message_id = message_id
        self.routed = routed


def _store_and_dispatch(
    conn: psycopg.Connection, inbound: InboundMessage, event: dict[str, Any], settings: Settings
) -> _Stored | None:
    """Store the message and, when it goes to a handler, mark it dispatched: one transaction. None when
    it was stored AND routed before (a duplicate)."""
    try:
        with conn.transaction():
            return _store_new(conn, inbound, event, settings)
    except _StoredBefore as before:
        # Rolled back (refreshing the contact is for new messages). Stop if it was routed too, else finish
        # the routing an earlier run began.
        return None if before.routed else _Stored(before.message_id)


def _store_new(
    conn: psycopg.Connection, inbound: InboundMessage, event: dict[str, Any], settings: Settings
) -> _Stored:
    columns = _message_columns(inbound)
    stored = inbound_store.store(
        conn,
        provider=inbound.provider.value,
        provider_message_id=inbound.provider_message_id,
        business_number=inbound.business_number,
        phone=contact_phone(inbound.sender_phone),
        bsuid=inbound.sender_bsuid,
        profile_name=inbound.profile_name,
        sent_at=inbound.sent_at,
        event_key=inbound.dedupe_key,
        event=_as_logged(inbound, event),
        **columns,
    )
    if stored.existing_id is not None:
        raise _StoredBefore(stored.existing_id, stored.existing_routed)
    if stored.message_id is not None:
        assert stored.contact_id is not None
        assert stored.conversation_status is not None
        facts = _Facts(
            message_id=stored.message_id,
            contact_id=stored.contact_id,
            type=inbound.type,
            text=collapse(columns["body"]),
            reply_id=inbound.reply.id if inbound.reply is not None else None,
            user_key=stored.phone or stored.bsuid or f"contact:{stored.contact_id}",
            opted_out=bool(stored.opted_out),
            conversation_status=stored.conversation_status,
            linked=stored.user_id is not None,
            assistant_number=stored.assistant_number,
        )
    elif stored.conversation_id is not None:
        # A concurrent route of the same event inserted it first (the insert waited for its commit);
        # that one routes it. Our contact refresh rolls back with this transaction.
        raise _ConcurrentDuplicate
    else:
        # The contact or the conversation was created by a concurrent transaction (two first messages of
        # a new sender), or a number changes hands (shared/db/inbound_store.py): the general path,
        # statement by statement, in this transaction.
        facts = _read_facts(conn, _insert(conn, inbound, event, columns))
    verdict, handler = _dispatch(conn, facts, settings)
    return _Stored(facts.message_id, facts, verdict, handler)


def _as_logged(inbound: InboundMessage, event: dict[str, Any]) -> dict[str, Any]:
    """The event as the raw log (``webhook_events``) keeps it: a VERIFY's code redacted, as the logs redact
    it. Codes are stored hashed only; the verify stage reads the code from the message's body, and redacts
    that once it has checked it (shared/verification.py)."""
    if not _is_verify(inbound):
        return event
    return redact_verify_codes(event)


def _message_columns(inbound: InboundMessage) -> dict[str, Any]:
    payload: dict[str, Any] = {"sent_at": inbound.sent_at.isoformat()}
    sender_phone = contact_phone(inbound.sender_phone)
    if sender_phone:
        # The number it came from, which its contact may not have by the time a handler reads it (the
        # sender moved, or the number went to another account): a VERIFY is for this number.
        payload["sender_phone"] = sender_phone
    if inbound.reply is not None:
        payload["reply"] = inbound.reply.model_dump(mode="json")
    if inbound.context_message_id:
        payload["context_message_id"] = inbound.context_message_id
    # What a location or a Flow reply says lives only here (neither has a body): the history API shows
    # it, the assistant reads it (shared/db/history.py, shared/ai/assistant.py).
    if inbound.location is not None:
        payload["location"] = inbound.location.model_dump(mode="json", exclude_none=True)
    if inbound.flow_reply is not None:
        payload["flow_reply"] = inbound.flow_reply.model_dump(mode="json")
    return {
        "type": inbound.type.value,
        "body": inbound.answer_text or None,
        "payload": payload,
        "media": [media.model_dump(mode="json", exclude_none=True) for media in inbound.media] or None,
    }


def _insert(
    conn: psycopg.Connection, inbound: InboundMessage, event: dict[str, Any], columns: dict[str, Any]
) -> int:
    """Store the message, creating its contact and conversation as needed; the new message's id."""
    provider = inbound.provider.value
    contact = contacts.upsert_from_inbound(
        conn,
        phone=contact_phone(inbound.sender_phone),
        bsuid=inbound.sender_bsuid,
        profile_name=inbound.profile_name,
        sent_at=inbound.sent_at,
    )
    conversation = conversations.get_or_create_live(
        conn, contact_id=contact.id, provider=provider, business_number=inbound.business_number
    )
    message_id = messages.insert_inbound(
        conn,
        conversation_id=conversation.id,
        contact_id=contact.id,
        provider=provider,
        provider_message_id=inbound.provider_message_id,
        **columns,
    )
    if message_id is None:
        raise _ConcurrentDuplicate  # as in _store_new
    messages.log_webhook_event(
        conn, provider=provider, event_key=inbound.dedupe_key, kind="message", body=_as_logged(inbound, event)
    )
    return message_id


def _read_facts(conn: psycopg.Connection, message_id: int, stored_earlier: bool = False) -> _Facts:
    record = messages.get_inbound(message_id, conn)
    contact = contacts.get(conn, record.contact_id)
    conversation = conversations.get(conn, record.conversation_id)
    assert contact is not None
    assert conversation is not None
    return _Facts(
        message_id=message_id,
        contact_id=contact.id,
        type=MessageType(record.type),
        text=collapse(record.body),
        reply_id=(record.payload.get("reply") or {}).get("id"),
        user_key=record.user_key,
        opted_out=contact.opted_out,
        conversation_status=conversation.status,
        linked=record.user_id is not None,
        assistant_number=assistant_configs.get(conn, record.business_number) is not None,
        stored_earlier=stored_earlier,
    )


def collapse(body: str | None) -> str:
    """A message's text as routing reads it: whitespace runs as one space, none at the ends."""
    return " ".join((body or "").split())


def _dispatch(
    conn: psycopg.Connection, facts: _Facts, settings: Settings
) -> tuple[InboundVerdict | None, str | None]:
    """In the storing transaction: the rate-limit verdict and, when the message goes to a handler, that
    handler, marked dispatched. The other outcomes' effects are :func:`_decide`'s, after the commit."""
    action = _uncounted_action(facts, settings)
    if action is not None:
        if action in _OPTING_KEYS:
            _opt_sender(conn, facts, action, settings)
        return None, None
    # Counted inside the transaction so that the dispatch can be in it too (after the commit it would
    # need a transaction of its own). The window counts a message id once, so a redelivered route
    # counting it again changes nothing. Should the transaction roll back, the id is never used and the
    # sender's window keeps one stray entry for a minute: after a failed commit a sender may be limited
    # one message early, never answered beyond the limit. The Redis round trip holds the contact row's
    # lock a moment longer, which only that sender's next message waits for.
    verdict = _count(facts, settings)
    if _counted_action(facts, verdict) != "handler":
        return verdict, None
    handler = _handler(facts, settings)
    # Recorded before publishing (the publish follows the commit), so the handler can never run before
    # its dispatch is known: from now on this message holds its conversation's turn until it is answered
    # (shared/db/turns.py). routed_at is still set only after the publish, since flows.step reads a
    # routed message without a ``handle:`` key as "no handler" (shared/flows/service.py); and a route
    # redelivered in between finds the message not routed and republishes this handler's job under the
    # same dedupe key.
    turns.mark_dispatched(conn, facts.message_id, handler)
    return verdict, handler


# The opting outcomes, and the key each one's confirmation is stored under.
_OPTING_KEYS = {"opted_out": "opt-out", "opted_in": "opt-in"}


def _opt_sender(conn: psycopg.Connection, facts: _Facts, action: str, settings: Settings) -> None:
    """In the storing transaction: opt the sender out (a STOP) or back in (a START while opted out), storing
    the confirmation, only when this message changes the contact; :func:`_decide` publishes its send.

    Here, not when the message is decided: the store holds the contact's row, and the conversation's next
    message is stored only once this one is (shared/arrivals.py), so it reads the contact as this message
    leaves it. Opted out when decided, a STOP left a START stored in between read as from a subscribed
    contact, routed as an ordinary message, and the user who sent START opted out."""
    answers.store_opting_reply(
        conn,
        facts.message_id,
        opted_out=action == "opted_out",
        key=reply_key(facts.message_id, _OPTING_KEYS[action]),
        provider=settings.active_provider.value,
        body=_confirmation(facts, action),
        in_transaction=True,
    )


def _confirmation(facts: _Facts, action: str) -> str:
    """The text that confirms an opt-out or an opt-in, in Spanish for the Spanish word."""
    if action == "opted_out":
        return OPT_OUT_TEXT_ES if _SPANISH_OPT_OUT in _said(facts) else OPT_OUT_TEXT
    return OPT_IN_TEXT_ES if _SPANISH_OPT_IN in _said(facts) else OPT_IN_TEXT


def _uncounted_action(facts: _Facts, settings: Settings) -> str | None:
    """The outcome decided before the sender's rate limit is counted, or None to count it."""
    if facts.type in _NOT_MESSAGES:
        return "not_a_message"
    said = _said(facts)
    if said & _keywords(settings.opt_out_words):
        return "opted_out"
    opting_in = bool(said & _keywords(settings.opt_in_words))
    if opting_in and facts.opted_out:
        return "opted_in"
    if facts.opted_out:
        # They asked for no messages: keep what they write, answer nothing until they send START.
        return "from_opted_out"
    if facts.conversation_status == "handoff":
        # A person answers this conversation: the bot says nothing, not even that they type too fast, and
        # the message does not count toward a limit that is the bot's.
        return "handoff"
    if opting_in and facts.stored_earlier:
        # Stored by an earlier run and dispatched to no handler: a subscribed sender's START is dispatched
        # with its store (unless over the rate limit: its notice is then skipped, as this path is a rare
        # redelivery), so this one came while its sender was opted out, and its store opted them in (read
        # again, the contact is subscribed). Its confirmation, stored then, is found under its key.
        return "opted_in"
    # START from a subscribed sender is an ordinary message, as the opt-in words are ordinary words: the
    # shop-floor pack's menu word, the help in project mode. Taken for an opt-in it changed nothing and
    # was answered by no one. (Twilio's own STOP/START handling is for SMS; on WhatsApp it is ours.)
    return None


def _said(facts: _Facts) -> set[str]:
    """The message as opt-out and opt-in words are compared: its whole text and, for a tapped button or
    list row, its id too (a template's quick-reply payload may say STOP where its title does not)."""
    return {_keyword(facts.text), _keyword(facts.reply_id or "")} - {""}


def _keywords(words: list[str]) -> set[str]:
    return {_keyword(word) for word in words}


def _keyword(text: str) -> str:
    """``text`` folded the way people vary an opt-out: case, accents, punctuation and emoji around it,
    spacing (``¡Baja!`` and ``STOP 🙏`` are ``baja`` and ``stop``). Still the whole message: words around
    the keyword are kept, so "please don't stop the service" never matches ``stop``."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(char for char in decomposed if unicodedata.category(char) != "Mn")
    return " ".join(trimmed(plain.casefold()).split())


def _counted_action(facts: _Facts, verdict: InboundVerdict) -> str:
    """The outcome once the message was counted: rate_limited, unreadable or handler."""
    if not verdict.allowed:
        return "rate_limited"
    if facts.type is MessageType.unknown:
        # Meta's "unsupported" (a poll, a view-once photo, an edit...), a type a provider added, or a message
        # of a known type that did not parse: there is nothing a handler could read (a menu would answer
        # "invalid option", the assistant a guess). Silence would leave the sender waiting for an answer
        # that never comes, so they are told, once per message, to send it another way.
        return "unreadable"
    return "handler"


def _publish_stored(inbound: InboundMessage, stored: _Stored) -> None:
    """The jobs of a message the storing transaction dispatched, in one atomic publish: the media fetch
    (ahead of the handler: provider media links expire within minutes, workers/media.py) and the handler."""
    assert stored.handler is not None
    jobs = [_media_job(stored.message_id)] if inbound.media else []
    jobs.append(_handler_job(stored.message_id, stored.handler))
    get_publisher().publish(jobs)


def _media_job(message_id: int) -> Job:
    return Job("inbound.fetch_media", {"message_id": message_id}, dedupe_key=f"media:{message_id}")


def _handler_job(message_id: int, handler: str) -> Job:
    return Job(handler, {"message_id": message_id}, dedupe_key=handler_key(message_id))


def _count(facts: _Facts, settings: Settings) -> InboundVerdict:
    """Count the message toward its sender's per-minute window (once per message id)."""
    limiter = _limiter(get_publisher().redis)
    return limiter.inbound(facts.user_key, facts.message_id, settings.rate_limit_per_minute)


@functools.lru_cache(maxsize=4)
def _limiter(client: redis.Redis) -> RateLimiter:
    # One per Redis client (a forked worker child has its own): making one hashes its Lua scripts.
    return RateLimiter(client)


def _handler(facts: _Facts, settings: Settings) -> str:
    # A number with its own assistant config is an assistant whatever WAPIPE_MODE says (issue 5).
    mode = Mode.assistant if facts.assistant_number else settings.mode
    # Only a subscribed sender's opt-in word gets here (an opted-out one's opts them in before).
    opting_in = bool(_said(facts) & _keywords(settings.opt_in_words))
    return pick_handler(facts.text, linked=facts.linked, mode=mode, opting_in=opting_in)


def _decide(
    message_id: int,
    settings: Settings,
    facts: _Facts | None = None,
    verdict: InboundVerdict | None = None,
) -> RouteOutcome:
    """Decide a stored message's route and do its effects: every outcome, from ``facts`` (read again when
    not given) and the rate-limit ``verdict`` (counted when not given). A message an earlier run already
    dispatched keeps that decision."""
    if facts is None:
        with transaction() as conn:
            handler = turns.dispatched_to(conn, message_id)
            if handler is None:
                facts = _read_facts(conn, message_id, stored_earlier=True)
        if handler is not None:
            # Its handler's task may be queued already (published under the dedupe key, the run then died
            # before marking the message routed): deciding again could name another handler (WAPIPE_MODE
            # changed, the sender linked since), recorded while the first one answers, or count the message
            # afresh in a later minute and tell the sender they type too fast on top of that answer.
            return _dispatch_after_commit(message_id, handler)
    assert facts is not None
    action = _uncounted_action(facts, settings)
    if action is None:
        if verdict is None:
            verdict = _count(facts, settings)
        action = _counted_action(facts, verdict)

    if action == "opted_out":
        # Confirmed by the message that opted the contact out: its storing transaction did, and stored the
        # confirmation (_opt_sender), which this finds under its key and sends. A contact opted out before
        # this message was stored (an earlier STOP) had that one confirmed, and each STOP has its own reply
        # key, so nothing is stored now. (A STOP stored by a version that opted out only here is opted out
        # now, by the same statement.)
        confirm_opt_out(message_id, _confirmation(facts, action), key="opt-out")
    elif action == "opted_in":
        # Likewise: confirmed by the message that opted the contact back in when it was stored.
        confirm_opt_in(message_id, _confirmation(facts, action), key="opt-in")
    elif action == "rate_limited":
        assert verdict is not None
        if verdict.send_notice:
            queue_reply(message_id, RATE_LIMIT_TEXT, key="rate-limit")
    elif action == "unreadable":
        queue_reply(message_id, UNREADABLE_TEXT, key="unreadable")
    elif action == "handler":
        return _dispatch_after_commit(message_id, _handler(facts, settings))
    # not_a_message, from_opted_out and handoff: stored, nothing more to do.
    return RouteOutcome(message_id, action)


def _dispatch_after_commit(message_id: int, handler: str) -> RouteOutcome:
    # Recorded before publishing, as in _dispatch.
    with transaction() as conn:
        marked = turns.mark_dispatched(conn, message_id, handler)
    if not marked:
        # Another run of the route gave the message up since this one found it unrouted (or its handler,
        # published by an earlier run, answered it already). That run took the handler's key, which
        # refuses the publish: dispatched again, the message would hold its turn with no handler to
        # answer it. A replay of that run's letter routes it (shared/commands/dlq.py).
        return RouteOutcome(message_id, "given_up")
    get_publisher().publish([_handler_job(message_id, handler)])
    return RouteOutcome(message_id, "handler", handler)


def pick_handler(text: str, *, linked: bool, mode: Mode, opting_in: bool = False) -> str:
    """The task that answers a message (INTERFACES.md, "Routing in inbound.route"); ``opting_in``: the
    message is an opt-in word (START) from a subscribed sender."""
    if verification.is_verify_code(text):  # the very rule the verify stage reads the code by
        return "verify.check_code"
    if mode is Mode.menu:
        return "flows.step"
    if mode is Mode.assistant:
        return "ai.reply"
    # Project mode: commands, and the linking instructions for numbers not linked yet; free text from a
    # linked user becomes a proposal. A message with no text (a photo alone) gets the commands' help, as
    # does START from a subscribed sender: it asks to begin, it names no work ("1. START" as a proposal).
    if is_command(text) or not linked or not text or opting_in:
        return "commands.handle"
    return "ai.parse_proposal"


class RouteTask(WapipeTask):
    """``inbound.route``'s class: a route retried after a failure keeps its place in its conversation's
    arrival line, and one that fails for good leaves it, so the conversation's later messages neither
    overtake the first nor wait the 5 minutes before giving up on the second (shared/arrivals.py).

    A route that fails after its message is stored (the handler's task could not be published, the
    message not marked routed) is retried with the message already holding its turn (shared/db/turns.py),
    and no handler task yet to mark it retrying: so its retry marks the message as a handler's does, and a
    route that fails for good releases the turn as a handler does (workers/ordering.py), the message then
    recorded as routed to no handler (not routed, it would hold the turn as long): ``wapipe dlq replay`` of
    the route's letter routes it again (shared/commands/dlq.py). Unless a run of
    the route published the handler's task already (it failed after that, marking the message routed), or
    another run of the route publishes it as this one gives up: the turn and the retrying mark are then
    the handler's, which may be queued or retrying still. Which of the two is settled in one step with the
    publish (workers/ordering.py ``give_up_turn``)."""

    def retry(self, *args: Any, **options: Any) -> Any:
        due = ordering.retry_due_at(self, options)
        if due is not None:
            _mark_retrying(self.request, due)
            stored = _stored_by(self.request)
            if stored is not None:
                ordering.mark_retrying(stored, due)
        # A route that was waiting for an earlier message when the failure came would otherwise count its
        # retries' backoff as waiting, and give up on that message as soon as a long outage ends.
        return super().retry(*args, **ordering.with_fresh_clock(self, options))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        inbound = _inbound_of(args, kwargs)
        if inbound is not None:
            _leave_line(inbound)
        stored = _stored_by(self.request)
        if stored is not None:
            ordering.give_up_turn(stored, exc, routing=True)


# Where a route task's request keeps the id of the message its run stored (or found stored), for its retry
# or its failure: Celery builds a fresh request for the retry, so the next run records it again.
_STORED_MESSAGE_ID = "wapipe_stored_message_id"


def _stored_by(request: Any) -> int | None:
    """The id of the message the route task running ``request`` stored; None before it is stored."""
    return getattr(request, _STORED_MESSAGE_ID, None)


def _inbound_of(args: Any, kwargs: Any) -> InboundMessage | None:
    """The inbound message a route task was called with; None when it is not an event (it has no entry)."""
    event = (kwargs or {}).get("event", args[0] if args else None)
    try:
        return InboundMessage.model_validate(event)
    except ValueError:
        return None


def _mark_retrying(request: Any, due: float) -> None:
    """Mark the retried route's entry as retrying, due again at ``due`` (epoch seconds). Best effort:
    without the mark, a message that has waited behind it for 5 minutes already may go first."""
    inbound = _inbound_of(request.args, request.kwargs)
    if inbound is None:
        return
    try:
        # Only the line that holds the entry is marked.
        for line in lines_of(inbound):
            if _line().retrying(line, inbound.dedupe_key, due):
                break
    except redis.RedisError as exc:
        log.warning("could not mark the arrival line's entry as retrying", error_type=type(exc).__name__)


@event_task("inbound.route", base=RouteTask)
def route_task(self: Any, event: dict[str, Any]) -> None:
    inbound = InboundMessage.model_validate(event)
    _take_place(self, inbound)
    route(event, inbound=inbound, on_stored=functools.partial(setattr, self.request, _STORED_MESSAGE_ID))


def _take_place(task: Task, inbound: InboundMessage) -> None:
    """Return once every message that arrived before ``inbound`` in its conversation is stored; until
    then, wait a moment and come back (shared/arrivals.py)."""
    request = task.request
    if request.called_directly or request.is_eager:
        return
    entry = inbound.dedupe_key
    line, ahead = _line().place(lines_of(inbound), entry)
    if line is None:
        return  # no entry: it waits for nothing
    waits = ordering.waits_of(task)
    for look in range(_MAX_LOOKS):
        if look:
            ahead = _line().ahead(line, entry)
        if not ahead:
            return
        if waits >= _LOOK_UP_AFTER_WAITS:
            # The line has not moved for a while: an entry may be a stored message's whose router died
            # between its commit and leaving the line. Those are taken out, and the line looked at again.
            stored = _stored_entries(ahead)
            if stored:
                _line().leave(line, *stored)
                continue
        since = None  # as the request says
        waited = time.time() - ordering.waiting_since(task)
        if waited >= arrivals.GIVE_UP_AFTER_SECONDS:
            dropped, retry_due, marked = _line().drop_ahead(line, entry)
            if marked:
                # Not dropped yet: marked first, so a router behind that gives up now too waits for this one.
                ordering.wait_a_moment(task, countdown=ordering.PASS_OVER_LOOK_SECONDS)
                return  # it may not wait any longer: go ahead
            if retry_due is None:
                log.warning(
                    "earlier messages of the conversation were not stored in time; storing this one first",
                    earlier_messages=dropped,
                    waited_seconds=round(waited),
                )
                return
            # An earlier message's route is retrying after a failure: not lost, so wait for it, and give up
            # only that long after its retry is due.
            log.debug(  # on every poll while it waits: debug
                "an earlier message of the conversation is being retried; waiting for it",
                retry_due_in_seconds=round(retry_due - time.time()),
            )
            since = retry_due
        ordering.wait_a_moment(task, countdown=_poll_seconds(len(ahead)), since=since)
        return  # it may not wait any longer: go ahead
    ordering.wait_a_moment(task, countdown=_poll_seconds(1))


# Looks at the line per run: each may find up to arrivals.LOOK_AHEAD entries of stored messages.
_MAX_LOOKS = 3
# Waits after which the entries ahead are looked up in the database (~0.1-0.2 s for the next in line).
_LOOK_UP_AFTER_WAITS = 4


def _poll_seconds(place: int) -> float:
    """How long a route task waits before it looks at the line again, with ``place`` messages ahead of it:
    the next in line looks every few tens of milliseconds (a store takes milliseconds), one further back
    less often, at most every second, so a burst from one sender drains at the store's pace without every
    waiter polling at that pace."""
    return ordering.jittered_wait(place)


def _stored_entries(entries: tuple[str, ...]) -> set[str]:
    """Which of these line entries (inbound dedupe keys, all of one provider) name a stored message."""
    named = {entry: part for entry in entries if (part := inbound_key_parts(entry)) is not None}
    if not named:
        return set()
    provider = next(iter(named.values()))[0]
    with connection() as conn:
        stored = messages.stored_provider_ids(conn, provider, [ident for _, ident in named.values()])
    return {entry for entry, (_, ident) in named.items() if ident in stored}


def _leave_line(inbound: InboundMessage) -> None:
    """Take the stored message out of its line. Best effort: a later message's router that finds the entry
    looks the message up, and drops it as stored (:func:`_take_place`)."""
    try:
        _line().leave_all(lines_of(inbound), inbound.dedupe_key)
    except redis.RedisError as exc:
        log.warning("could not leave the arrival line", error_type=type(exc).__name__)


def _line() -> arrivals.Line:
    return _line_for(get_publisher().redis)


@functools.lru_cache(maxsize=4)
def _line_for(client: redis.Redis) -> arrivals.Line:
    # One per Redis client (a forked worker child has its own): making one hashes its Lua script.
    return arrivals.Line(client)
