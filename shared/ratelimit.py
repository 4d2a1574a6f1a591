"""Rate limits in Redis, so they hold across every worker process and machine.

- Inbound, per WhatsApp user: at most ``WAPIPE_RATE_LIMIT`` messages a minute are answered (a sliding
  window). The first message over the limit gets one polite reply; the rest are stored, not answered,
  until the window has room again.
- Outbound pacing, shared by every notify process: a GCRA token bucket per sender number at
  ``WAPIPE_SEND_RATE`` messages a second (grants at least 1/rate apart, so no one-second window ever holds
  more than the rate), and a sliding window per recipient at ``WAPIPE_RECIPIENT_RATE`` a minute.

Each check is one Lua script, atomic on the server, timed by the server's clock (``TIME``) so workers on
machines with skewed clocks still agree. Counting is keyed by message id, so a task that runs twice
is counted once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

# KEYS: the user's window, the notice marker. ARGV: window ms, limit, member (the zero-padded message id).
# Returns {allowed, send_notice}. The message's rank in the window (not the count) decides, so running the
# check again for the same message gives the same answer; the notice marker remembers WHICH message got
# the polite reply, so a re-run for that message still says "send it" (the reply itself is idempotent).
_INBOUND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, limit, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if not redis.call('ZSCORE', KEYS[1], member) then
  redis.call('ZADD', KEYS[1], now, member)
end
redis.call('PEXPIRE', KEYS[1], window)
local rank = redis.call('ZRANK', KEYS[1], member)
if rank < limit then
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

# GCRA (https://en.wikipedia.org/wiki/Generic_cell_rate_algorithm). KEYS: the bucket. ARGV: emission
# interval ms (1000 / rate), burst (>= 1). Returns 0 when a token was taken, else ms to wait.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait > 0 then
  return math.ceil(wait)
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return 0
"""

# KEYS: the recipient's window. ARGV: window ms, limit, member. Returns 0 when the send is counted (or
# was already), else ms until the oldest send leaves the window.
_WINDOW_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, limit, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], member) then
  return 0
end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

INBOUND_WINDOW_SECONDS = 60


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
        self._gcra = client.register_script(_GCRA)
        self._window_slot = client.register_script(_WINDOW_SLOT)

    def inbound(
        self, user_key: str, message_id: int, limit: int, window_seconds: int = INBOUND_WINDOW_SECONDS
    ) -> InboundVerdict:
        """Count the inbound message toward its sender's window; say whether to handle it."""
        allowed, notice = self._inbound(
            keys=[f"ratelimit:in:{user_key}", f"ratelimit:in-notice:{user_key}"],
            args=[window_seconds * 1000, limit, _member(message_id)],
        )
        return InboundVerdict(bool(allowed), bool(notice))

    def sender_wait(self, sender: str, rate_per_second: float, burst: int = 1) -> float:
        """Take a token from the sender number's bucket: 0.0 if taken, else seconds to wait first."""
        wait_ms = self._gcra(keys=[f"pace:sender:{sender}"], args=[1000.0 / rate_per_second, burst])
        return int(wait_ms) / 1000.0

    def recipient_wait(self, recipient: str, message_id: int, per_minute: int) -> float:
        """Count a send to the recipient: 0.0 if within the per-minute limit, else seconds to wait."""
        wait_ms = self._window_slot(
            keys=[f"pace:to:{recipient}"], args=[60_000, per_minute, _member(message_id)]
        )
        return int(wait_ms) / 1000.0

    def acquire_send_slot(
        self,
        *,
        sender: str,
        rate_per_second: float,
        recipient: str,
        message_id: int,
        recipient_per_minute: int,
        max_wait_seconds: float = 2.0,
    ) -> float:
        """Wait (up to ``max_wait_seconds`` in all) for the recipient's and then the sender's slot.

        Returns 0.0 when the message may be sent now, else how long to wait before trying again (the
        caller then retries the task later instead of holding a worker). The recipient comes first: a
        sender token taken for a message that then waits on its recipient would be wasted.
        """
        deadline = time.monotonic() + max_wait_seconds
        for check in (
            lambda: self.recipient_wait(recipient, message_id, recipient_per_minute),
            lambda: self.sender_wait(sender, rate_per_second),
        ):
            while (wait := check()) > 0:
                if time.monotonic() + wait > deadline:
                    return wait
                time.sleep(wait)
        return 0.0
