"""Any WhatsApp text -> a handler for it, and from the project bot a reply WhatsApp will deliver.

``pick_handler`` (with ``parse_verify``, its VERIFY rule) turns every routed text into the task that
answers it, and ``respond`` is the commands stage's answer: an exception escaping either fails the task and
leaves the user without an answer, and a reply over :data:`REPLY_MAX` (Twilio's limit) is refused for good.
``respond`` runs against the demo data in real PostgreSQL and Redis, as the commands stage does.
"""

from __future__ import annotations

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shared.bot.commands import REPLY_MAX, ChatUser, respond
from shared.bot.matching import best_matches, namesake
from shared.commands.seed_demo import DEMO_USER_ID, seed
from shared.sessions import Sessions
from shared.settings import Mode
from shared.verification import CODE_DIGITS, parse_verify
from tests.unit.fuzz.strategies import FUZZ, hostile_text
from workers.inbound import pick_handler

PHONE = "+15551234567"
HANDLERS = {"verify.check_code", "commands.handle", "ai.parse_proposal", "flows.step", "ai.reply"}
COMMANDS = ["/help", "/start", "/status", "/project", "/projects", "/workspace", "/workspaces", "/list"]
COMMANDS += ["/clear", "/PROJECT", "/", "/nope", "VERIFY", "verify:", ""]
# Controls, right-to-left and zero-width marks, lone combining marks, spaces and digits of every script.
odd_text = st.text(
    st.characters(categories=["Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp", "Nd", "No"]), max_size=40
)
# The words the commands and the demo data know, so that arguments reach the matching (names, #numbers).
WORDS = st.sampled_from(
    ["Demo", "Workspace", "Mobile", "App", "Website", "projects", "tasks", "#", "#2", "1"]
)
word_soup = st.lists(st.one_of(WORDS, odd_text), max_size=12).map(" ".join)
# Up to 10,000 characters (more than any provider delivers): a piece repeated.
long_text = st.tuples(st.one_of(WORDS, odd_text, hostile_text), st.integers(1, 10_000)).map(
    lambda parts: (parts[0] * parts[1])[:10_000]
)
# "<name> #<n>" picks one of several namesakes: any run of any script's digits, up to the text's length.
DIGITS = st.characters(categories=["Nd"])
NAMESAKES = ["Demo", "demo ", "Mobile App", "Sprint 2"]
namesake_picks = st.builds(
    lambda name, digit, count: f"{name} #{digit * count}",
    st.one_of(st.sampled_from(NAMESAKES), word_soup),
    DIGITS,
    st.integers(0, 9_990),
)
arguments = st.one_of(hostile_text, odd_text, word_soup, long_text, namesake_picks)
SEPARATORS = st.sampled_from([" ", "\n", "\t", "\u00a0", "\u200b", "\u200f", "", "  "])
messages = (
    st.builds(
        lambda command, separator, argument: command + separator + argument,
        st.sampled_from(COMMANDS),
        SEPARATORS,
        arguments,
    )
    | hostile_text
    | long_text
)


@FUZZ
@given(text=messages, linked=st.booleans(), mode=st.sampled_from(list(Mode)))
def test_any_text_is_routed_to_a_handler(text: str, linked: bool, mode: Mode) -> None:
    code = parse_verify(text)
    assert code in (None, "") or (len(code) == CODE_DIGITS and code.isascii() and code.isdecimal())
    assert pick_handler(text, linked=linked, mode=mode) in HANDLERS


@pytest.fixture
def demo(clean: None, redis_client: redis.Redis) -> Sessions:
    # Seeded once for all of a test's examples: the selection each command leaves is the next one's start.
    seed(PHONE)
    return Sessions(redis_client, ttl_seconds=1800)


USERS = st.sampled_from(
    [ChatUser(PHONE, DEMO_USER_ID), ChatUser(PHONE, None), ChatUser("BR.1234567890", None, has_phone=False)]
)


@settings(FUZZ, suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.function_scoped_fixture])
@given(text=messages, user=USERS)
@example(text="/project Demo #" + "1" * 4301, user=ChatUser(PHONE, DEMO_USER_ID))
def test_every_reply_fits_in_one_message_whatever_the_text(demo: Sessions, text: str, user: ChatUser) -> None:
    reply = respond(text, user, demo)
    assert 0 < len(reply) <= REPLY_MAX


# Names as workspaces and projects have them, several alike (two "Demo"), so that "#n" has namesakes.
NAMES = st.lists(
    st.one_of(st.sampled_from(["Demo", "demo ", "Mobile App", "Sprint 2"]), hostile_text), max_size=6
)


@FUZZ
@given(query=st.one_of(arguments, namesake_picks), names=NAMES)
@example(query="Demo #" + "0" * 4301, names=[])
def test_any_argument_names_some_of_the_items_or_none(query: str, names: list[str]) -> None:
    picked = namesake(query, names, str)
    assert picked is None or picked in names
    assert set(best_matches(query, names, str)) <= set(names)
