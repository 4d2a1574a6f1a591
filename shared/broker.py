"""Kombu's Redis transport, plus: nothing a worker held is left behind when Redis goes away and comes back.

Redis has no acknowledgements of its own; kombu emulates them: ``BRPOP`` takes a message off its queue,
the worker then records it in the ``unacked`` hash (and its ``unacked_index``), acking deletes it there,
and a closing channel puts back what it still holds (``QoS.restore_unacked_once``). Anything left in
``unacked`` is put back only after the visibility timeout (an hour, see shared/queues.py). Around a Redis
restart three steps can fail, and each would leave a message there for that hour, or lose it:

- putting back, on close, what the channel held: Redis is down;
- recording a message just taken with ``BRPOP``: Redis is going down. It may even have run the write
  and exited before answering it (seen in the redis-restart chaos test), so the message is in ``unacked``
  while the worker believes the write failed, and no channel knows of it;
- an ack or a reject while Redis is down, on a channel that lives on: kombu keeps an idle consumer's
  channel across a dropped connection (the prefetch is full, so no ``BRPOP`` is waiting to fail), and
  nobody tries again.

So each of these becomes a debt of this process, by delivery tag, paid as soon as Redis answers again: a
new channel pays before it consumes, and a live one each time kombu sweeps for visible messages. Every
debt is a put-back: the message goes back on its queue, from ``unacked`` or, when the worker may hold the
only copy, from the copy it kept. Even an ack Redis did not confirm is a put-back, not an ack to retry:
the transport cannot tell a task that ran from one that failed because Redis was down (Celery acks those
too, and rejects without requeue the ones whose retry it could not publish), and only running it again is
safe for both. Each debt is paid in one transaction that also removes the tag from ``unacked``, so it is
paid once; only this process's own tags are touched, so nothing another worker is running is redelivered.
A task may run a second time, which every task allows (ARCHITECTURE.md: every task is safe to run twice).

Not covered: a message ``BRPOP`` took in Redis's last turn before it exits is off its queue, and the
reply that carried it is never sent, so no worker ever has it and nothing here can know of it. Closing
that needs a fetch that records the message on the server in the same step (``BLMOVE`` into a list of
the consumer's own for a worker on one queue, or a Lua pop-and-record); chaos/test_redis_restart.py is
marked xfail until then.

Selected by ``broker_transport`` in :func:`shared.queues.celery_config`; the URL stays ``redis://``.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from shared.logging import get_logger

log = get_logger(__name__)

_BROKER_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


@dataclass(frozen=True)
class Debt:
    """A message this process must put back on its queue once Redis answers again."""

    # [payload, exchange, routing key], as kombu stores it in ``unacked``: kept when the worker may
    # hold the only copy (BRPOP took it, recording it failed).
    message: list[Any] | None = None


_lock = threading.Lock()
_debts: dict[str, Debt] = {}


def _owe(tags: list[str], debt: Debt) -> None:
    with _lock:
        for tag in tags:
            _debts[str(tag)] = debt
    log.warning(
        "broker unreachable; what Redis did not confirm goes back on its queue on reconnect",
        messages=len(tags),
    )


def _forget_debts() -> None:
    # A forked pool child starts with a copy of its parent's debts: they are the parent's to pay.
    _debts.clear()


os.register_at_fork(after_in_child=_forget_debts)


def settle_debts(channel: kombu_redis.Channel) -> None:
    """Pay this process's debts through ``channel``; stop at the first sign Redis is down again."""
    with _lock:
        debts = list(_debts.items())
    if not debts:
        return
    paid = 0
    for tag, debt in debts:
        try:
            # A client of its own (``channel.client``'s connection may be waiting on a BRPOP).
            with channel.conn_or_acquire() as client:
                client.transaction(functools.partial(_pay, channel, tag, debt), channel.unacked_key)
        except (redis.RedisError, OSError):
            break  # down again (or refusing writes): the next sweep or channel tries the rest
        with _lock:
            if _debts.get(tag) is debt:
                del _debts[tag]
        paid += 1
    if paid:
        log.warning("broker back; what it did not confirm is back on its queue", messages=paid)


def _pay(channel: kombu_redis.Channel, tag: str, debt: Debt, pipe: Any) -> None:
    held = pipe.hget(channel.unacked_key, tag)
    pipe.multi()
    pipe.zrem(channel.unacked_index_key, tag).hdel(channel.unacked_key, tag)
    # The copy in ``unacked`` if there is one; none and no copy of our own: an ack or a put-back
    # already got through (its reply was lost), so there is nothing to put back.
    message = loads(bytes_to_str(held)) if held else debt.message
    if message is not None:
        payload, exchange, routing_key = message
        channel._do_restore_message(payload, exchange, routing_key, pipe)


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except _BROKER_DOWN:
            # BRPOP already took the message off its queue: keep a copy, it may be the only one.
            delivery = message.delivery_info
            kept = [message._raw, delivery["exchange"], delivery["routing_key"]]
            _owe([delivery_tag], Debt(message=kept))
            raise

    def ack(self, delivery_tag: str) -> None:
        self._refuse_once_closed()
        try:
            super().ack(delivery_tag)
        except _BROKER_DOWN:
            self._owe_instead(delivery_tag)
            raise

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._refuse_once_closed()
        try:
            super().reject(delivery_tag, requeue=requeue)
        except _BROKER_DOWN:
            self._owe_instead(delivery_tag)
            raise

    def _owe_instead(self, delivery_tag: str) -> None:
        # The debt replaces the delivery: the channel forgets the tag (frees its prefetch slot, and a
        # later close does not put it back a second time).
        _owe([delivery_tag], Debt())
        self._quick_ack(delivery_tag)

    def _refuse_once_closed(self) -> None:
        # A task that was running when the connection was lost finishes later, on a channel kombu has torn
        # down: acking through it fails inside kombu with an AttributeError, which kills the consumer.
        # A connection error instead is what Celery expects ("Couldn't ack", logged). The close already
        # put the message back (or made it a debt), so the task runs again (safe, see above); owing it a
        # second time could put back a redelivery another worker is running.
        if self.channel.connection is None:
            raise redis.ConnectionError("the channel this message came on is closed")

    def restore_unacked(self, client: Any = None) -> None:
        tags = [str(tag) for tag in self._delivered]
        self._delivered.clear()
        for done, tag in enumerate(tags):
            try:
                self.restore_by_tag(tag, client=client)
            # Redis down, or kombu already tore the connection down while closing the channel after a
            # connection error (its client is gone: AttributeError). Either way the rest become debts.
            except Exception:
                _owe(tags[done:], Debt())
                return

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        # kombu's periodic sweep (every few seconds in a worker): Redis answers, so pay what is owed.
        settle_debts(self.channel)
        super().restore_visible(*args, **kwargs)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # pings Redis: it answers again
        settle_debts(self)


class Transport(kombu_redis.Transport):
    Channel = Channel
