"""Any Meta webhook body -> parsed events, or a pydantic ``ValidationError`` for a non-webhook envelope.

``parse_webhook`` is called by the ingress once the body is a JSON object with an ``entry`` list; only
``ValidationError`` is turned into a 400 there, so anything else escaping would be a 500 (and Meta
retries, then disables the subscription). Bodies are the captured payloads with fields deleted or retyped.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.wire.events import InboundMessage, StatusUpdate
from shared.wire.meta import parse_webhook
from shared.wire.meta.message import inbound_from_message
from shared.wire.meta.status import status_from_meta
from tests.unit.fuzz.strategies import FUZZ, json_fixtures, json_values, mutated

BODIES = json_fixtures("meta")
MESSAGES = [
    m for body in BODIES for e in body["entry"] for c in e["changes"] for m in c["value"].get("messages", [])
]
STATUSES = [
    s for body in BODIES for e in body["entry"] for c in e["changes"] for s in c["value"].get("statuses", [])
]


def _round_trip(event: InboundMessage | StatusUpdate) -> None:
    wire = json.loads(json.dumps(event.model_dump(mode="json")))
    assert type(event).model_validate(wire).provider_message_id == event.provider_message_id


@FUZZ
@given(body=mutated(BODIES))
def test_mutated_webhooks_give_events_or_a_validation_error(body: Any) -> None:
    if not isinstance(body, dict) or not isinstance(body.get("entry"), list):
        return  # the ingress answers these itself, before calling the parser
    try:
        parsed = parse_webhook(body, region="US")
    except ValidationError:
        return
    for event in [*parsed.messages, *parsed.statuses]:
        assert event.provider_message_id
        _round_trip(event)
    assert parsed.skipped >= 0


@FUZZ
@given(entry=st.lists(json_values, max_size=4), extra=st.dictionaries(st.text(max_size=8), json_values))
def test_random_entries_give_events_or_a_validation_error(entry: list[Any], extra: dict[str, Any]) -> None:
    with contextlib.suppress(ValidationError):
        parse_webhook({**extra, "entry": entry})


@FUZZ
@given(message=mutated(MESSAGES), region=st.sampled_from(["US", "CO", "ZZ"]))
def test_any_message_item_gives_an_event_or_none(message: Any, region: str) -> None:
    # Kapso reuses this for its Meta-shaped messages, with arbitrary dicts from its own payloads.
    if not isinstance(message, dict):
        return
    event = inbound_from_message(message, "123456789", (), region=region)
    if event is not None:
        _round_trip(event)


@FUZZ
@given(status=mutated(STATUSES))
def test_any_status_item_gives_an_update_or_none(status: Any) -> None:
    if not isinstance(status, dict):
        return
    update = status_from_meta(status)
    if update is not None:
        _round_trip(update)


def test_fixtures_cover_messages_and_statuses() -> None:
    assert len(MESSAGES) >= 10
    assert len(STATUSES) >= 3
