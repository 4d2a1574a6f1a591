"""shared/broker.py against a real redis-server of our own (AOF, stopped and started like an operator would):
whatever Redis did not confirm around an outage is settled once it answers again, each message once.

kombu is driven directly (no Celery), so each step of its ack emulation can be made to fail at the
moment it fails in a real restart.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import monotonic
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub
from kombu.message import Message
from redis.commands.core import Script

from shared import broker
from tests.integration.chaos.servers import PrivateRedis, private_folder
from tests.integration.conftest import REPO_ROOT

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
    # Each test has a Redis of its own, so this process starts as a new owner there, as a process does:
    # one renewed on the last test's server within LEASE_RENEW_SECONDS would not set its lease on this
    # one, and a sweep here took what it had just received for a dead owner's.
    broker._new_owner()
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
        assert records(server) == {broker.owner_id(): {message.delivery_tag}}
        message.ack()
    assert state(server) == (0, 0)
    assert records(server) == {}


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
        assert records(server) == {broker.owner_id(): {second.delivery_tag}}
        second.ack()
    client.close()
    assert records(server) == {}


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
    assert records(server) == {}
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
    assert records(server) == {}


# Another worker process: takes ``count`` messages and holds them, printing its owner id; then, for each
# line it reads, takes N more ("take N") or acks the first one it holds.
_HOLDER = """
import sys
from kombu import Connection, Consumer, Exchange, Queue
from shared import broker
url, count = sys.argv[1], int(sys.argv[2])
queue = Queue("broker-test", Exchange("broker-test", type="direct"), routing_key="broker-test")
held = []
with Connection(url, transport="shared.broker:Transport") as connection:
    with Consumer(connection.channel(), [queue], callbacks=[lambda body, message: held.append(message)]):
        def take(more):
            target = len(held) + more
            while len(held) < target:
                connection.drain_events(timeout=10)
        take(count)
        print("owner", broker.owner_id(), flush=True)
        for line in sys.stdin:
            if line.startswith("take "):
                take(int(line.split()[1]))
                print("took", flush=True)
            else:
                held.pop(0).ack()
                print("acked", flush=True)
"""


class Holder:
    """A real worker process of its own holding messages, which the test can stall or kill -9."""

    def __init__(self, server: PrivateRedis, count: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, server.url, str(count)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdin is not None
        self._out, self._in = self.process.stdout, self.process.stdin
        self.owner = self._answer("owner ")
        assert self.owner, "the holder did not take its messages"

    def ack_next(self) -> None:
        self._in.write("ack\n")
        self._in.flush()
        assert self._answer("acked") == ""

    def take(self, count: int) -> None:
        self._in.write(f"take {count}\n")
        self._in.flush()
        assert self._answer("took") == ""

    def _answer(self, prefix: str) -> str:
        # Its log lines, if any, go to the same output: skip them.
        for line in self._out:
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
        raise AssertionError(f"the holder exited without answering {prefix!r}")

    def leave(self) -> None:
        """Stop as a worker shutting down does: its channel closes, putting back what it holds."""
        self._in.close()
        assert self.process.wait(timeout=30) == 0
        self._out.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._in.close()
        self._out.close()


@pytest.fixture
def holders() -> Iterator[Callable[[PrivateRedis, int], Holder]]:
    started: list[Holder] = []

    def start(server: PrivateRedis, count: int) -> Holder:
        started.append(Holder(server, count))
        return started[-1]

    yield start
    for holder in started:
        holder.kill()


def owners(server: PrivateRedis) -> dict[str, str]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        return client.hgetall(broker.OWNER_HASH)
    finally:
        client.close()


def records(server: PrivateRedis) -> dict[str, set[str]]:
    """Each owner in the set of owners that holds something, with its held tags; checked against the
    owner hash, which must give each of those tags to that owner and no other tag to anyone."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        held = {
            owner: client.smembers(broker.held_key(owner)) for owner in client.smembers(broker.OWNERS_KEY)
        }
        assert client.hgetall(broker.OWNER_HASH) == {
            tag: owner for owner, tags in held.items() for tag in tags
        }
        return {owner: tags for owner, tags in held.items() if tags}
    finally:
        client.close()


def as_an_earlier_release_left_them(server: PrivateRedis, owner: str, tags: set[str] | None = None) -> None:
    """What a release before the held sets writes: the owner hash alone. ``tags``: only these are left
    out of the owner's held set (taken by such a release after this one adopted the others)."""
    client = redis.Redis.from_url(server.url)
    if tags is None:
        client.delete(broker.held_key(owner))
        client.srem(broker.OWNERS_KEY, owner)
    else:
        client.srem(broker.held_key(owner), *tags)
    client.close()


