"""shared/broker.py against a real redis-server of our own (AOF, stopped and started like an operator would):
whatever Redis did not confirm around an outage is settled once it answers again, each message once.

kombu is driven directly (no Celery), so each step of its ack emulation can be made to fail at the
moment it fails in a real restart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

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


@pytest.mark.parametrize("redis_ran_it", [True, False], ids=["reply-lost", "write-lost"])
def test_a_fetched_message_whose_unacked_record_was_not_confirmed_goes_back_on_its_queue(
    server: PrivateRedis, monkeypatch: pytest.MonkeyPatch, redis_ran_it: bool
) -> None:
    """BRPOP took the message; recording it in ``unacked`` failed as Redis went down (on SIGTERM Redis
    may run the write and exit without answering). The worker's next channel puts it back, once."""
    with connect(server) as connection:
        publish(connection, {"n": 1})
        real_execute = redis.client.Pipeline.execute

        def redis_goes_down(pipe: Any, raise_on_error: bool = True) -> Any:
            if not any(args[:2] == ("HSET", "unacked") for args, _ in pipe.command_stack):
                return real_execute(pipe, raise_on_error)
            if redis_ran_it:
                real_execute(pipe, raise_on_error)
            else:
                pipe.reset()
            raise redis.ConnectionError("Connection closed by server.")

        monkeypatch.setattr(redis.client.Pipeline, "execute", redis_goes_down)
        with pytest.raises(redis.ConnectionError):
            receive(connection)
        monkeypatch.undo()
        assert state(server) == (0, 1 if redis_ran_it else 0)  # off its queue, and no channel holds it

    with connect(server) as connection:  # what the worker does on reconnect
        (message,) = receive(connection)
        assert message.payload == {"n": 1}
        message.ack()
    assert state(server) == (0, 0)


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
        publish(connection, {"n": 4})
        publish(connection, {"n": 5})
        held = receive(connection)
        assert len(held) == 2
        server.stop()
        held[0].channel.close()  # restoring fails: Redis is down
        server.start()
        assert state(server) == (0, 2)

    with connect(server) as connection:
        again = receive(connection)
        assert sorted(m.payload["n"] for m in again) == [4, 5]
        for message in again:
            message.ack()
    assert state(server) == (0, 0)
