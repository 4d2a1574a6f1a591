"""shared/broker.py against a real redis-server of our own (AOF, stopped and started like an operator would):
whatever Redis did not confirm around an outage is settled once it answers again, each message once.

kombu is driven directly (no Celery), so each step of its ack emulation can be made to fail at the
moment it fails in a real restart.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message
from redis.commands.core import Script

from shared import broker
from tests.integration.chaos.servers import PrivateRedis, private_folder

QUEUE = Queue("broker-test", Exchange("broker-test", type="direct"), routing_key="broker-test")


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    with private_folder() as folder:
        redis_server = PrivateRedis(folder / "redis").start()
        try:
            yield redis_server
        finally:
            redis_server.stop()


@pytest.fixture(autouse=True)
def no_debts() -> Iterator[None]:
    broker._debts.clear()
    yield
    broker._debts.clear()


def connect(server: PrivateRedis) -> Connection:
    return Connection(server.url, transport="shared.broker:Transport")


def publish(connection: Connection, body: dict[str, Any]) -> None:
    producer = Producer(connection.channel())
    producer.publish(body, exchange=QUEUE.exchange, routing_key="broker-test", declare=[QUEUE])


def receive(connection: Connection) -> list[Message]:
    """Consume on a fresh channel until nothing more comes; leave every message unacked."""
    got: list[Message] = []
    with Consumer(connection.channel(), [QUEUE], callbacks=[lambda body, message: got.append(message)]):
        while True:
            try:
                connection.drain_events(timeout=1.5)
            except TimeoutError:
                return got


def state(server: PrivateRedis) -> tuple[int, int]:
    """(messages waiting on the queue, messages in ``unacked``)."""
    client = redis.Redis.from_url(server.url)
    try:
        return client.llen("broker-test"), client.hlen("unacked")
    finally:
        client.close()


def test_a_fetch_takes_the_message_and_records_it_in_unacked_in_one_step(server: PrivateRedis) -> None:
    """What kombu's QoS.append would have written after its BRPOP, written by the fetch itself: the
    message verbatim (its empty list and object stay what they were), its exchange and routing key."""
    with connect(server) as connection:
        publish(connection, {"n": 0, "empty": [], "none": {}})
        (message,) = receive(connection)
        assert state(server) == (0, 1)
        client = redis.Redis.from_url(server.url)
        record = json.loads(client.hget("unacked", message.delivery_tag))
        assert record == [message._raw, "broker-test", "broker-test"]
        assert client.zscore("unacked_index", message.delivery_tag) is not None
        client.close()
        message.ack()
    assert state(server) == (0, 0)


def test_a_consumer_that_does_not_ack_leaves_nothing_in_unacked(server: PrivateRedis) -> None:
    with connect(server) as connection:
        publish(connection, {"n": 0})
        got: list[Message] = []
        with Consumer(connection.channel(), [QUEUE], callbacks=[lambda body, m: got.append(m)], no_ack=True):
            connection.drain_events(timeout=5)
    assert len(got) == 1
    assert state(server) == (0, 0)


def test_every_publish_and_put_back_rings_its_queues_bell_once(server: PrivateRedis) -> None:
    client = redis.Redis.from_url(server.url)
    bell = broker.bell_key("broker-test")
    with connect(server) as connection:
        publish(connection, {"n": 1})
        publish(connection, {"n": 2})
        assert client.lrange(bell, 0, -1) == [b"1"]  # one token, however many messages
        client.delete(bell)
        (first, second) = receive(connection)
        first.reject(requeue=True)
        assert client.lrange(bell, 0, -1) == [b"1"]
        second.ack()
    client.close()


def test_a_message_pushed_without_a_ring_is_still_fetched(server: PrivateRedis) -> None:
    """A token is only a wake-up (one can be lost in a restart): a worker looks at every BRPOP timeout."""
    with connect(server) as connection:
        publish(connection, {"n": 1})
        redis.Redis.from_url(server.url).delete(broker.bell_key("broker-test"))
        (message,) = receive(connection)
        assert message.payload == {"n": 1}
        message.ack()
    assert state(server) == (0, 0)


@pytest.mark.parametrize("redis_ran_it", [True, False], ids=["reply-lost", "never-ran"])
def test_a_fetch_redis_did_not_answer_leaves_its_message_on_its_queue_once_redis_is_back(
    server: PrivateRedis, monkeypatch: pytest.MonkeyPatch, redis_ran_it: bool
) -> None:
    """On SIGTERM Redis may run the fetch and exit without answering it: the message is then in
    ``unacked`` and the worker never saw it. Its next channel puts it back, once; a fetch that never ran
    left its message where it was."""
    with connect(server) as connection:
        publish(connection, {"n": 1})
        real_call = Script.__call__

        def redis_goes_down(script: Script, *args: Any, **kwargs: Any) -> Any:
            if script.script is not broker._TAKE:
                return real_call(script, *args, **kwargs)
            if redis_ran_it:
                real_call(script, *args, **kwargs)
            raise redis.ConnectionError("Connection closed by server.")

        monkeypatch.setattr(Script, "__call__", redis_goes_down)
        with pytest.raises(redis.ConnectionError):
            receive(connection)
        monkeypatch.undo()
        assert state(server) == ((0, 1) if redis_ran_it else (1, 0))

    with connect(server) as connection:  # what the worker does on reconnect
        (message,) = receive(connection)
        assert message.payload == {"n": 1}
        message.ack()
    assert state(server) == (0, 0)
    assert not broker._debts


@pytest.mark.parametrize(
    "settle",
    [Message.ack, Message.reject, functools.partial(Message.reject, requeue=True)],
    ids=["ack", "reject", "requeue"],
)
def test_an_ack_or_reject_redis_missed_puts_the_message_back_once_it_answers(
    server: PrivateRedis, settle: Callable[[Message], None]
) -> None:
    """Redis was down when the worker settled the message, and the consumer's channel lived on. Whether
    the task ran, failed because Redis was down (Celery acks that too), or could not publish its retry
    (Celery then rejects without requeue), running it again is the safe answer: the message goes back on
    its queue when kombu next sweeps, and only once."""
    connection = connect(server)
    publish(connection, {"n": 3})
    (message,) = receive(connection)
    server.stop()
    with pytest.raises(redis.ConnectionError):
        settle(message)
    server.start()
    assert state(server) == (0, 1)

    message.channel.qos.restore_visible()  # kombu's periodic sweep, on the channel that lived on
    assert state(server) == (1, 0)
    message.channel.qos.restore_visible()
    assert state(server) == (1, 0)
    connection.collect()
    with connect(server) as connection:
        (again,) = receive(connection)
        assert again.payload == {"n": 3}
        again.ack()
    assert state(server) == (0, 0)


def test_what_a_closing_channel_held_while_redis_was_down_goes_back_on_the_next_channel(
    server: PrivateRedis,
) -> None:
    with connect(server) as connection:
        publish(connection, {"n": 4, "empty": []})
        publish(connection, {"n": 5, "empty": {}})
        held = receive(connection)
        assert len(held) == 2
        server.stop()
        held[0].channel.close()  # restoring fails: Redis is down
        server.start()
        assert state(server) == (0, 2)

    with connect(server) as connection:
        again = receive(connection)
        assert sorted((m.payload["n"], m.payload["empty"]) for m in again) == [(4, []), (5, {})]
        for message in again:
            message.ack()
    assert state(server) == (0, 0)
