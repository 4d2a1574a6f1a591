"""Any Twilio webhook parameters -> one canonical event, :class:`MalformedWebhook` (the ingress's 400), or
:class:`OtherChannel` (a message by SMS or another channel, acknowledged and left alone).

Nothing else may escape ``shared.wire.twilio.parse``: another exception would be a 500 to Twilio, which
retries it for hours. Every event must also survive the trip the queue gives it (JSON and back).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from shared.wire.events import InboundMessage, StatusUpdate
from shared.wire.twilio import MalformedWebhook, OtherChannel, parse
from tests.unit.fuzz.strategies import DATA, FUZZ, hostile_text

FORMS = [
    dict(parse_qsl(path.read_text(), keep_blank_values=True))
    for path in sorted((DATA / "twilio").glob("*.txt"))
]
KNOWN_KEYS = sorted({key for form in FORMS for key in form} | {f"MediaContentType{i}" for i in range(12)})
REGIONS = st.sampled_from(["US", "CO", "GB", "IN", "ZZ"])


@st.composite
def twilio_params(draw: st.DrawFn, value: st.SearchStrategy[Any] = hostile_text) -> dict[str, Any]:
    """A captured form with fields removed, replaced by hostile values, and strange ones added."""
    form: dict[str, Any] = dict(draw(st.sampled_from(FORMS)))
    for key in draw(st.lists(st.sampled_from(sorted(form)), max_size=5)):
        form.pop(key, None)
    for key in draw(st.lists(st.sampled_from(KNOWN_KEYS), max_size=6)):
        form[key] = draw(value)
    form.update(draw(st.dictionaries(hostile_text, value, max_size=3)))
    return form


def _check(params: dict[str, Any], region: str) -> None:
    try:
        event = parse(params, region=region)
    except MalformedWebhook as exc:
        reason = str(exc)
        assert reason  # the 400's message says what is wrong
        return
    except OtherChannel as exc:
        channel = exc.channel
        assert channel  # logged and counted by name
        assert not str(params.get("From", "")).lower().startswith("whatsapp:")
        return
    assert isinstance(event, InboundMessage | StatusUpdate)
    assert event.provider_message_id
    assert isinstance(event.dedupe_key, str)
    wire = json.loads(json.dumps(event.model_dump(mode="json")))
    assert type(event).model_validate(wire).provider_message_id == event.provider_message_id


@FUZZ
@given(params=twilio_params(), region=REGIONS)
def test_form_parameters_give_an_event_or_malformed_webhook(params: dict[str, Any], region: str) -> None:
    _check(params, region)


@FUZZ
@given(
    params=twilio_params(
        st.one_of(hostile_text, st.integers(), st.floats(allow_nan=True, allow_infinity=True))
    ),
    region=REGIONS,
)
def test_flat_json_parameters_give_an_event_or_malformed_webhook(params: dict[str, Any], region: str) -> None:
    # The ingress also accepts a flat JSON object, keeping str, int and float values (ingress/twilio.py).
    _check(params, region)


@FUZZ
@given(params=st.dictionaries(hostile_text, hostile_text, max_size=8))
def test_random_parameters_give_an_event_or_malformed_webhook(params: dict[str, str]) -> None:
    _check(params, "US")


def test_the_captured_forms_are_what_the_mutations_start_from() -> None:
    # Guards the fuzzing itself: without fixtures the strategies above would test nothing real.
    assert len(FORMS) >= 5
    assert any(isinstance(parse(form), StatusUpdate) for form in FORMS if "MessageStatus" in form)
    assert Path(DATA / "twilio").is_dir()
