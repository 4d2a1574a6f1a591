"""Kombu's Redis transport, plus: no message is lost, or left behind, when Redis goes away and comes back.

Redis has no acknowledgements of its own; kombu emulates them: ``BRPOP`` takes a message off its queue,
the worker then records it in the ``unacked`` hash (and its ``unacked_index``), acking deletes it there,
and a closing channel puts back what it still holds (``QoS.restore_unacked_once``). Anything left in
``unacked`` is put back only after the visibility timeout (an hour, see shared/queues.py): kombu's answer
to a worker killed outright (``kill -9``, OOM, a lost host), which closes nothing. Here leases (below)
bring that back to well under a minute.

That fetch has a hole no client can close: on ``SIGTERM`` Redis may run a command in its last turn and
exit before answering it (seen in the redis-restart chaos test). A message ``BRPOP`` took then is off its
queue, and the reply that carried it is never sent: no worker has it, nothing knows of it, it is lost.
So here the fetch is one Lua call (``_TAKE``) that pops the message and records it in ``unacked`` in the
same step, on the server; kombu's ``BRPOP`` now waits on a *bell* per queue instead (``bell_key``), a
list every publish and every put-back pushes a token onto, so a worker still sleeps until there is work
and wakes at once. A token is only a wake-up: a worker whose ``BRPOP`` times out (every second when idle)
looks anyway, so a message pushed without one waits at most that second; and a fetch that leaves a queue
non-empty rings its bell again, so one token per burst wakes every worker it needs.

Around a restart four steps can still fail, and each would leave a message in ``unacked`` for that hour:

- putting back, on close, what the channel held: Redis is down;
- the fetch itself: Redis ran it and exited before answering. Each fetch that records also writes its
  delivery tag, under a number of this fetch's own, to the channel's ``last take`` key, so the worker
  can find the message it never received;
- recording a message fetched by kombu's plain ``basic_get`` (``RPOP``, then the record): Redis is going
  down; the worker keeps a copy, which may be the only one;
- an ack or a reject while Redis is down, on a channel that lives on: kombu keeps an idle consumer's
  channel across a dropped connection (the prefetch is full, so no ``BRPOP`` is waiting to fail), and
  nobody tries again.

So each of these becomes a debt of this process, paid as soon as Redis answers again: a new channel pays
before it consumes, and a live one each time kombu sweeps for visible messages. Every debt is a put-back:
the message goes back on its queue, from ``unacked`` or, when the worker may hold the only copy, from the
copy it kept. Even an ack Redis did not confirm is a put-back, not an ack to retry: the transport cannot
tell a task that ran from one that failed because Redis was down (Celery acks those too, and rejects
without requeue the ones whose retry it could not publish), and only running it again is safe for both.
Each debt is paid in one transaction that also removes the tag from ``unacked``, so it is paid once; only
this process's own tags are touched, so nothing another worker is running is redelivered. A task may run
a second time, which every task allows (ARCHITECTURE.md: every task is safe to run twice).

A worker killed outright puts nothing back, and a task countdown may be up to half an hour, so the
visibility timeout cannot be short. Instead each consuming process holds a lease, a key that lives
``LEASE_SECONDS`` (30 s) and that its event loop renews every ``LEASE_RENEW_SECONDS`` (5 s), a timer of its
own that runs while the prefetch is full and no ``BRPOP`` is sent (a pool child never renews, nor takes:
its parent holds the messages). The fetch records the taking process as the message's owner, in the
same step and in three places: the owner hash (``unacked_owner``: tag -> owner, which a settle reads), the
owner's held set (``wapipe:held:<owner>``: its tags) and the set of owners (``wapipe:owners``); an ack, a
reject and every put-back remove the first two entries. Every consuming process, every 5 s, reads the set
of owners and their leases, in one transaction: work in the number of owners, however many messages they
hold (a worker may hold tens of thousands of countdowns through a provider outage). It walks only a dead
owner's held set, ``SWEEP_CHUNK`` tags at a time, and puts back each message in one Lua step that first
checks, on the server, that the owner still holds it and its lease is still gone: of several workers
sweeping at once exactly one puts it back. A dead owner that holds nothing any more leaves the set of
owners. Only a process that has itself renewed without a gap for a whole lease sweeps, so after Redis was
away (or this process stalled) longer than a lease, every live worker gets a lease's time to renew before
its messages count as abandoned. The visibility timeout stays as the last resort (a message recorded
without an owner).

The release before the held sets recorded owners in the hash alone, and its workers may run beside this
one's during a rolling deploy. A sweep that finds more entries in the hash than the held sets name adopts
them (a chunked ``HSCAN``: each entry into its owner's set, the owner into the set of owners and the
adopted owners) and scans again on each sweep while an adopted owner is in the set of owners, since it may
still be taking; once the last of them is gone and what it held is put back, the scans stop. Such a
release settles and sweeps through the hash alone, so a held set may name a tag the hash no longer gives
to its owner: the sweep drops it with nothing put back.

A worker that stalls longer than a lease (a long GC pause, a starved CPU) may find its messages put back
while it lives: another worker then runs the task too, which every task allows (see above). Its own late
ack, reject or put-back of such a message leaves it alone when another process owns it now (same delivery
tag, taken again): only the worker that holds it settles it; the late one only drops the tag from its own
held set (a sweep of the earlier release leaves it there). The fetch writes one ``HSET`` and two ``SADD``
for the owner, the ack one ``HDEL`` and one ``SREM``; the ack is one Lua call, as kombu's was one pipeline.

Selected by ``broker_transport`` in :func:`shared.queues.celery_config`; the URL stays ``redis://``. Not
for a ``global_keyprefix`` (wapipe sets none).
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from shared.logging import get_logger

log = get_logger(__name__)

_BROKER_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


# kombu's separator, as in its per-priority lists ("queue\x06\x163"): no queue name holds it.
_BELL_SUFFIX = kombu_redis.Channel.sep + "bell"


def bell_key(queue: str) -> str:
    """The list a worker waiting on ``queue`` blocks on: one token means "look", never a message."""
    return queue + _BELL_SUFFIX


def _ring(queue: str) -> list[tuple[str, tuple[Any, ...]]]:
    """The commands that ring ``queue``'s bell: one token, never more (a fetch that leaves work behind
    rings again, so one token wakes the waiting workers in turn). shared/queues.py's publish script
    rings the same way."""
    bell = bell_key(queue)
    return [("lpush", (bell, "1")), ("ltrim", (bell, 0, 0))]


# The fetch: pop the first message by priority then queue (kombu's BRPOP order) and, in the same step,
# record it in ``unacked`` exactly as kombu's QoS.append does, plus, under this fetch's number, in the
# channel's last-take key. Queues a fetch leaves non-empty get their bell rung.
# The taking process is recorded as the message's owner, in the same step: in the owner hash (tag ->
# owner), in the owner's set of held tags, and the owner in the set of owners the sweep reads.
# KEYS: unacked hash, its index, the channel's last-take key, the owner hash, the set of owners, this
#   owner's held set, then per queue: its bell and its lists (one per priority step, highest priority first).
# ARGV: lists per queue, this fetch's number, the last-take key's lifetime (s), this process's owner id,
#   then per queue 1 to record what is taken from it (a consumer that acks) or 0 (one that does not: kombu
#   records nothing for it).
# Returns nil, or {queue index from 0, message, 1 if recorded}.
_TAKE = """
local lists, number, lifetime, owner = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local width = lists + 1
local queues = (#KEYS - 6) / width
local item, from
for p = 1, lists do
  for q = 1, queues do
    item = redis.call('RPOP', KEYS[6 + (q - 1) * width + 1 + p])
    if item then from = q break end
  end
  if item then break end
end
for q = 1, queues do
  local bell = 6 + (q - 1) * width + 1
  if redis.call('LLEN', KEYS[bell]) == 0 then
    for p = 1, lists do
      if redis.call('LLEN', KEYS[bell + p]) > 0 then
        redis.call('LPUSH', KEYS[bell], '1')
        break
      end
    end
  end
end
if not item then return false end
local recorded = 0
if ARGV[4 + from] == '1' then
  local ok, tag, exchange, routing_key = pcall(function()
    local properties = cjson.decode(item)['properties']
    local info = properties['delivery_info']
    return properties['delivery_tag'], info['exchange'], info['routing_key']
  end)
  if ok and type(tag) == 'string' then
    local now = redis.call('TIME')
    redis.call('ZADD', KEYS[2], now[1] .. '.' .. string.format('%06d', now[2]), tag)
    -- The message verbatim: decoding and encoding it again would turn its empty lists into objects.
    redis.call('HSET', KEYS[1], tag,
      '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    redis.call('HSET', KEYS[4], tag, owner)
    redis.call('SADD', KEYS[6], tag)
    redis.call('SADD', KEYS[5], owner)
    redis.call('SET', KEYS[3], number .. ' ' .. tag, 'EX', lifetime)
    recorded = 1
  end
end
return {from - 1, item, recorded}
"""


# A settle of this process's own (an ack, a reject without requeue): drop the message from ``unacked``
# unless another process owns it now. A process paused past its lease may find its messages reclaimed
# and taken again by another worker (same delivery tag): its late ack must not erase that worker's record.
# A message without an owner (taken before owners were recorded) is settled as kombu would. One another
# process owns now leaves this process's held set all the same: it no longer holds it, and a tag left there
# (put back by a sweep of the release before the held sets, which dropped only the owner hash entry) would
# stay until this process dies, making the sweeps' count of records no held set names come out short.
# KEYS: unacked hash, its index, the owner hash, this process's held set. ARGV: the delivery tag, this
#   process's owner id.
_SETTLE = """
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner and owner ~= ARGV[2] then
  redis.call('SREM', KEYS[4], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return 1
"""

# The reclaim of one message a dead owner's held set names: only while that owner's lease is still gone,
# drop the tag from its set and, if the owner hash still names that owner, drop the message from
# ``unacked`` and run the put-back commands (the message on its queue, the bell), all in one step, so of
# several workers sweeping at once exactly one puts it back. A tag the hash no longer gives to that owner
# (settled by a release that kept no sets, or put back and taken again since) is dropped from the set
# with nothing put back, and so is one without its message in ``unacked``.
# KEYS: unacked hash, its index, the owner hash, the owner's lease key, the owner's held set, then one key
#   per command.
# ARGV: the delivery tag, the owner id, then per command: its name, its argument count, its arguments.
# Returns 1 if this call put the message back.
_RECLAIM = """
local tag = ARGV[1]
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('SREM', KEYS[5], tag)
if redis.call('HGET', KEYS[3], tag) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[3], tag)
redis.call('ZREM', KEYS[2], tag)
if redis.call('HDEL', KEYS[1], tag) == 0 then return 0 end
local a = 3
for k = 6, #KEYS do
  local count = tonumber(ARGV[a + 1])
  redis.call(ARGV[a], KEYS[k], unpack(ARGV, a + 2, a + 1 + count))
  a = a + 2 + count
end
return 1
"""

# An owner whose lease is gone and who holds nothing any more leaves the set of owners (and the set of
# owners adopted from the old layout). A fetch adds its owner back in the same step that records a
# message, so an owner that comes back from a stall is never left out while it holds something.
# KEYS: the set of owners, the adopted owners, the owner's lease key, the owner's held set. ARGV: the owner.
_FORGET = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# The upgrade from the layout that kept the owner hash alone (a release before the held sets, still
# running beside this one during a rolling deploy): each entry of the hash that no held set names yet is
# added to its owner's set, and the owner to the set of owners and to the adopted owners, who keep the
# sweep looking for more such entries while they may still be taking. An entry the hash no longer gives
# to that owner (settled or reclaimed since the scan read it) is left alone.
# KEYS: the owner hash, the set of owners, the adopted owners, then one held set per entry.
# ARGV: per entry: its delivery tag, its owner. Returns how many entries were adopted.
_ADOPT = """
local adopted = 0
for k = 4, #KEYS do
  local tag, owner = ARGV[2 * (k - 3) - 1], ARGV[2 * (k - 3)]
  if redis.call('HGET', KEYS[1], tag) == owner and redis.call('SADD', KEYS[k], tag) == 1 then
    redis.call('SADD', KEYS[2], owner)
    redis.call('SADD', KEYS[3], owner)
    adopted = adopted + 1
  end
end
return adopted
"""

# Who holds what: the owner hash (delivery tag -> owner id, for the O(1) check of a settle), the owners
# who may hold something, and per owner the tags it holds, so that a sweep reads the owners and their
# leases, and walks only a dead owner's tags.
OWNER_HASH = "unacked_owner"
OWNERS_KEY = "wapipe:owners"
# Owners found in the owner hash without a held set (a release before the held sets wrote it).
ADOPTED_OWNERS_KEY = "wapipe:owners:adopted"
# How many tags one command of a sweep reads or puts back at most: a dead owner with tens of thousands of
# countdowns, or an upgrade's owner hash that size, never holds Redis's single thread for long.
SWEEP_CHUNK = 500
# A consuming process's lease: renewed every LEASE_RENEW_SECONDS while its event loop turns (whether or not
# its prefetch is full), so missing for LEASE_SECONDS means the process is gone (or stalled that long).
LEASE_SECONDS = 30
LEASE_RENEW_SECONDS = 5


def lease_key(owner: str) -> str:
    return f"wapipe:lease:{owner}"


def held_key(owner: str) -> str:
    """The set of delivery tags ``owner`` took and has not settled yet."""
    return f"wapipe:held:{owner}"


class _Owner:
    """This process as the owner of what it takes: its id, its lease, and when it last swept."""

    def __init__(self) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.key = lease_key(self.id)
        self.renewed_at: float | None = None
        # Since when this process has renewed without a gap longer than a lease: only after a whole lease
        # of that may it judge other leases (after an outage or a stall of its own, every live worker
        # gets that long to renew before its messages count as abandoned).
        self.steady_since: float | None = None
        self.swept_at: float | None = None
        self.lock = threading.Lock()

    def renew_if_due(self, client: Any, now: float) -> None:
        if self.renewed_at is not None and now - self.renewed_at < LEASE_RENEW_SECONDS:
            return
        try:
            client.set(self.key, "1", ex=LEASE_SECONDS)
        except Exception:
            self.steady_since = None
            raise
        if self.steady_since is None or self.renewed_at is None or now - self.renewed_at >= LEASE_SECONDS:
            self.steady_since = now
        self.renewed_at = now

    def may_sweep(self, now: float) -> bool:
        if self.steady_since is None or now - self.steady_since < LEASE_SECONDS:
            return False
        return self.swept_at is None or now - self.swept_at >= LEASE_RENEW_SECONDS


_owner = _Owner()


def _new_owner() -> None:
    # A forked pool child is not the process that took its parent's messages, nor does it consume.
    global _owner
    _owner = _Owner()


os.register_at_fork(after_in_child=_new_owner)


def owner_id() -> str:
    return _owner.id


def tend(channel: Channel) -> None:
    """Renew this process's lease when due, and when due put back what dead owners held."""
    owner = _owner
    now = monotonic()
    try:
        with owner.lock, channel.conn_or_acquire() as client:
            owner.renew_if_due(client, now)
            if not owner.may_sweep(now):
                return
            owner.swept_at = now
            # A long walk (a dead owner with tens of thousands of countdowns) must not cost this
            # process its own lease: it renews between chunks.
            keep_alive = functools.partial(_renew_now, owner, client)
            reclaimed = reclaim_abandoned(channel, client, skip=owner.id, keep_alive=keep_alive)
    except (redis.RedisError, OSError):
        # Redis is away (the consumer's own handling reconnects) or refuses writes: the next turn tries.
        log.debug("broker lease not renewed", exc_info=True)
        return
    if reclaimed:
        log.warning("put back messages held by workers that are gone", messages=reclaimed)


def _renew_now(owner: _Owner, client: Any) -> None:
    owner.renew_if_due(client, monotonic())


def reclaim_abandoned(
    channel: Channel, client: Any, skip: str | None = None, keep_alive: Callable[[], None] | None = None
) -> int:
    """Put back every message whose owner's lease is gone; return how many this call put back.

    Reads the owners and their leases (work in the number of owners, however much they hold), then walks
    only dead owners' held sets, ``SWEEP_CHUNK`` tags at a time. ``keep_alive`` runs between chunks."""
    census = _census(client)
    old_layout = census.unadopted > 0 or census.adopted_owners > 0
    if old_layout and _adopt_old_layout(channel, client, keep_alive):
        census = _census(client)
    reclaimed = 0
    for owner, alive in census.leases.items():
        if owner != skip and not alive:
            reclaimed += _reclaim_from(channel, client, owner, keep_alive)
    return reclaimed


@dataclass(frozen=True)
class _Census:
    """What a sweep reads first, all in one transaction."""

    leases: dict[str, bool]  # each owner in the set of owners: whether its lease is there
    # Entries of the owner hash no held set names: records of a release that kept no held sets (exact
    # once every process runs this one; see _adopt_old_layout).
    unadopted: int
    adopted_owners: int


def _census(client: Any) -> _Census:
    with client.pipeline() as pipe:
        while True:
            try:
                # Watched so that an owner joining or leaving between the two reads does not count its
                # records as unadopted (SADD of an owner already there does not touch the key).
                pipe.watch(OWNERS_KEY)
                owners = sorted(bytes_to_str(owner) for owner in pipe.smembers(OWNERS_KEY))
                pipe.multi()
                for owner in owners:
                    pipe.exists(lease_key(owner))
                for owner in owners:
                    pipe.scard(held_key(owner))
                pipe.hlen(OWNER_HASH)
                pipe.scard(ADOPTED_OWNERS_KEY)
                answers = pipe.execute()
                break
            except redis.WatchError:
                continue
    count = len(owners)
    leases, held, (recorded, adopted_owners) = answers[:count], answers[count:-2], answers[-2:]
    return _Census(
        leases={owner: bool(lease) for owner, lease in zip(owners, leases, strict=True)},
        unadopted=int(recorded) - sum(held),
        adopted_owners=int(adopted_owners),
    )


def _adopt_old_layout(channel: Channel, client: Any, keep_alive: Callable[[], None] | None) -> int:
    """Give each owner hash entry no held set names to its owner's set; return how many were adopted.

    A release before the held sets recorded owners in the hash alone; its processes may still run beside
    this one (a rolling deploy), taking more. So this runs whenever the hash holds more entries than the
    sets name, and again on every sweep while an adopted owner is in the set of owners (it may still be
    alive and taking): a whole scan of the hash, in chunks, as that release's own sweep was. Once its
    last process is gone and what it held has been put back, sweeps no longer scan."""
    adopted, cursor = 0, 0
    while True:
        cursor, entries = client.hscan(OWNER_HASH, cursor, count=SWEEP_CHUNK)
        if entries:
            pairs = [(bytes_to_str(tag), bytes_to_str(owner)) for tag, owner in entries.items()]
            keys = [OWNER_HASH, OWNERS_KEY, ADOPTED_OWNERS_KEY, *(held_key(owner) for _, owner in pairs)]
            args = [value for pair in pairs for value in pair]
            adopted += int(channel._adopt_script(keys=keys, args=args, client=client))
        if keep_alive is not None:
            keep_alive()
        if not cursor:
            break
    if adopted:
        log.info("broker records of an earlier release adopted", messages=adopted)
    return adopted


def _reclaim_from(channel: Channel, client: Any, owner: str, keep_alive: Callable[[], None] | None) -> int:
    """Put back what dead ``owner`` still holds, a chunk of its held set at a time; then, if it holds
    nothing and its lease is still gone, drop it from the set of owners."""
    reclaimed, cursor = 0, 0
    while True:
        cursor, tags = client.sscan(held_key(owner), cursor, count=SWEEP_CHUNK)
        reclaimed += _reclaim_tags(channel, client, owner, [bytes_to_str(tag) for tag in tags])
        if keep_alive is not None:
            keep_alive()
        if not cursor:
            break
    keys = [OWNERS_KEY, ADOPTED_OWNERS_KEY, lease_key(owner), held_key(owner)]
    channel._forget_script(keys=keys, args=[owner], client=client)
    return reclaimed


def _reclaim_tags(channel: Channel, client: Any, owner: str, tags: list[str]) -> int:
    if not tags:
        return 0
    messages = client.hmget(channel.unacked_key, tags)
    with client.pipeline(transaction=False) as pipe:
        for tag, held in zip(tags, messages, strict=True):
            keys = [
                channel.unacked_key,
                channel.unacked_index_key,
                OWNER_HASH,
                lease_key(owner),
                held_key(owner),
            ]
            args: list[Any] = [tag, owner]
            for name, (key, *rest) in _put_back_commands(channel, held):
                keys.append(key)
                args += [name, len(rest), *rest]
            channel._reclaim_script(keys=keys, args=args, client=pipe)
        return sum(int(done) for done in pipe.execute())


def _put_back_commands(channel: kombu_redis.Channel, held: bytes | None) -> list[tuple[str, tuple[Any, ...]]]:
    # The commands a put-back from ``unacked`` sends (kombu's, plus the bell), to run inside the reclaim.
    commands = _Commands()
    if held:
        payload, exchange, routing_key = loads(bytes_to_str(held))
        channel._do_restore_message(payload, exchange, routing_key, _Recorder(commands))
    return commands


class _Recorder:
    """Stands in for a pipeline: records the commands sent to it."""

    def __init__(self, commands: _Commands) -> None:
        self._commands = commands

    def __getattr__(self, name: str) -> Any:
        return functools.partial(self._commands.add, name)


def _held_by_another(owner: bytes | None) -> bool:
    return owner is not None and bytes_to_str(owner) != _owner.id


def _let_go(pipe: Any, tag: str) -> None:
    # Drop from this process's held set a tag another process owns now (see _SETTLE: why it must not stay).
    pipe.multi()
    pipe.srem(held_key(_owner.id), tag)


@dataclass(frozen=True)
class Debt:
    """A message this process must put back on its queue once Redis answers again."""

    # [payload, exchange, routing key], as kombu stores it in ``unacked``: kept when the worker may
    # hold the only copy (a plain RPOP took it, recording it failed).
    message: list[Any] | None = None
    # For a fetch Redis did not answer: the channel's last-take key and the fetch's number. The key
    # holds "number tag" only if that fetch ran; otherwise its message is still on its queue.
    take: tuple[str, str] | None = None


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
    for key, debt in debts:
        watched = [channel.unacked_key, OWNER_HASH] + ([debt.take[0]] if debt.take else [])
        try:
            # A client of its own (``channel.client``'s connection may be waiting on a BRPOP).
            with channel.conn_or_acquire() as client:
                client.transaction(functools.partial(_pay, channel, key, debt), *watched)
        except (redis.RedisError, OSError):
            break  # down again (or refusing writes): the next sweep or channel tries the rest
        with _lock:
            if _debts.get(key) is debt:
                del _debts[key]
        paid += 1
    if paid:
        log.warning("broker back; what it did not confirm is back on its queue", messages=paid)


def _pay(channel: kombu_redis.Channel, key: str, debt: Debt, pipe: Any) -> None:
    tag = key if debt.take is None else _taken_tag(pipe, *debt.take)
    if tag is None:
        return  # the fetch never ran: its message is still on its queue
    if _held_by_another(pipe.hget(OWNER_HASH, tag)):
        # Reclaimed while Redis was away from us, and taken again: that worker has it now, not we.
        _let_go(pipe, tag)
        return
    held = pipe.hget(channel.unacked_key, tag)
    pipe.multi()
    pipe.zrem(channel.unacked_index_key, tag).hdel(channel.unacked_key, tag).hdel(OWNER_HASH, tag)
    pipe.srem(held_key(_owner.id), tag)
    # The copy in ``unacked`` if there is one; none and no copy of our own: an ack or a put-back
    # already got through (its reply was lost), so there is nothing to put back.
    message = loads(bytes_to_str(held)) if held else debt.message
    if message is not None:
        payload, exchange, routing_key = message
        channel._do_restore_message(payload, exchange, routing_key, pipe)


def _taken_tag(pipe: Any, last_take_key: str, number: str) -> str | None:
    last = pipe.get(last_take_key)
    if not last:
        return None
    taken_by, _, tag = bytes_to_str(last).partition(" ")
    return tag if taken_by == number else None


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.taken_and_recorded(delivery_tag):
            virtual.QoS.append(self, message, delivery_tag)  # the channel's bookkeeping, no write
            return
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
            self._settle(delivery_tag)
        except _BROKER_DOWN:
            self._owe_instead(delivery_tag)
            raise
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._refuse_once_closed()
        try:
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True, mine_only=True)
            else:
                self._settle(delivery_tag)
        except _BROKER_DOWN:
            self._owe_instead(delivery_tag)
            raise
        virtual.QoS.ack(self, delivery_tag)

    def _settle(self, delivery_tag: str) -> None:
        with self.channel.conn_or_acquire() as client:
            keys = [self.unacked_key, self.unacked_index_key, OWNER_HASH, held_key(_owner.id)]
            self.channel._settle_script(keys=keys, args=[delivery_tag, _owner.id], client=client)

    def restore_by_tag(
        self, tag: str, client: Any = None, leftmost: bool = False, mine_only: bool = False
    ) -> None:
        """kombu's put-back from ``unacked``; ``mine_only``: unless another process owns the message now
        (this one's lease lapsed, the message was reclaimed and taken again)."""

        def restore(pipe: Any) -> None:
            owner = pipe.hget(OWNER_HASH, tag)
            if mine_only and _held_by_another(owner):
                _let_go(pipe, tag)
                return
            held = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe).hdel(OWNER_HASH, tag)
            if owner is not None:
                pipe.srem(held_key(bytes_to_str(owner)), tag)
            if held:
                payload, exchange, routing_key = loads(bytes_to_str(held))
                self.channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as client:
            client.transaction(restore, self.unacked_key, OWNER_HASH)

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
                self.restore_by_tag(tag, client=client, mine_only=True)
            # Redis down, or kombu already tore the connection down while closing the channel after a
            # connection error (its client is gone: AttributeError). Either way the rest become debts.
            except Exception:
                _owe(tags[done:], Debt())
                return

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        # kombu's periodic sweep (every few seconds in a worker): Redis answers, so pay what is owed.
        settle_debts(self.channel)
        # A consumer without an event loop (``drain_events``) sweeps here, on every empty poll.
        if self.channel.active_queues:
            tend(self.channel)
        super().restore_visible(*args, **kwargs)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._no_ack_queues: set[str] = set()
        self._waiting_on: list[str] = []
        self._recorded: set[str] = set()
        self._last_take_key = f"wapipe:last-take:{uuid.uuid4().hex}"
        self._takes = itertools.count()
        super().__init__(*args, **kwargs)  # pings Redis: it answers again
        self._take_script = self.client.register_script(_TAKE)
        self._settle_script = self.client.register_script(_SETTLE)
        self._reclaim_script = self.client.register_script(_RECLAIM)
        self._forget_script = self.client.register_script(_FORGET)
        self._adopt_script = self.client.register_script(_ADOPT)
        settle_debts(self)

    # -- consuming: BRPOP on the bells, then the fetch -------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        self._no_ack_queues.discard(self._tag_to_queue.get(consumer_tag, ""))
        return super().basic_cancel(consumer_tag)

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._waiting_on = list(queues)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        wait = self.brpop_timeout if timeout is None else timeout
        self.client.connection.send_command("BRPOP", *map(bell_key, queues), wait or 0)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                # A token or the timeout: look either way, so a message that came without a token (a
                # ring lost in a restart) waits no longer than the timeout.
                self.client.parse_response(self.client.connection, "BRPOP", **options)
                taken = self._take(self._waiting_on)
            except self.connection_errors:
                # As kombu's: disconnect, so the next turn of the loop reconnects.
                self.client.connection.disconnect()
                raise
            if taken is None:
                raise virtual.Empty()
            queue, payload = taken
            self._queue_cycle.rotate(queue)
            self.connection._deliver(payload, queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _take(self, queues: list[str]) -> tuple[str, dict[str, Any]] | None:
        number = str(next(self._takes))
        records = ["0" if queue in self._no_ack_queues else "1" for queue in queues]
        keys = [self.unacked_key, self.unacked_index_key, self._last_take_key, OWNER_HASH]
        keys += [OWNERS_KEY, held_key(_owner.id)]
        for queue in queues:
            keys += [bell_key(queue), *(self._q_for_pri(queue, step) for step in self.priority_steps)]
        args = [len(self.priority_steps), number, self.visibility_timeout, _owner.id, *records]
        # Never take under a lease that is not there: a sweeper could put the message back at once.
        with _owner.lock:
            _owner.renew_if_due(self.client, monotonic())
        try:
            answer = self._take_script(keys=keys, args=args, client=self.client)
        except _BROKER_DOWN:
            if "1" in records:
                # It may have run: then its message is in ``unacked`` and only this fetch's number says so.
                _owe([f"{self._last_take_key} {number}"], Debt(take=(self._last_take_key, number)))
            raise
        if not answer:
            return None
        index, item, recorded = answer
        payload: dict[str, Any] = loads(bytes_to_str(item))
        if recorded:
            self._recorded.add(payload["properties"]["delivery_tag"])
        return queues[index], payload

    def taken_and_recorded(self, delivery_tag: str) -> bool:
        """Whether the fetch already recorded this delivery in ``unacked`` (asked once, by QoS.append)."""
        try:
            self._recorded.remove(delivery_tag)
        except KeyError:
            return False
        return True

    # -- publishing and putting back: each rings the queue's bell --------------------------------------

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        batch = kwargs.pop("_publish_batch", None)
        # kombu's own commands for the message (LPUSH, and PEXPIREs for a queue declared with x-expires),
        # collected so the ring goes with them.
        commands = batch if batch is not None else _Commands()
        super()._put(queue, message, _publish_batch=commands, **kwargs)
        for name, args in _ring(queue):
            commands.add(name, *args)
        if batch is None:
            with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
                for name, args in commands:
                    getattr(pipe, name)(*args)
                pipe.execute()

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        for queue in self._lookup(exchange, routing_key):
            for name, args in _ring(queue):
                getattr(pipe, name)(*args)


class _Commands(list[tuple[str, tuple[Any, ...]]]):
    """Collects the Redis commands kombu's ``_put`` would send, as its publish batch does."""

    def add(self, name: str, *args: Any) -> None:
        self.append((name, args))


class Transport(kombu_redis.Transport):
    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        cycle = self.cycle
        # Re-registered on every reconnect: one timer, not one more each time (as kombu does for its own).
        old = getattr(cycle, "_wapipe_tend_tref", None)
        if old is not None:
            old.cancel()
        # A timer of the event loop, not kombu's restore sweep: that one runs only every 10 s, while the
        # lease must be renewed well within LEASE_SECONDS even when the prefetch is full and no BRPOP runs.
        tend_cycle = functools.partial(_tend_cycle, cycle)
        cycle._wapipe_tend_tref = loop.call_repeatedly(LEASE_RENEW_SECONDS, tend_cycle)


def _tend_cycle(cycle: Any) -> None:
    for channel in list(cycle._channels):
        if channel.active_queues:
            tend(channel)
            return
