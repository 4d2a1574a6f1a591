"""An inbound message's dedupe key names its provider and provider id, and reads back as both: the router
finds the message an arrival-line entry stands for by it (shared/arrivals.py)."""

from __future__ import annotations

import pytest

from shared.wire.events import InboundMessage, inbound_key_parts


@pytest.mark.parametrize(
    ("provider", "provider_message_id"),
    [("twilio", "SM0a1b2c"), ("meta", "wamid.HBgLMTU1NTEyMzQ1NjcVAgA="), ("kapso", "id:with:colons")],
)
def test_a_dedupe_key_reads_back_as_its_provider_and_id(provider: str, provider_message_id: str) -> None:
    message = InboundMessage(
        provider=provider, provider_message_id=provider_message_id, business_number="+14155238886"
    )
    assert inbound_key_parts(message.dedupe_key) == (provider, provider_message_id)


@pytest.mark.parametrize(
    "key", ["seen-status:twilio:SM1:delivered", "handle:42", "seen:", "seen:twilio", "seen::x"]
)
def test_other_keys_name_no_inbound_message(key: str) -> None:
    assert inbound_key_parts(key) is None
