"""shared.phone: one E.164 form per person, whichever way the number reached us."""

from __future__ import annotations

import pytest

from shared.phone import InvalidPhone, normalize, provider_number


@pytest.mark.parametrize(
    ("whatsapp_form", "plan_form"),
    [
        ("5215512345678", "+525512345678"),  # Mexico: WhatsApp keeps the 1 the plan dropped in 2019
        ("whatsapp:+5215512345678", "+525512345678"),
        ("551187654321", "+5511987654321"),  # Brazil: a mobile registered before the ninth digit
        ("whatsapp:+554188887777", "+5541988887777"),
    ],
)
def test_whatsapps_older_forms_are_the_plans_form(whatsapp_form: str, plan_form: str) -> None:
    assert provider_number(whatsapp_form, "US") == plan_form
    assert normalize(plan_form) == plan_form  # what an API caller writes: the same contact
    assert normalize(whatsapp_form.removeprefix("whatsapp:")) == plan_form  # and a wa_id they pass on


@pytest.mark.parametrize(
    "number",
    [
        "+554532782153",  # a Brazilian landline (area 45, then 3): no ninth digit to add
        "+5511987654321",
        "+525512345678",
        "+5491123456789",  # Argentina's mobile 9 is in the plan: left as it is
        "+14155550123",
    ],
)
def test_numbers_in_the_plans_form_are_left_alone(number: str) -> None:
    assert provider_number(number, "US") == number


def test_an_impossible_number_in_e164_shape_is_still_kept_from_a_provider_and_refused_from_a_caller() -> None:
    assert provider_number("+5210012345678", "US") == "+5210012345678"
    with pytest.raises(InvalidPhone):
        normalize("+5210012345678")
