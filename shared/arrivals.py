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
  warning, and goes on: their route tasks are lost. Counted from when it began to wait, not from
  arrival: after a backlog (routers stopped for a deploy, a database outage) every entry is old, yet each
  message's route task is on its way. And counted afresh after each of its own failures: Celery's retry
  keeps a task's headers, so the clock would otherwise run through a database outage that the waiter
  spent failing and retrying, and give up as soon as the database is back;
- an entry whose route task is retrying after a failure (PostgreSQL or Redis unreachable, retried with a
  backoff of up to 5 minutes) is not lost: before its retry is published the task marks the entry with
  when the retry is due (:meth:`Line.retrying`: a hash beside the line, in epoch seconds on the workers'
  clocks, as the waiting clock is), and a waiter gives up on the entries ahead only
  :data:`GIVE_UP_AFTER_SECONDS` after the latest such time (:meth:`Line.drop_ahead`). So a long outage
  delays a conversation but does not reorder it, and still nothing waits for ever: retries are bounded
  (workers/__init__.py ``OUTAGE_RETRIES``), the last one that fails takes its entry out of the line, and a
  mark that is not renewed lapses. Marks are written only on a failure's retry or by a waiter about to
  give up (below), and read only by the latter, so the usual path costs no Redis call more. A mark is
  not cleared when its entry leaves the line (nothing reads the mark of an entry not in the line): the
  hash expires instead;
- giving up takes two looks: an entry ahead may be a router as alive as this one, waiting for the same lost
  entry since the same moment (after a backlog), and dropping it would store the later message first. So
  a router about to drop the entries ahead first marks its own entry as due now (unless it is marked
  already) and looks again once every waiting router has (``workers.ordering.PASS_OVER_LOOK_SECONDS``):
  a router behind it finds it marked and keeps waiting;
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
import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import redis
from kombu.utils.encoding import bytes_to_str

from shared.wire.events import InboundMessage

# As long as a dispatched message may hold its conversation's turn (shared/db/turns.py STALE_AFTER).
GIVE_UP_AFTER_SECONDS = 300.0
# How much longer than the give-up time after its due time a retrying mark is kept: clocks differ a little
# between workers. The handlers' marks (workers/ordering.py) keep the same margin.
MARK_MARGIN_SECONDS = 60
# An idle conversation's line disappears; a live one's is refreshed by each arrival.
LINE_TTL_SECONDS = 24 * 3600
# At most this many earlier entries come back from one look at the line.
LOOK_AHEAD = 20

# KEYS: the lines the message may be in, in turn; ARGV[1]: this message's entry (its dedupe key). The
# number of the first line that holds the entry, then the entries ahead of it there, oldest first (at most
# LOOK_AHEAD); nothing when no line holds it.
_AHEAD = f"""
for i, line in ipairs(KEYS) do
  local mine = redis.call('ZSCORE', line, ARGV[1])
  if mine then
    local ahead = redis.call('ZRANGEBYSCORE', line, '-inf', '(' .. mine, 'LIMIT', 0, {LOOK_AHEAD})
    table.insert(ahead, 1, i)
    return ahead
  end
end
return {{}}
"""
# KEYS[1]: the line, KEYS[2]: its retrying marks; ARGV[1]: this message's entry, ARGV[2]: a time (epoch
# seconds), ARGV[3]: now (epoch seconds, as text), ARGV[4]: how long a mark due now must last (whole
# seconds). Drop every entry ahead of this one, unless one of them is marked with its retry due after
# ARGV[2], or this one is not: then mark it, due now, and drop nothing. {dropped, '', 0}, {0, the latest
# such due time ahead, as it was written, 0}, or {0, '', 1} when it marked this entry. The marks are few:
# only entries whose route failed, or that gave up, in the last minutes.
_DROP_AHEAD = """
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mine then return {0, '', 0} end
local cutoff = tonumber(ARGV[2])
local latest, latest_text, own = cutoff, '', nil
local marks = redis.call('HGETALL', KEYS[2])
for i = 1, #marks, 2 do
  local due = tonumber(marks[i + 1])
  if marks[i] == ARGV[1] then own = due end
  if due and due > latest then
    local score = redis.call('ZSCORE', KEYS[1], marks[i])
    if score and tonumber(score) < tonumber(mine) then latest, latest_text = due, marks[i + 1] end
  end
end
if latest_text ~= '' then return {0, latest_text, 0} end
if not own or own <= cutoff then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  if redis.call('TTL', KEYS[2]) < tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
  return {0, '', 1}
end
return {redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. mine), '', 0}
"""
# KEYS[1]: the line, KEYS[2]: its retrying marks; ARGV[1]: an entry, ARGV[2]: when its retry is due (epoch
# seconds, as text), ARGV[3]: how long the mark must last (whole seconds). Only an entry still in the line
# is marked (its message may be stored already); the hash lives as long as its longest-lived mark.
_RETRYING = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return 1
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
    """The key of a conversation's line: one per provider, business number and sender, as the router's
    conversations are (shared/db/inbound_store.py)."""
    digest = hashlib.blake2b(f"{provider}\x00{business_number}\x00{sender}".encode(), digest_size=16)
    return f"arrivals:{digest.hexdigest()}"