def lease_lapses(server: PrivateRedis, owner: str) -> None:
    """What LEASE_SECONDS without a renewal does to the owner's lease."""
    redis.Redis.from_url(server.url).delete(broker.lease_key(owner))


def known_owners(server: PrivateRedis) -> set[str]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        return client.smembers(broker.OWNERS_KEY)
    finally:
        client.close()


def sweep(connection: Connection) -> int:
    channel = connection.default_channel
    with channel.conn_or_acquire() as client:
        return broker.reclaim_abandoned(channel, client)


def test_what_a_killed_worker_held_goes_back_once_when_its_lease_is_gone_and_sweepers_race(
    server: PrivateRedis, holders: Callable[[PrivateRedis, int], Holder]
) -> None:
    """A worker killed with ``kill -9`` cannot put back what it held: live workers do, each message once
    however many sweep at the same moment, and neither what it acked nor what a live worker holds."""
    with connect(server) as connection:
        for n in range(3):
            publish(connection, {"n": n})
    holder = holders(server, 3)
    holder.ack_next()
    assert state(server) == (0, 2)
    assert set(owners(server).values()) == {holder.owner}

    with connect(server) as first, connect(server) as second:
        assert sweep(first) == 0  # alive: its lease is there
        assert state(server) == (0, 2)

        holder.kill()
        lease_lapses(server, holder.owner)
        start = threading.Barrier(2)

        def race(connection: Connection) -> int:
            start.wait()
            return sweep(connection)

        with ThreadPoolExecutor(max_workers=2) as pool:
            reclaimed = list(pool.map(race, [first, second]))
        assert sum(reclaimed) == 2
        assert state(server) == (2, 0)
        assert owners(server) == {}
        assert records(server) == {}
        assert holder.owner not in known_owners(server)  # gone, holding nothing: the sweeps skip it
        assert redis.Redis.from_url(server.url).lrange(broker.bell_key("broker-test"), 0, -1) == [b"1"]

        again = receive(first)
        assert sorted(m.payload["n"] for m in again) == [1, 2]  # the acked one stays done
        assert all(m.delivery_info["redelivered"] for m in again)
        assert sweep(second) == 0  # held by a live worker now: untouched
        for message in again:
            message.ack()
    assert state(server) == (0, 0)
    assert owners(server) == {}
    assert records(server) == {}


def test_a_late_ack_from_a_worker_whose_messages_were_reclaimed_leaves_the_new_holders_record(
    server: PrivateRedis, holders: Callable[[PrivateRedis, int], Holder]
) -> None:
    """A worker stalled past its lease (GC, a starved CPU) finds its message reclaimed and taken again
    by another; the task runs twice, which every task allows, and the stalled worker's ack when it wakes
    must not erase the record of the copy the other holds (lost with it if that one died next)."""
    with connect(server) as connection:
        publish(connection, {"n": 7})
    stalled = holders(server, 1)
    lease_lapses(server, stalled.owner)
    with connect(server) as connection:
        assert sweep(connection) == 1
        (message,) = receive(connection)
        assert owners(server) == {message.delivery_tag: broker.owner_id()}

        stalled.ack_next()
        assert state(server) == (0, 1)
        assert owners(server) == {message.delivery_tag: broker.owner_id()}
        assert records(server) == {broker.owner_id(): {message.delivery_tag}}
        message.ack()
    assert state(server) == (0, 0)
    assert records(server) == {}


@dataclass(frozen=True)
class SweepCost:
    calls: dict[str, int]  # Redis commands the sweep sent, by name
    sent: int  # bytes Redis wrote back


def sweep_cost(server: PrivateRedis, connection: Connection) -> SweepCost:
    client = redis.Redis.from_url(server.url)
    client.config_resetstat()
    before = client.info("stats")["total_net_output_bytes"]
    sweep(connection)
    sent = client.info("stats")["total_net_output_bytes"] - before
    ours = {"cmdstat_info", "cmdstat_config|resetstat"}
    calls = {name: stat["calls"] for name, stat in client.info("commandstats").items() if name not in ours}
    client.close()
    return SweepCost(calls, sent)


def test_a_sweep_costs_redis_the_same_however_many_messages_live_workers_hold(
    server: PrivateRedis, holders: Callable[[PrivateRedis, int], Holder]
) -> None:
    """Every consuming process sweeps every 5 s, and a worker may hold tens of thousands of countdowns
    (a provider outage): reading every held message's record each time stalled Redis for everyone. With
    the owners alive the sweep reads their leases, never what they hold."""
    with connect(server) as connection:
        for n in range(2):
            publish(connection, {"n": n})
    holder = holders(server, 2)
    with connect(server) as connection:
        sweep(connection)  # its first use connects; not part of a sweep's cost
        few = sweep_cost(server, connection)
        for n in range(300):
            publish(connection, {"n": n})
        holder.take(300)
        assert len(records(server)[holder.owner]) == 302
        many = sweep_cost(server, connection)
    assert many.calls == few.calls
    # Only the digits of the counts differ (INFO's own included); reading the records was ~30 kB more.
    assert many.sent - few.sent < 500


