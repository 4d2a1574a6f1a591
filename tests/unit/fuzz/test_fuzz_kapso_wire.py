"""Any Kapso delivery -> parsed events, or ``ValueError`` (the ingress's 400), never another exception.

``parse_delivery`` gets a JSON object and the ``X-Webhook-Event`` / ``X-Webhook-Batch`` headers; the
ingress turns ``ValueError`` (pydantic's ``ValidationError`` is one) into a 400, anything else would be
a 500 and Kapso's retries.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.wire.kapso import RECEIVED, STATUS_EVENTS, parse_delivery
from tests.unit.fuzz.strategies import FUZZ, hostile_text, json_fixtures, json_values, mutated

DELIVERIES = json_fixtures("kapso")
EVENTS = st.one_of(
    st.none(), st.sampled_from([RECEIVED, *STATUS_EVENTS, "whatsapp.conversation.created"]), hostile_text
)
BATCH_HEADERS = st.one_of(st.none(), st.sampled_from(["true", "TRUE ", "false", ""]), hostile_text)


def _check(body: dict[str, Any], event: str | None, batch: str | None) -> None:
    try:
        parsed = parse_delivery(body, event, batch_header=batch, region="US")
    except ValueError as exc:
        error = str(exc)
        assert error  # the 400 says what is wrong
        return
    for item in [*parsed.messages, *parsed.statuses]:
        assert item.provider == "kapso"
        assert item.provider_message_id
        wire = json.loads(json.dumps(item.model_dump(mode="json")))
        assert type(item).model_validate(wire).dedupe_key == item.dedupe_key


@FUZZ
@given(body=mutated(DELIVERIES), event=EVENTS, batch=BATCH_HEADERS)
def test_mutated_deliveries_give_events_or_value_error(
    body: Any, event: str | None, batch: str | None
) -> None:
    if isinstance(body, dict):  # the ingress refuses anything else before parsing
        _check(body, event, batch)


@FUZZ
@given(
    items=st.lists(st.one_of(mutated(DELIVERIES), json_values), max_size=4),
    event=EVENTS,
)
def test_batches_of_anything_give_events_or_value_error(items: list[Any], event: str | None) -> None:
    _check({"batch": True, "data": items}, event, "true")


@FUZZ
@given(body=st.dictionaries(st.text(max_size=12), json_values, max_size=6), event=EVENTS, batch=BATCH_HEADERS)
def test_random_objects_give_events_or_value_error(
    body: dict[str, Any], event: str | None, batch: str | None
) -> None:
    _check(body, event, batch)
