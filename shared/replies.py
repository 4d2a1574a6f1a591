"""Replying to an inbound message: store the outbound message once, then enqueue ``notify.send``.

Every stage answers through :func:`answer` (its last reply to a message: the reply and the end of the
message's turn in one transaction) or :func:`queue_reply` (any other). The idempotency key
``reply:<inbound id>`` (or ``reply:<inbound id>:<key>`` for a second reply to the same message) makes a
redelivered handler task store nothing new; notify.send is enqueued again and is itself idempotent, so
the user gets one message.
"""

from __future__ import annotations

from typing import Any

from shared.db import answers
from shared.db.pool import connection
from shared.logging import get_logger
from shared.queues import get_publisher, notify_jobs
from shared.settings import get_settings

log = get_logger(__name__)

_TYPED = ("interactive", "media", "template", "reaction")


def reply_key(inbound_id: int, key: str = "") -> str:
    return f"reply:{inbound_id}:{key}" if key else f"reply:{inbound_id}"


def queue_reply(inbound_id: int, text: str, *, key: str = "", payload: dict[str, Any] | None = None) -> int:
    """Queue a reply to the stored inbound message ``inbound_id``; return the outbound message id.

    ``text`` is always the plain-text version. ``payload`` optionally carries typed content for providers
    that can send it, under the key named like its type, with ``type`` saying which one, e.g.
    ``{"type": "interactive", "interactive": {"kind": "buttons", "body": ..., "buttons": [...]}}``
    (see :class:`shared.providers.base.OutboundMessage`); providers that cannot send it send ``text``.
    """
    return _queue(inbound_id, text, key=key, payload=payload, bypass_opt_out=False, handled=False)


def queue_opt_out_notice(inbound_id: int, text: str, *, key: str) -> int:
    """The confirmation of a STOP: the one message an opted-out contact still receives."""
    return _queue(inbound_id, text, key=key, payload=None, bypass_opt_out=True, handled=False)


def answer(inbound_id: int, text: str, *, key: str = "", payload: dict[str, Any] | None = None) -> int:
    """Reply to an inbound message and record that a handler answered it; return the outbound id.

    The reply and the record commit together, so the message holds its conversation's turn until its
    reply is stored, and no longer. A handler killed after the commit, before ``notify.send`` is
    enqueued, is redelivered: answering again stores nothing new and enqueues the send again.
    """
    return _queue(inbound_id, text, key=key, payload=payload, bypass_opt_out=False, handled=True)


def _queue(
    inbound_id: int,
    text: str,
    *,
    key: str,
    payload: dict[str, Any] | None,
    bypass_opt_out: bool,
    handled: bool,
) -> int:
    if not text:
        raise ValueError("a reply needs its plain text, even when it carries typed content")
    payload = dict(payload or {})
    kind = payload.get("type") if payload.get("type") in _TYPED else "text"
    with connection() as conn:
        message_id, created = answers.store_reply(
            conn,
            inbound_id,
            key=reply_key(inbound_id, key),
            provider=get_settings().active_provider.value,
            kind=kind,
            body=text,
            payload=payload,
            bypass_opt_out=bypass_opt_out,
            handled=handled,
        )
    # After the commit: notify.send must find the row. A second enqueue for the same message is harmless.
    get_publisher().publish(notify_jobs([message_id]))
    log.info("reply queued", inbound_id=inbound_id, message_id=message_id, new=created)
    return message_id
