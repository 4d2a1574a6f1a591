"""Replying to an inbound message: store the outbound message once, then enqueue ``notify.send``.

Every stage answers through :func:`answer` (its last reply to a message: the reply and the end of the
message's turn in one transaction) or :func:`queue_reply` (any other). The idempotency key
``reply:<inbound id>`` (or ``reply:<inbound id>:<key>`` for a second reply to the same message) makes a
redelivered handler task store nothing new; notify.send is enqueued again and is itself idempotent, so
the user gets one message. A STOP or START is confirmed through :func:`confirm_opt_out` or
:func:`confirm_opt_in`, which store the confirmation in the statement that opts the contact out or in.

A handler that gives up on a message for good has its sender told to send it again: :func:`apologise`,
under a key of its own (``reply:<inbound id>:apology``), so the reply's key stays free for the handler's
real reply when an operator replays it (``wapipe dlq replay``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared import providers
from shared.db import answers, messages
from shared.db.pool import connection
from shared.logging import get_logger
from shared.queues import get_publisher, notify_jobs
from shared.settings import get_settings
from shared.wire.outbound_api import InteractiveIn

log = get_logger(__name__)

_TYPED = ("interactive", "media", "template", "reaction")

APOLOGY = "Sorry, something went wrong with your last message. Please send it again."
APOLOGY_KEY = "apology"


def reply_key(inbound_id: int, key: str = "") -> str:
    return f"reply:{inbound_id}:{key}" if key else f"reply:{inbound_id}"


def queue_reply(inbound_id: int, text: str, *, key: str = "", payload: dict[str, Any] | None = None) -> int:
    """Queue a reply to the stored inbound message ``inbound_id``; return the outbound message id.

    ``text`` is always the plain-text version. ``payload`` optionally carries typed content for providers
    that can send it, under the key named like its type, with ``type`` saying which one, e.g.
    ``{"type": "interactive", "interactive": {"kind": "buttons", "body": ..., "buttons": [...]}}``
    (see :class:`shared.providers.base.OutboundMessage`); providers that cannot send it send ``text``.
    """
    return _queued(_queue(inbound_id, text, key=key, payload=payload, bypass_opt_out=False, handled=False))


def confirm_opt_out(inbound_id: int, text: str, *, key: str) -> int | None:
    """Opt the sender of inbound ``inbound_id`` out and queue ``text``, the confirmation (the one message an
    opted-out contact still receives), only when this message is what opted them out: not a STOP from a
    contact opted out already, nor the second of two STOPs routed at once. Return its id, or None."""
    return _queue_opting(inbound_id, text, key=key, opted_out=True)


def confirm_opt_in(inbound_id: int, text: str, *, key: str) -> int | None:
    """Opt the sender of inbound ``inbound_id`` back in and queue ``text``, the confirmation, only when this
    message is what opted them in: not a START from a contact subscribed already, nor the second of two
    STARTs routed at once. Return its id, or None."""
    return _queue_opting(inbound_id, text, key=key, opted_out=False)


def hand_over(inbound_id: int, text: str, *, payload: dict[str, Any] | None = None) -> int | None:
    """Hand the conversation of inbound ``inbound_id`` to a person and queue ``text``, the confirmation, in
    one statement, only when this message is what handed it over: not in a conversation taken over, closed
    or opted out of meanwhile, nor for a second request. The message is recorded as handled either way.
    Return the confirmation's id, or None."""
    with connection() as conn:
        stored = answers.store_handoff_reply(
            conn,
            inbound_id,
            key=reply_key(inbound_id),
            provider=get_settings().active_provider.value,
            body=_within(text, providers.text_max()),
            payload=payload or {},
        )
    return _published(inbound_id, stored, "handoff not made: the conversation was not open to the bot")


# What a handler answers with when it finds the message's reply stored already: the text is ignored (nothing
# new is stored); the call enqueues the send again and marks the message handled, should it not be.
ALREADY_ANSWERED = "(already answered)"


def answer(inbound_id: int, text: str, *, key: str = "", payload: dict[str, Any] | None = None) -> int:
    """Reply to an inbound message and record that a handler answered it; return the outbound id.

    The reply and the record commit together, so the message holds its conversation's turn until its
    reply is stored, and no longer. A handler killed after the commit, before ``notify.send`` is
    enqueued, is redelivered: answering again stores nothing new and enqueues the send again.
    """
    return _queued(_queue(inbound_id, text, key=key, payload=payload, bypass_opt_out=False, handled=True))


def answer_as_bot(inbound_id: int, text: str, *, payload: dict[str, Any] | None = None) -> int | None:
    """:func:`answer`, unless the conversation was handed to a person or closed, or its contact opted out,
    meanwhile (checked in the statement that stores the reply): then no reply is stored, the message is still
    recorded as handled so its conversation's turn moves on, and None is returned."""
    return _queue(
        inbound_id, text, key="", payload=payload, bypass_opt_out=False, handled=True, only_if_bot_may=True
    )


