"""Rate limits in Redis, so they hold across every worker process and machine.

- Inbound, per WhatsApp user: at most ``WAPIPE_RATE_LIMIT`` messages a minute are answered (a sliding
  window of the answered ones). The first message over the limit gets one polite reply; the rest are
  stored, not answered, and not counted, until the window has room again.
- Outbound pacing, shared by every notify process: a GCRA token bucket per sender number at
  ``WAPIPE_SEND_RATE`` messages a second (grants at least 1/rate apart, so no one-second window ever holds
  more than the rate), and a sliding window per recipient at ``WAPIPE_RECIPIENT_RATE`` a minute.

Each check is one Lua script, atomic on the server, timed by the server's clock (``TIME``) so workers on
machines with skewed clocks still agree. Counting is keyed by message id, so a task that runs twice
is counted once.

Batches (notify sends many messages per task, see workers/notify.py) take their pacing in bulk:
:meth:`RateLimiter.reserve` books the send times of the queued sends that fall within a short horizon
(``interval`` apart) from the same GCRA bucket, and counts each of those sends against its recipient's
window, all in one call: a send is counted when its slot is booked, and one over its recipient's limit
takes no slot. Booked slots are spaced ``(1 + PACING_MARGIN) / rate`` apart rather
than ``1 / rate``: evenly spaced at exactly the rate, a closed one-second window holds rate + 1 sends, and
the few milliseconds a send can lag its slot (event loop, network) would let a window catch one more; the
margin keeps every one-second window at or under the rate with ``PACING_MARGIN`` seconds of lag to spare.
A process that cannot tell closely when Redis ran its call (a slow round trip: the slots count from that
moment, anywhere between asking and reading the answer) sends its slots up to a round trip late, so it
books a pad that long after them (``pad_seconds``): the next slots anyone books keep their distance from
its late sends. A provider's "slow down" (429 with Retry-After) blocks the sender number for every process
(:meth:`RateLimiter.block_sender`): no slot is booked until it passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from shared.providers.base import MAX_RETRY_AFTER_SECONDS

# KEYS: the user's window, the notice marker. ARGV: window ms, limit, member (the zero-padded message id).
# Returns {allowed, send_notice}. Only answered messages enter the window: one refused while it is full
# takes no room, so a sender who keeps writing while limited is answered again as soon as the messages
# answered a minute ago leave it (counting the refused ones kept them limited for as long as they wrote).
# A message already in the window is allowed again (a redelivered route); one refused is refused again
# while the window is still full, and the notice marker remembers WHICH message got the polite reply, so
# a re-run for that message still says "send it" (the reply itself is idempotent).
_INBOUND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, limit, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], member) then
  return {1, 0}
end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local holder = redis.call('GET', KEYS[2])
if not holder then
  redis.call('SET', KEYS[2], member, 'PX', window)
  return {0, 1}
end
if holder == member then
  return {0, 1}
end
return {0, 0}
"""

# A recipient's per-minute window, as the booking below checks it: 0 when the send (``member``) is counted
# in window ``key`` (or was already), else ms until the oldest send leaves the window. ``now`` in whole ms.
_WINDOW_WAIT = """
local function window_wait(key, member, now, window, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZSCORE', key, member) then
    return 0
  end
  if redis.call('ZCARD', key) < limit then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, window)
    return 0
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
"""