def test_a_dead_owner_holding_more_than_a_chunk_has_all_of_it_put_back_once(
    server: PrivateRedis, holders: Callable[[PrivateRedis, int], Holder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker, "SWEEP_CHUNK", 2)
    with connect(server) as connection:
        for n in range(9):
            publish(connection, {"n": n})
    holder = holders(server, 9)
    holder.kill()
    lease_lapses(server, holder.owner)
    with connect(server) as first, connect(server) as second:
        start = threading.Barrier(2)

        def race(connection: Connection) -> int:
            start.wait()
            return sweep(connection)

        with ThreadPoolExecutor(max_workers=2) as pool:
            assert sum(pool.map(race, [first, second])) == 9
    assert state(server) == (9, 0)
    assert records(server) == {}
    assert known_owners(server) == set()


def test_what_a_dead_worker_of_the_earlier_release_held_goes_back_once(
    server: PrivateRedis, holders: Callable[[PrivateRedis, int], Holder]
) -> None:
    """Upgrading: Redis holds the owner hash of a release that kept no held sets, and one of its workers
    died. The new sweep finds those records (and only once)."""
    with connect(server) as connection:
        for n in range(3):
            publish(connection, {"n": n})
    holder = holders(server, 3)
    holder.kill()
    as_an_earlier_release_left_them(server, holder.owner)
    lease_lapses(server, holder.owner)
    with connect(server) as first, connect(server) as second:
        assert sweep(first) + sweep(second) == 3
        assert sweep(first) == 0
    assert state(server) == (3, 0)
    assert owners(server) == {}
    assert known_owners(server) == set()
    assert not redis.Redis.from_url(server.url).exists(broker.ADOPTED_OWNERS_KEY)


def test_a_live_worker_of_the_earlier_release_keeps_what_it_holds_and_it_all_goes_back_when_it_dies(
    server: PrivateRedis, holders: Callable[[PrivateRedis, int], Holder]
) -> None:
    """A rolling deploy: a worker of the earlier release runs beside this one. Its records are adopted
    but nothing it holds is put back while its lease lives; it goes on taking (records the sweep has
    not seen) and acking (records its held set still names); when it dies, what it still held goes back,
    once, and what it acked does not."""
    with connect(server) as connection:
        for n in range(2):
            publish(connection, {"n": n})
    old = holders(server, 2)
    as_an_earlier_release_left_them(server, old.owner)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    with connect(server) as connection:
        assert sweep(connection) == 0
        assert state(server) == (0, 2)
        first_two = records(server)[old.owner]
        assert len(first_two) == 2

        old.ack_next()  # as that release acks: the owner hash alone
        client.sadd(broker.held_key(old.owner), *first_two)
        for n in range(2, 4):
            publish(connection, {"n": n})
        old.take(2)
        as_an_earlier_release_left_them(server, old.owner, set(owners(server)) - first_two)
        assert sweep(connection) == 0
        assert state(server) == (0, 3)

        old.kill()
        lease_lapses(server, old.owner)
        assert sweep(connection) == 3
        assert sweep(connection) == 0
    assert state(server) == (3, 0)
    assert owners(server) == {}
    assert known_owners(server) == set()
    assert not client.exists(broker.ADOPTED_OWNERS_KEY)
    client.close()


def test_what_the_earlier_releases_sweep_put_back_is_not_put_back_again(
    server: PrivateRedis, holders: Callable[[PrivateRedis, int], Holder]
) -> None:
    """A rolling deploy: a worker of the earlier release sweeps first and puts back what a dead worker of
    this release held, dropping its owner hash entries but not its held set."""
    with connect(server) as connection:
        for n in range(2):
            publish(connection, {"n": n})
    holder = holders(server, 2)
    holder.kill()
    lease_lapses(server, holder.owner)
    with connect(server) as connection:
        for tag in owners(server):
            redis.Redis.from_url(server.url).hdel(broker.OWNER_HASH, tag)
            connection.default_channel.qos.restore_by_tag(tag)
        assert state(server) == (2, 0)
        assert sweep(connection) == 0
    assert state(server) == (2, 0)
    assert known_owners(server) == set()


@pytest.mark.parametrize("late", ["ack", "close"])
def test_a_late_settle_of_a_message_another_worker_holds_now_drops_it_from_the_late_workers_held_set(
    server: PrivateRedis, holders: Callable[[PrivateRedis, int], Holder], late: str
) -> None:
    """A rolling deploy: the earlier release's sweep puts back what a worker of this release held while it
    stalled (dropping the owner hash entry, not the held set), and another worker takes it. The stalled
    worker wakes and acks late, or shuts down (its close puts back what it holds): either leaves the new
    holder's record, and must drop the tag from its own held set. Left there, the sweeps' count of records
    no held set names came out short by it for as long as the stalled worker lived, and what a worker of
    the earlier release killed meanwhile held was never adopted: it waited for the visibility timeout (an
    hour) instead of a lease."""
    with connect(server) as connection:
        publish(connection, {"n": 0})
    stalled = holders(server, 1)
    lease_lapses(server, stalled.owner)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    with connect(server) as connection:
        (tag,) = owners(server)
        client.hdel(broker.OWNER_HASH, tag)  # the earlier release's sweep, then its put-back
        connection.default_channel.qos.restore_by_tag(tag)
        (message,) = receive(connection)
        assert owners(server) == {tag: broker.owner_id()}

        if late == "ack":
            stalled.ack_next()
            client.set(broker.lease_key(stalled.owner), "1", ex=broker.LEASE_SECONDS)  # awake: it renews
        else:
            stalled.leave()
            # Within the lease it renewed before it left, its held set is not a sweep's to clear.
            client.set(broker.lease_key(stalled.owner), "1", ex=broker.LEASE_SECONDS)
        assert owners(server) == {tag: broker.owner_id()}
        assert client.smembers(broker.held_key(stalled.owner)) == set()

        publish(connection, {"n": 1})
        old = holders(server, 1)
        as_an_earlier_release_left_them(server, old.owner)
        old.kill()
        lease_lapses(server, old.owner)
        # This process lives: its lease, which the take renews only when due (it may have renewed on an
        # earlier test's server a moment ago).
        client.set(broker.lease_key(broker.owner_id()), "1", ex=broker.LEASE_SECONDS)
        assert sweep(connection) == 1
        assert state(server) == (1, 1)
        message.ack()
    assert records(server) == {}
    client.close()


def test_a_worker_whose_prefetch_is_full_keeps_renewing_its_lease(
    server: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker holding all it may hold sends no BRPOP and takes nothing, for as long as its tasks (or
    countdowns) last: its event loop alone must keep its lease, or live workers would put back what it
    holds and run it a second time."""
    monkeypatch.setattr(broker, "LEASE_RENEW_SECONDS", 0.2)  # so the test need not wait 5 s
    client = redis.Redis.from_url(server.url)
    hub = Hub()
    with connect(server) as connection:
        publish(connection, {"n": 1})
        publish(connection, {"n": 2})
        got: list[Message] = []
        connection.register_with_event_loop(hub)
        consumer = Consumer(connection.channel(), [QUEUE], callbacks=[lambda body, m: got.append(m)])
        consumer.qos(prefetch_count=1)
        with consumer:
            deadline = monotonic() + 10
            while not got and monotonic() < deadline:
                hub.run_once()
            assert len(got) == 1
            client.delete(broker.lease_key(broker.owner_id()))
            until = monotonic() + 1
            while monotonic() < until:
                hub.run_once()
            assert client.exists(broker.lease_key(broker.owner_id()))
            assert len(got) == 1  # it took nothing meanwhile: the prefetch stayed full
            got[0].ack()
    hub.close()
    client.close()


def test_a_worker_judges_other_leases_only_after_a_whole_lease_of_its_own_renewals(
    server: PrivateRedis,
) -> None:
    """After Redis was away longer than a lease (or this worker stalled that long), every lease is gone:
    the first worker back must give the others a whole lease to renew before it takes theirs for dead."""
    client = redis.Redis.from_url(server.url)
    owner = broker._Owner()
    lease = broker.LEASE_SECONDS
    owner.renew_if_due(client, 1000.0)
    assert client.ttl(owner.key) > 0
    assert not owner.may_sweep(1000.0 + lease - 1)
    for step in range(1, 7):
        owner.renew_if_due(client, 1000.0 + step * broker.LEASE_RENEW_SECONDS)
    assert owner.may_sweep(1000.0 + lease)

    owner.swept_at = 1000.0 + lease
    owner.renew_if_due(client, 1000.0 + 3 * lease)  # back after a gap longer than a lease
    assert not owner.may_sweep(1000.0 + 3 * lease + 1)
    assert owner.may_sweep(1000.0 + 4 * lease)
    client.close()