def retrying_key(line: str) -> str:
    """The key of the hash of ``line``'s entries whose route task is retrying after a failure."""
    return f"{line}:retrying"


def line_of(message: InboundMessage) -> str:
    """The key of ``message``'s conversation's line. The sender is the business-scoped id when there is
    one: Meta sends it with every message of a user with a username, their phone only with some (the
    router finds the contact by either), so keyed by phone first their messages would be in two lines."""
    sender = message.sender_bsuid or message.sender_phone or ""
    return line_key(message.provider.value, message.business_number, sender)


def lines_of(message: InboundMessage) -> tuple[str, ...]:
    """The lines ``message``'s entry may be in: its line, then, when it has a business-scoped id and a
    phone, the phone's, where an ingress of an earlier release (keyed by the phone first) put it. Its route
    task may be one such an ingress queued (a rolling deploy, or the backlog one leaves)."""
    line = line_of(message)
    if message.sender_bsuid and message.sender_phone:
        return line, line_key(message.provider.value, message.business_number, message.sender_phone)
    return (line,)


class Line:
    """Reads and leaves the lines; one per Redis client (thread-safe, as the client is)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._ahead = client.register_script(_AHEAD)
        self._drop_ahead = client.register_script(_DROP_AHEAD)
        self._retrying = client.register_script(_RETRYING)

    def ahead(self, line: str, entry: str) -> tuple[str, ...]:
        """The entries (dedupe keys) of the messages that arrived before ``entry`` in ``line`` and are not
        stored yet, oldest first, at most :data:`LOOK_AHEAD`."""
        return self.place((line,), entry).ahead

    def place(self, lines: Sequence[str], entry: str) -> Place:
        """The first of ``lines`` that holds ``entry``, and the entries ahead of it there (as
        :meth:`ahead`); no line and none ahead when none holds it. One round trip."""
        found = self._ahead(keys=list(lines), args=[entry])
        if not found:
            return Place(None, ())
        return Place(lines[int(found[0]) - 1], tuple(bytes_to_str(item) for item in found[1:]))

    def leave(self, line: str, *entries: str) -> None:
        """Take these entries out of the line: their messages are stored."""
        if entries:
            self._client.zrem(line, *entries)

    def leave_all(self, lines: Sequence[str], entry: str) -> None:
        """Take ``entry`` out of every one of ``lines`` (its message is stored), in one round trip."""
        if len(lines) == 1:
            self._client.zrem(lines[0], entry)
            return
        pipe = self._client.pipeline(transaction=False)
        for line in lines:
            pipe.zrem(line, entry)
        pipe.execute()

    def drop_ahead(self, line: str, entry: str, now: float | None = None) -> Dropped:
        """Take every entry ahead of ``entry`` out of the line, stored or not, unless one of them is
        retrying with its retry due less than :data:`GIVE_UP_AFTER_SECONDS` before ``now`` (epoch
        seconds; default the clock's): then none, and the latest due time comes back. Nor when ``entry``
        itself is not so marked: it is marked then, due ``now``, and its router looks again before it drops
        anything (a router behind it, giving up at the same moment, then keeps waiting for it)."""
        now = time.time() if now is None else now
        cutoff, lasts = now - GIVE_UP_AFTER_SECONDS, GIVE_UP_AFTER_SECONDS + MARK_MARGIN_SECONDS
        dropped, due, marked = self._drop_ahead(
            keys=[line, retrying_key(line)], args=[entry, repr(cutoff), repr(now), math.ceil(lasts)]
        )
        return Dropped(int(dropped), float(bytes_to_str(due)) if due else None, bool(marked))

    def retrying(self, line: str, entry: str, due: float, now: float | None = None) -> bool:
        """Mark ``entry`` as retrying, its route task due again at ``due`` (epoch seconds): waiters behind it
        keep waiting until :data:`GIVE_UP_AFTER_SECONDS` past then. False when it is not in the line."""
        now = time.time() if now is None else now
        lasts = max(1, math.ceil(due - now + GIVE_UP_AFTER_SECONDS + MARK_MARGIN_SECONDS))
        return bool(self._retrying(keys=[line, retrying_key(line)], args=[entry, repr(due), lasts]))


class Place(NamedTuple):
    """Where :meth:`Line.place` found an entry: its line (None when in none) and the entries ahead of it."""

    line: str | None
    ahead: tuple[str, ...]


class Dropped(NamedTuple):
    """What :meth:`Line.drop_ahead` did: how many entries it dropped, or, when an entry ahead is retrying,
    none and when that retry is due (epoch seconds), or none because it marked the entry (``marked``)."""

    count: int
    retry_due: float | None
    marked: bool = False
