"""Which handler answers an inbound message (INTERFACES.md, "Routing in inbound.route")."""

from __future__ import annotations

import pytest

from shared.settings import Mode
from shared.verification import parse_verify
from workers.inbound import pick_handler


@pytest.mark.parametrize(
    "text",
    [
        "VERIFY 123456",
        "verify 123456",
        "  Verify   123456 ",
        "VERIFY 123 456",
        # What verify reads a code from (shared/verification.py), so these reach it too:
        "verify: 123456",
        "VERIFY 123-456",
        "VERIFY123456",
        "VERIFY ١٢٣٤٥٦",
        "VERIFY １２３４５６",
        # Written naturally, with a full stop or WhatsApp's formatting around it, or in Spanish:
        "VERIFY 123456.",
        "*VERIFY 123456*",
        "_verify 123456_",
        "```VERIFY 123456```",
        "Verificar 123456",
    ],
)
@pytest.mark.parametrize("mode", list(Mode))
def test_verify_codes_go_to_verify_in_every_mode(text: str, mode: Mode) -> None:
    assert pick_handler(text, linked=False, mode=mode) == "verify.check_code"


@pytest.mark.parametrize("text", ["verify me", "please VERIFY 123456", "VERIFY ²²²²²²", "verifying 12345"])
def test_not_quite_a_verify_code_is_not_sent_to_verify(text: str) -> None:
    assert pick_handler(text, linked=True, mode=Mode.project) != "verify.check_code"


@pytest.mark.parametrize(
    "text", ["VERIFY 12345", "verify 1234567", "VERIFY 123 45.", "verify 1", "Verificar 12"]
)
@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("linked", [True, False])
def test_a_verify_with_a_code_of_the_wrong_length_goes_to_verify(text: str, mode: Mode, linked: bool) -> None:
    # The verify stage tells the sender a code has 6 digits. Before, it was free text: a linked user's
    # mistyped code became a proposal titled "VERIFY 12345", or went to the assistant.
    assert pick_handler(text, linked=linked, mode=mode) == "verify.check_code"


@pytest.mark.parametrize(
    "text",
    ["Verificar", "verificar.", "verify", "Verify?", "VERIFY!", "*Verificar*", "verify: -", "VERIFY ²"],
)
@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("linked", [True, False])
def test_the_verify_word_without_a_digit_is_an_ordinary_message(text: str, mode: Mode, linked: bool) -> None:
    # "Verificar" is an everyday Spanish and Portuguese verb: taken for a VERIFY, a menu form's answer or a
    # question to the assistant was lost, answered with "a code has 6 digits".
    assert parse_verify(text) is None
    assert pick_handler(text, linked=linked, mode=mode) != "verify.check_code"


def test_project_mode_commands_and_unlinked_senders_go_to_commands() -> None:
    assert pick_handler("/help", linked=True, mode=Mode.project) == "commands.handle"
    assert pick_handler("need a login page", linked=False, mode=Mode.project) == "commands.handle"
    assert pick_handler("", linked=True, mode=Mode.project) == "commands.handle"


def test_a_command_typed_with_a_full_width_slash_goes_to_commands() -> None:
    # Some keyboards type "／" (U+FF0F); the commands read it as "/", but the router sent it to the
    # proposal parser, which saved "／project mobile" as a proposal.
    assert pick_handler("／project mobile", linked=True, mode=Mode.project) == "commands.handle"


def test_project_mode_free_text_from_a_linked_user_becomes_a_proposal() -> None:
    assert pick_handler("Need a login page by Friday", linked=True, mode=Mode.project) == "ai.parse_proposal"


def test_menu_and_assistant_modes() -> None:
    assert pick_handler("hi", linked=False, mode=Mode.menu) == "flows.step"
    assert pick_handler("/help", linked=True, mode=Mode.menu) == "flows.step"
    assert pick_handler("hello there", linked=False, mode=Mode.assistant) == "ai.reply"
