"""The Redis rate limits: the per-user inbound window and the sender block (notify's booking of send slots
is tested with the batches, in test_notify_dispatch.py and test_notify_pacing.py)."""

from __future__ import annotations

import redis

from shared.providers.base import MAX_RETRY_AFTER_SECONDS
from shared.ratelimit import INBOUND_WINDOW_SECONDS, RateLimiter


def test_inbound_window_allows_the_limit_then_one_notice(redis_client) -> None:
    limiter = RateLimiter(redis_client)
    verdicts = [limiter.inbound("+15551234567", message_id, limit=3) for message_id in range(1, 7)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False, False]
    assert [v.send_notice for v in verdicts] == [False, False, False, True, False, False]
    # The same message checked again gets the same answer (a redelivered route).
    assert limiter.inbound("+15551234567", 2, limit=3).allowed is True
    assert limiter.inbound("+15551234567", 4, limit=3).send_notice is True
    assert limiter.inbound("+15559999999", 7, limit=3).allowed is True


def test_messages_refused_while_limited_do_not_keep_the_sender_limited(redis_client) -> None:
    limiter = RateLimiter(redis_client)
    user = "+15551234567"
    assert [limiter.inbound(user, message_id, limit=2).allowed for message_id in (1, 2)] == [True, True]
    # The sender keeps writing while limited: refused, and not counted toward the window.
    assert [limiter.inbound(user, message_id, limit=2).allowed for message_id in (3, 4)] == [False, False]
    # A minute later the two answered messages leave the window; the refused ones came after them.
    _sent_a_minute_ago(redis_client, user, message_ids=(1, 2))
    assert limiter.inbound(user, 5, limit=2).allowed is True


def _sent_a_minute_ago(client: redis.Redis, user: str, message_ids: tuple[int, ...]) -> None:
    """Move these messages' entries in the user's window back past its start, as a minute passing would."""
    seconds, microseconds = client.time()
    minute_ago_ms = seconds * 1000 + microseconds // 1000 - INBOUND_WINDOW_SECONDS * 1000 - 1
    client.zadd(f"ratelimit:in:{user}", {f"{ident:020d}": minute_ago_ms for ident in message_ids}, xx=True)


def test_block_sender_blocks_for_at_most_the_cap_whatever_it_is_given(redis_client) -> None:
    limiter = RateLimiter(redis_client)
    for seconds in (999_999_999.0, float("inf"), float("nan")):
        limiter.block_sender("capped", seconds)
        assert 0 < redis_client.pttl("pace:block:capped") <= MAX_RETRY_AFTER_SECONDS * 1000
