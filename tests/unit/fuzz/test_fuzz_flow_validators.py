"""Any answer to a menu flow's step -> its normalised value, or :class:`Invalid` (the re-prompt).

``validate`` reads what a shop-floor user types or taps at every step; anything else escaping it fails the
step instead of asking again, and a value it accepts is stored in the flow's record (JSON, so no NaN or
infinity) and must be what the step allows.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from shared.flows.pack import Step, load_pack, shipped
from shared.flows.validators import Answer, Invalid, choice_id, validate
from tests.unit.fuzz.strategies import FUZZ, hostile_text

SHIPPED_STEPS = [step for name in shipped() for flow in load_pack(name).flows for step in flow.steps]
# Each kind with the settings the shipped packs leave out: bounds, fractions, empty texts, odd labels.
OTHER_STEPS = [
    Step(name="pick", prompt="?", kind="choice", choices=["1", "Two", "３", "ß", "İstanbul", "a  b"]),
    Step(name="plate", prompt="?", kind="regex", pattern=r"[a-z]{2}-\d{3}", case="lower"),
    Step(name="code", prompt="?", kind="regex", pattern=r"\w+", case="keep"),
    Step(name="qty", prompt="?", kind="number", min=1, max=10),
    Step(name="amount", prompt="?", kind="number", integer=False, min=-0.5),
    Step(name="huge", prompt="?", kind="number", max=1e300),
    Step(name="note", prompt="?", kind="text", min_length=0, max_length=4096),
    Step(name="short", prompt="?", kind="text", min_length=3, max_length=10),
]
STEPS = SHIPPED_STEPS + OTHER_STEPS
# Numbers as people type them: signs, both decimal marks, digits of other scripts, exponents, spaces.
number_text = st.text(st.sampled_from(list("0123456789٠١٢٣３²①.,+-eE \u00a0\u200b\n")), max_size=40)
# And numbers around the bounds, written with a point or a comma.
near_bounds = st.one_of(
    st.integers(-20, 20).map(str),
    st.decimals(-20, 20, places=2).map(str),
    st.decimals(-20, 20, places=2).map(lambda number: str(number).replace(".", ",")),
)
answers = st.one_of(hostile_text, number_text, near_bounds, st.text(max_size=5000))


@st.composite
def tapped_ids(draw: st.DrawFn, step: Step) -> str | None:
    """A tapped button or list row's id: none, this step's (in range or not), or anything."""
    number = draw(st.integers(-2, len(step.choices) + 2))
    return draw(st.one_of(st.none(), st.just(choice_id(step.name, number)), hostile_text))


@FUZZ
@given(data=st.data(), step=st.sampled_from(STEPS), text=answers)
def test_any_answer_gives_a_value_the_step_allows_or_invalid(
    data: st.DataObject, step: Step, text: str
) -> None:
    reply_id = data.draw(tapped_ids(step))
    try:
        value = validate(step, Answer(text, reply_id))
    except Invalid as exc:
        message = exc.message
        assert message  # what the user is asked to send instead
        return
    json.dumps(value, allow_nan=False)
    if step.kind == "choice":
        assert value in step.choices
    elif step.kind == "number":
        assert isinstance(value, int) if step.integer else isinstance(value, int | float)
        assert step.min is None or value >= step.min
        assert step.max is None or value <= step.max
    elif step.kind == "text":
        assert isinstance(value, str)
        assert step.min_length <= len(value) <= step.max_length
    elif step in SHIPPED_STEPS:
        # The stored reference still has the pattern's form: lookups and records read it so.
        assert isinstance(value, str)
        assert step.compiled.fullmatch(value)