def apologise(inbound_id: int) -> int | None:
    """Tell the sender of inbound ``inbound_id``, once, that it was not handled and to send it again, and
    end its turn as :func:`answer` does; return the apology's outbound id, None when it has its reply.

    Not under the reply's key: a replay of the handler that gave up must still be able to store its real
    reply (before, the apology held ``reply:<id>`` and the replayed stage's answer was silently dropped).
    Under a key of its own, it is sent once however often the message's handlers give up, replays
    included. A handler that stores its reply at the same moment as another run of it gives up can cost
    the user one needless apology, never a lost reply.
    """
    if reanswered(inbound_id):
        return None  # answered after all: nothing to apologise for
    return answer(inbound_id, APOLOGY, key=APOLOGY_KEY)


def reanswered(inbound_id: int) -> bool:
    """Whether inbound ``inbound_id`` has its reply stored already (by an earlier run of its handler); if so,
    :func:`answer` it again: with its key taken that stores nothing, but marks the message handled and
    enqueues the reply's send again, should the run that stored it have died before either (notify.send
    sends it once regardless)."""
    with connection() as conn:
        reply = messages.find_outbound_by_key(conn, reply_key(inbound_id))
    if reply is not None:
        answer(inbound_id, ALREADY_ANSWERED)
    return reply is not None


def _sendable(payload: dict[str, Any]) -> dict[str, Any]:
    """The typed content, or none when WhatsApp would refuse it: a menu flow's step filled in past an
    interactive body's 1,024 characters (its answers quoted back) is refused for good by the provider and
    would reach the user as nothing. Without it the reply goes as its plain text, the numbered version every
    provider sends. Checked by the same model the notify API checks interactive messages with."""
    if payload.get("type") != "interactive":
        return payload
    try:
        InteractiveIn.model_validate(payload.get("interactive"))
    except ValidationError as exc:
        log.warning("interactive reply sent as plain text", errors=exc.error_count())
        return {}
    return payload


def _within(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, at a word, with an ellipsis: a reply longer than the provider
    takes (an assistant's long answer, a long list) would be refused for good and reach the user as
    nothing. Each handler keeps its replies short; this is the backstop."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    words = cut.rsplit(maxsplit=1)
    at_word = words[0].rstrip() if words else ""
    log.warning("reply cut to the provider's length", length=len(text), limit=limit)
    return (at_word if len(at_word) > limit // 2 else cut) + "…"


def _queued(message_id: int | None) -> int:
    assert message_id is not None, "a reply not guarded by only_if_bot_may is always stored"
    return message_id


def _queue(
    inbound_id: int,
    text: str,
    *,
    key: str,
    payload: dict[str, Any] | None,
    bypass_opt_out: bool,
    handled: bool,
    only_if_bot_may: bool = False,
) -> int | None:
    if not text:
        raise ValueError("a reply needs its plain text, even when it carries typed content")
    text = _within(text, providers.text_max())
    payload = _sendable(dict(payload or {}))
    kind = payload.get("type") if payload.get("type") in _TYPED else "text"
    with connection() as conn:
        stored = answers.store_reply(
            conn,
            inbound_id,
            key=reply_key(inbound_id, key),
            provider=get_settings().active_provider.value,
            kind=kind,
            body=text,
            payload=payload,
            bypass_opt_out=bypass_opt_out,
            handled=handled,
            only_if_bot_may=only_if_bot_may,
        )
    return _published(
        inbound_id, stored, "reply dropped: conversation handed over or closed, or contact opted out"
    )


def _queue_opting(inbound_id: int, text: str, *, key: str, opted_out: bool) -> int | None:
    # The change and its confirmation in one statement: of two routes deciding at once, only the one whose
    # statement changed the contact stores it, and a redelivered route finds it stored exactly when its
    # first run made the change (then only the send is enqueued again).
    with connection() as conn:
        stored = answers.store_opting_reply(
            conn,
            inbound_id,
            opted_out=opted_out,
            key=reply_key(inbound_id, key),
            provider=get_settings().active_provider.value,
            body=text,
        )
    return _published(inbound_id, stored, "not confirmed: the contact was opted out or in already")


def _published(inbound_id: int, stored: tuple[int, bool] | None, why_not_stored: str) -> int | None:
    """The stored reply's id once its send is enqueued; None, saying ``why_not_stored``, when the store
    statement's guard stored nothing."""
    if stored is None:
        log.info(why_not_stored, inbound_id=inbound_id)
        return None
    message_id, created = stored
    # After the commit: notify.send must find the row. A second enqueue for the same message is harmless.
    get_publisher().publish(notify_jobs([message_id]))
    log.info("reply queued", inbound_id=inbound_id, message_id=message_id, new=created)
    return message_id
