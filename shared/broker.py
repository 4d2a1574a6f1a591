"""Kombu's Redis transport, plus: what a worker held when Redis went away goes back on its queue at once.

Redis has no acknowledgements of its own; kombu emulates them by keeping every message it delivers in
the ``unacked`` hash until the worker acks it, and by putting back, when a channel closes, the messages
that channel still holds (``QoS.restore_unacked_once``). When the channel closes *because Redis is down*
(a restart, a failover), that put-back fails, and the messages the worker held (running, prefetched,
or counting down to a retry; all safe in the AOF) wait in ``unacked`` until the visibility timeout
(an hour, see shared/queues.py) makes them visible again: every message in flight during a one-second
Redis restart would be answered an hour late.

Here the failed put-back is remembered (the delivery tags only: the messages are in Redis), and the
worker's next channel, opened once Redis answers again, puts those messages back on their queues before
it consumes anything. Only this worker's own tags are touched, so nothing another worker is running is
redelivered; a task that was running when Redis went away may run a second time, which every task
allows (ARCHITECTURE.md: every task is safe to run twice).

Selected by ``broker_transport`` in :func:`shared.queues.celery_config`; the URL stays ``redis://``.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from shared.logging import get_logger

log = get_logger(__name__)

_lock = threading.Lock()
# Delivery tags this process held when its channel closed and Redis could not take them back.
_stranded: set[str] = set()
_BROKER_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


class QoS(kombu_redis.QoS):
    def ack(self, delivery_tag: str) -> None:
        self._refuse_once_closed()
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._refuse_once_closed()
        super().reject(delivery_tag, requeue=requeue)

    def _refuse_once_closed(self) -> None:
        # A task that was running when the connection was lost finishes later, on a channel kombu has torn
        # down: acking through it fails inside kombu with an AttributeError, which kills the consumer.
        # A connection error instead is what Celery expects ("Couldn't ack", logged); the message itself
        # was kept as stranded and goes back on its queue, so the task runs again (safe, see above).
        if self.channel.connection is None:
            raise redis.ConnectionError("the channel this message came on is closed")

    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        # Redis down, or kombu already tore the connection down while closing the channel after a
        # connection error (its client is gone: AttributeError). Either way the tags are kept, and putting
        # a tag back later is a no-op if its message was meanwhile acked or restored.
        except Exception as exc:
            with _lock:
                _stranded.update(str(tag) for tag in self._delivered)
            log.warning(
                "broker unreachable; held messages go back to their queues on reconnect",
                messages=len(self._delivered),
                error_type=type(exc).__name__,
            )
            self._delivered.clear()


class Channel(kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # pings Redis: it answers again
        self._restore_stranded()

    def _restore_stranded(self) -> None:
        with _lock:
            tags = list(_stranded)
        restored = 0
        for tag in tags:
            try:
                # Back where the consumer takes its next message: these were due first.
                self.qos.restore_by_tag(tag)
            except _BROKER_DOWN:
                return  # gone again: the next channel tries the rest
            with _lock:
                _stranded.discard(tag)
            restored += 1
        if restored:
            log.warning("messages held during a broker outage put back on their queues", messages=restored)


class Transport(kombu_redis.Transport):
    Channel = Channel
