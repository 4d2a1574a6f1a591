"""The Redis rate limits: per-user inbound window, per-sender token bucket, per-recipient window."""

from __future__ import annotations

from shared.providers.base import MAX_RETRY_AFTER_SECONDS
from shared.ratelimit import RateLimiter


def test_inbound_window_allows_the_limit_then_one_notice(redis_client) -> None:
    limiter = RateLimiter(redis_client)
    verdicts = [limiter.inbound("+15551234567", message_id, limit=3) for message_id in range(1, 7)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False, False]
    assert [v.send_notice for v in verdicts] == [False, False, False, True, False, False]
    # The same message checked again gets the same answer (a redelivered route).
    assert limiter.inbound("+15551234567", 2, limit=3).allowed is True
    assert limiter.inbound("+15551234567", 4, limit=3).send_notice is True
    assert limiter.inbound("+15559999999", 7, limit=3).allowed is True


def test_sender_bucket_spaces_sends_at_the_rate(redis_client) -> None:
    limiter = RateLimiter(redis_client)
    assert limiter.sender_wait("+14155238886", rate_per_second=5) == 0.0
    wait = limiter.sender_wait("+14155238886", rate_per_second=5)
    assert 0.0 < wait <= 0.2
    assert limiter.sender_wait("+14150000000", rate_per_second=5) == 0.0  # another number, its own bucket


def test_recipient_window_counts_each_message_once(redis_client) -> None:
    limiter = RateLimiter(redis_client)
    assert limiter.recipient_wait("+15551234567", 1, per_minute=2) == 0.0
    assert limiter.recipient_wait("+15551234567", 2, per_minute=2) == 0.0
    wait = limiter.recipient_wait("+15551234567", 3, per_minute=2)
    assert 0.0 < wait <= 60.0
    assert limiter.recipient_wait("+15551234567", 1, per_minute=2) == 0.0  # a retry of a counted send


def test_acquire_send_slot_returns_the_wait_instead_of_blocking_long(redis_client) -> None:
    limiter = RateLimiter(redis_client)
    kwargs = {"sender": "+14155238886", "rate_per_second": 1000.0, "recipient": "+15551234567"}
    assert limiter.acquire_send_slot(**kwargs, message_id=1, recipient_per_minute=1) == 0.0
    assert (
        limiter.acquire_send_slot(**kwargs, message_id=2, recipient_per_minute=1, max_wait_seconds=0.5) > 0.5
    )


def test_block_sender_blocks_for_at_most_the_cap_whatever_it_is_given(redis_client) -> None:
    limiter = RateLimiter(redis_client)
    for seconds in (999_999_999.0, float("inf"), float("nan")):
        limiter.block_sender("capped", seconds)
        assert 0 < redis_client.pttl("pace:block:capped") <= MAX_RETRY_AFTER_SECONDS * 1000
