"""Arrival order: the router stores a conversation's messages in the order the ingress accepted them.

The handler stages answer a conversation's messages in id order (shared/db/turns.py), and an id is taken
when ``inbound.route`` stores the message. With several router processes that is not arrival order: a
user's ``/help`` and ``/project mobile``, sent a second apart, are two route tasks that two processes run
at once, and the second one's insert can commit first; ``/project`` is then answered before ``/help``.

So the ingress records each message's arrival where it publishes the message's route task, in the same
atomic publish (:class:`shared.queues.Publisher`): a sorted set per conversation (provider, business
number, sender), the message's dedupe key scored by the arrival time in microseconds on Redis's clock,
strictly increasing within the set. The router then takes a message's place in line before it stores it
(:meth:`Line.ahead`): while a message that arrived earlier in the same conversation is still in the set, i.e.
not stored yet, the route task waits a moment (workers/ordering.py) instead of storing. Once a message is
stored its router leaves the line (:meth:`Line.leave`), after the commit, so the next one can go.

Nothing waits for ever, and a stuck message cannot silence its conversation:

- a route task that has waited :data:`GIVE_UP_AFTER_SECONDS` drops the entries still ahead of it, with a
  warning, and goes on: their route tasks are lost, or still failing after minutes of retries. Counted
  from when it began to wait, not from arrival: after a backlog (routers stopped for a deploy, a database
  outage) every entry is old, yet each message's route task is on its way;
- an earlier entry whose message is in fact stored (its router died between commit and leaving the line)
  is dropped when a later message finds it, so leaving the line is an optimisation, not a duty;
- a route task that fails for good leaves the line (:class:`workers.inbound.RouteTask`);
- a message with no entry (published before this existed, replayed from the dead letters, or the set was
  lost with Redis's data, together with the tasks it described) waits for nothing.

The key holds a hash of the conversation, not its phone number in clear. That is tidiness, not secrecy:
phone numbers are few enough to find by trying them, and Redis holds them in clear elsewhere anyway (the
rate limiter's keys), so Redis is to be protected as the database is (deploy/README.md).
"""

from __future__ import annotations

import hashlib

import redis
from kombu.utils.encoding import bytes_to_str

from shared.wire.events import InboundMessage

# As long as a dispatched message may hold its conversation's turn (shared/db/turns.py STALE_AFTER).
GIVE_UP_AFTER_SECONDS = 300.0
# An idle conversation's line disappears; a live one's is refreshed by each arrival.
LINE_TTL_SECONDS = 24 * 3600
# At most this many earlier entries come back from one look at the line.
LOOK_AHEAD = 20

# KEYS[1]: the line; ARGV[1]: this message's entry (its dedupe key). The entries ahead of it, oldest first
# (at most LOOK_AHEAD); none when it has no entry. Its score goes back as Redis wrote it, so no digit is
# lost to Lua's 14-digit number formatting.
_AHEAD = f"""
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mine then return {{}} end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. mine, 'LIMIT', 0, {LOOK_AHEAD})
"""
# Same KEYS and ARGV: drop every entry ahead of this one; how many.
_DROP_AHEAD = """
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mine then return 0 end
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. mine)
"""

# The publish side, run inside shared/queues.py's publish script for each message it enqueues: a Lua
# fragment with ``line`` (the key), ``entry`` (the dedupe key) and ``now_us`` (the script's TIME, in µs,
# read once per script run) in scope. One script run publishes several messages in the same microsecond,
# so a score is never below the line's last one plus one: scores strictly increase in publish order.
RECORD_LUA = """
local last = redis.call('ZRANGE', line, -1, -1, 'WITHSCORES')[2]
local score = now_us
if last and tonumber(last) >= score then score = tonumber(last) + 1 end
redis.call('ZADD', line, string.format('%.0f', score), entry)
redis.call('EXPIRE', line, line_ttl)
"""


def line_key(provider: str, business_number: str, sender: str) -> str:
    """The key of a conversation's line: one per provider, business number and sender (phone, or the
    business-scoped id when there is none), as the router's conversations are (shared/db/inbound_store.py)."""
    digest = hashlib.blake2b(f"{provider}\x00{business_number}\x00{sender}".encode(), digest_size=16)
    return f"arrivals:{digest.hexdigest()}"


def line_of(message: InboundMessage) -> str:
    """The key of ``message``'s conversation's line."""
    sender = message.sender_phone or message.sender_bsuid or ""
    return line_key(message.provider.value, message.business_number, sender)


class Line:
    """Reads and leaves the lines; one per Redis client (thread-safe, as the client is)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._ahead = client.register_script(_AHEAD)
        self._drop_ahead = client.register_script(_DROP_AHEAD)

    def ahead(self, line: str, entry: str) -> tuple[str, ...]:
        """The entries (dedupe keys) of the messages that arrived before ``entry`` in ``line`` and are not
        stored yet, oldest first, at most :data:`LOOK_AHEAD`."""
        return tuple(bytes_to_str(item) for item in self._ahead(keys=[line], args=[entry]))

    def leave(self, line: str, *entries: str) -> None:
        """Take these entries out of the line: their messages are stored."""
        if entries:
            self._client.zrem(line, *entries)

    def drop_ahead(self, line: str, entry: str) -> int:
        """Take every entry ahead of ``entry`` out of the line, stored or not; how many there were."""
        return int(self._drop_ahead(keys=[line], args=[entry]))