# GCRA booking slots for queued sends, each counted against its recipient's per-minute window in the same
# call. KEYS: the bucket, the sender's block, then each send's recipient window (in queue order). ARGV:
# interval ms, horizon ms, window ms, per-window limit, pad ms, then each send's member. Sends are examined
# in order until the slots that fall within the horizon are all given: a send within its recipient's limit (or
# already counted there) takes the next slot, one over it takes none. Returns {slots booked, ms from now to
# the first (text: Lua numbers come back as integers), ms to wait when nothing could be examined (blocked,
# or no slot within the horizon), sends examined, then each examined send's wait in ms (0: booked)}.
# Slots fall at first, first + interval, ...; the bucket advances only by the slots booked, plus the pad
# after them when any was booked (the next slot anyone books is then at least interval + pad after ours).
_RESERVE = (
    _WINDOW_WAIT
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then
  return {0, '0', blocked, 0}
end
local interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local window, limit, pad = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local fit = math.floor((now + horizon - tat) / interval) + 1
if fit < 1 then
  return {0, '0', math.max(1, math.ceil(tat - now - horizon)), 0}
end
local window_now = math.floor(now)
local booked, waits = 0, {}
for i = 3, #KEYS do
  if booked >= fit then break end
  local wait = window_wait(KEYS[i], ARGV[i + 3], window_now, window, limit)
  if wait == 0 then booked = booked + 1 end
  waits[#waits + 1] = wait
end
if booked > 0 then
  local new_tat = tat + booked * interval + pad
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
end
local reply = {booked, string.format('%.3f', tat - now), 0, #waits}
for i = 1, #waits do reply[4 + i] = waits[i] end
return reply
"""
)

# KEYS: the block. ARGV: ms. Extends the block to at least ms from now; never shortens it.
_BLOCK = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"""

INBOUND_WINDOW_SECONDS = 60
# Spare time (in seconds, so also a fraction of the one-second window) by which sends may lag their
# booked slots unevenly without any one-second window going over the rate; the price is pacing at
# rate / (1 + margin). Measured with two worker processes at 50/s: 0.05 left the busiest window at
# exactly the rate (a loaded machine delays some sends ~40 ms more than others); 0.1 keeps room.
PACING_MARGIN = 0.1


@dataclass(frozen=True)
class Booking:
    """Send times booked for one sender's queued sends, examined in queue order: ``waits`` holds each
    examined send's answer (0.0: it has a slot; else seconds until its recipient's window has room, and no
    slot). The ``count`` slots fall at ``first``, ``first + interval``, ... seconds from now, in the order
    of the sends that got one. Nothing examined: ``wait`` seconds until a slot can be booked."""

    count: int
    first: float
    interval: float
    wait: float
    waits: tuple[float, ...] = ()

    def offsets(self) -> list[float]:
        return [self.first + index * self.interval for index in range(self.count)]


@dataclass(frozen=True)
class InboundVerdict:
    allowed: bool  # handle the message
    send_notice: bool  # not allowed, and this is the message that gets the one polite reply


def _member(message_id: int) -> str:
    # Zero-padded so ties on the same millisecond still order by message id.
    return f"{message_id:020d}"


class RateLimiter:
    """The limits, on one Redis client (the process-wide publisher's is a good one to share)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._inbound = client.register_script(_INBOUND)
        self._reserve = client.register_script(_RESERVE)
        self._block = client.register_script(_BLOCK)

    def inbound(
        self, user_key: str, message_id: int, limit: int, window_seconds: int = INBOUND_WINDOW_SECONDS
    ) -> InboundVerdict:
        """Count the inbound message toward its sender's window; say whether to handle it."""
        allowed, notice = self._inbound(
            keys=[f"ratelimit:in:{user_key}", f"ratelimit:in-notice:{user_key}"],
            args=[window_seconds * 1000, limit, _member(message_id)],
        )
        return InboundVerdict(bool(allowed), bool(notice))

    # --- batches ----------------------------------------------------------------------------------------

    def reserve(
        self,
        sender: str,
        rate_per_second: float,
        sends: Sequence[tuple[str, int]],
        horizon_seconds: float,
        recipient_per_minute: int,
        pad_seconds: float = 0.0,
    ) -> Booking:
        """Book send slots for the sender number, those falling within the horizon, for ``sends``
        ((recipient, message id), in queue order), each counted against its recipient's per-minute
        window in the same call (a send already counted there is not counted twice). When any slot is
        booked, the bucket also keeps ``pad_seconds`` free after them: room for this booking's sends to go
        out that much late without crowding the slots booked next."""
        interval_ms = (1 + PACING_MARGIN) * 1000.0 / rate_per_second
        keys = [f"pace:sender:{sender}", f"pace:block:{sender}", *(f"pace:to:{to}" for to, _ in sends)]
        args = [
            f"{interval_ms:.6f}",
            f"{horizon_seconds * 1000:.3f}",
            60_000,
            recipient_per_minute,
            f"{pad_seconds * 1000:.3f}",
            *(_member(message_id) for _, message_id in sends),
        ]
        count, first_ms, wait_ms, _examined, *waits = self._reserve(keys=keys, args=args)
        return Booking(
            int(count),
            float(first_ms) / 1000.0,
            interval_ms / 1000.0,
            int(wait_ms) / 1000.0,
            tuple(int(wait) / 1000.0 for wait in waits),
        )

    def block_sender(self, sender: str, seconds: float) -> None:
        """The provider asked this number to slow down: no slot is booked for ``seconds`` (every process),
        at most MAX_RETRY_AFTER_SECONDS: one answer must not stop the number for days."""
        if not seconds > 0:  # also NaN: nothing to wait for
            return
        milliseconds = int(min(seconds, MAX_RETRY_AFTER_SECONDS) * 1000)
        self._block(keys=[f"pace:block:{sender}"], args=[max(1, milliseconds)])
