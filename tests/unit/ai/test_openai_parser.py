"""The OpenAI-compatible parser against a fake server on 127.0.0.1: the real SDK talks real HTTP."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog

from shared.ai import openai_parser
from shared.ai.openai_parser import OFFLINE, parse_proposal
from shared.settings import Settings, load_settings
from tests.fakes.openai_api import VALID_PROPOSAL, FakeOpenAI

TODAY = dt.date(2026, 1, 27)
TEXT = "Need to add login page and user dashboard by Friday. Should take about 8 hours."


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def _settings(fake: FakeOpenAI, **overrides: object) -> Settings:
    return load_settings(
        **{
            "openai_api_key": "sk-test",
            "openai_base_url": fake.url,
            "ai_model": "kimi-test",
            "ai_timeout_seconds": 5,
            **overrides,
        }
    )


def test_a_valid_answer_is_the_proposal_and_names_the_model(fake: FakeOpenAI) -> None:
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == "kimi-test"
    assert proposal.to_json_dict()["items"][0]["title"] == VALID_PROPOSAL["items"][0]["title"]
    (request,) = fake.completions()
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "kimi-test"
    schema = request.body["response_format"]
    assert schema["type"] == "json_schema"
    assert schema["json_schema"]["strict"] is True
    assert set(schema["json_schema"]["schema"]["required"]) == {
        "summary",
        "items",
        "totalEstimatedHours",
        "confidence",
    }
    system, user = request.body["messages"]
    assert system["role"] == "system"
    assert "2026-01-27" in system["content"]
    assert "Tuesday" in system["content"]
    assert user == {"role": "user", "content": TEXT}


def test_malformed_json_falls_back_to_the_offline_parser(fake: FakeOpenAI) -> None:
    fake.reply('{"summary": "2 items", "items": [')
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == OFFLINE
    assert [i.title for i in proposal.items] == ["Add login page", "Add user dashboard"]
    assert len(fake.completions()) == 1


@pytest.mark.parametrize(
    "fence", ["```json\n{}\n```", "```\n{}\n```", "  ```JSON\n{}```\n", "```json {} ```"]
)
def test_an_answer_in_a_markdown_code_block_is_still_the_models(fake: FakeOpenAI, fence: str) -> None:
    # OpenAI-compatible servers that ignore response_format (OPENAI_BASE_URL) often wrap the JSON so.
    fake.reply(fence.replace("{}", json.dumps(VALID_PROPOSAL)))
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == "kimi-test"
    assert proposal.to_json_dict()["items"][0]["title"] == VALID_PROPOSAL["items"][0]["title"]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("tail", ["", "``"], ids=["unclosed", "half-closed"])
def test_a_code_block_of_whitespace_to_the_token_limit_is_read_at_once(fake: FakeOpenAI, tail: str) -> None:
    # A model in JSON mode may write whitespace until max_tokens; opened as a code block, the block's
    # pattern backtracked over it: 5,000 spaces took 30 s, the model's 4,096 tokens of them many minutes.
    fake.reply("```json\n" + " " * 6_000 + tail + " " * 6_000 + "}")
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == OFFLINE
    assert [i.title for i in proposal.items] == ["Add login page", "Add user dashboard"]


def test_an_answer_outside_the_schema_falls_back_to_offline(fake: FakeOpenAI) -> None:
    bad = dict(
        VALID_PROPOSAL, items=[dict(VALID_PROPOSAL["items"][0], priority="whenever", estimatedHours=-3)]
    )
    fake.reply(json.dumps(bad))
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == OFFLINE
    assert proposal.total_estimated_hours == 8


@pytest.mark.parametrize("retry_after", [0.1, "nan", "-1"], ids=["seconds", "nan", "negative"])
def test_429_then_200_gives_one_proposal_from_the_model(fake: FakeOpenAI, retry_after: float | str) -> None:
    # A Retry-After that is not a number of seconds falls back to the backoff, not into the retry's wait.
    fake.fail(429, retry_after=retry_after)
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == "kimi-test"
    assert len(proposal.items) == 2
    assert [r.status for r in fake.completions()] == [429, 200]


def test_a_spent_quota_is_not_retried(fake: FakeOpenAI) -> None:
    # OpenAI answers 429 for a spent billing quota as for a rate limit; no retry changes it.
    fake.fail(429, retry_after=0, code="insufficient_quota")
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == OFFLINE
    assert proposal.total_estimated_hours == 8
    assert [r.status for r in fake.completions()] == [429]


def test_every_attempt_failing_with_5xx_falls_back_to_offline(fake: FakeOpenAI) -> None:
    for _ in range(3):
        fake.fail(503, retry_after=0)
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == OFFLINE
    assert proposal.total_estimated_hours == 8
    assert [r.status for r in fake.completions()] == [503, 503, 503]


def test_500_is_retried_then_succeeds(fake: FakeOpenAI) -> None:
    fake.fail(500)
    _, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == "kimi-test"
    assert [r.status for r in fake.completions()] == [500, 200]


def test_a_client_error_is_not_retried(fake: FakeOpenAI) -> None:
    fake.fail(401)
    _, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == OFFLINE
    assert len(fake.completions()) == 1


def test_without_a_key_the_offline_parser_answers_and_nothing_is_sent(fake: FakeOpenAI) -> None:
    settings = load_settings(openai_base_url=fake.url, openai_api_key=None, ai=None)
    _, parser = parse_proposal(TEXT, TODAY, settings)
    assert parser == OFFLINE
    assert fake.received == []


def test_wapipe_ai_offline_wins_over_a_key(fake: FakeOpenAI) -> None:
    _, parser = parse_proposal(TEXT, TODAY, _settings(fake, ai="offline"))
    assert parser == OFFLINE
    assert fake.received == []


def test_an_unreachable_server_falls_back_to_offline() -> None:
    with FakeOpenAI() as gone:
        url = gone.url
    settings = load_settings(openai_api_key="sk-test", openai_base_url=url, ai_timeout_seconds=2)
    _, parser = parse_proposal(TEXT, TODAY, settings)
    assert parser == OFFLINE


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"id": "chatcmpl-1", "choices": [{"index": 0, "mess', "application/json"),
        (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    ],
    ids=["cut short", "a proxy's page"],
)
def test_a_200_that_is_not_a_completion_falls_back_to_offline(
    fake: FakeOpenAI, body: bytes, content_type: str
) -> None:
    fake.answer_raw(body, content_type)
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == OFFLINE
    assert [i.title for i in proposal.items] == ["Add login page", "Add user dashboard"]


SECRET_WORDS = "Tell Bob the divorce papers are ready "


@pytest.mark.parametrize(
    ("answer", "logged"),
    [
        # over the title's 120 characters
        (
            dict(VALID_PROPOSAL, items=[dict(VALID_PROPOSAL["items"][0], title=SECRET_WORDS * 10)]),
            "items.0.title: string_too_long",
        ),
        # a model outside strict mode keying an item by its title, here or at the top
        (dict(VALID_PROPOSAL, items=[{SECRET_WORDS: 2}]), "items.0.<key>: extra_forbidden"),
        ({**VALID_PROPOSAL, SECRET_WORDS: {"estimatedHours": 2}}, "<key>: extra_forbidden"),
    ],
    ids=["a value", "an item's key", "a key"],
)
def test_an_answer_outside_the_schema_is_logged_without_the_users_words(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any], logged: str
) -> None:
    fake.reply(json.dumps(answer))
    with structlog.testing.capture_logs() as logs:
        # A logger made inside the capture: the module's own is cached on first use, past capture_logs.
        monkeypatch.setattr(openai_parser, "log", structlog.get_logger(openai_parser.__name__))
        _, parser = parse_proposal(TEXT, TODAY, _settings(fake))

    assert parser == OFFLINE
    [warning] = [entry for entry in logs if entry["event"] == "ai.malformed_answer"]
    assert logged in warning["error"]
    assert "divorce" not in repr(logs)


@pytest.mark.parametrize(
    "message",
    [
        "a plain string",
        {"role": "assistant", "content": [{"type": "text", "text": json.dumps(VALID_PROPOSAL)}]},
        {"role": "assistant", "content": 42},
        {"role": "assistant", "content": "[" * 5000},
        {"role": "assistant", "content": "7" * 5000},  # past Python's 4300 digits for an int
    ],
    ids=[
        "message is a string",
        "content is a list of parts",
        "content is a number",
        "deep nesting",
        "a number too long",
    ],
)
def test_an_answer_of_the_wrong_shape_falls_back_to_offline(fake: FakeOpenAI, message: object) -> None:
    fake.answer_message(message)
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == OFFLINE
    assert [i.title for i in proposal.items] == ["Add login page", "Add user dashboard"]
    assert len(fake.completions()) == 1


NO_CHOICES = [{"choices": []}, {"choices": None}, {}]
NO_CHOICES_IDS = ["empty choices", "null choices", "no choices key"]


@pytest.mark.parametrize("body", NO_CHOICES, ids=NO_CHOICES_IDS)
def test_a_completion_without_choices_falls_back_to_offline(fake: FakeOpenAI, body: dict[str, Any]) -> None:
    # OpenAI-compatible gateways (OPENAI_BASE_URL) answer so when the model produced nothing.
    fake.answer_json({"id": "chatcmpl-none", "object": "chat.completion", **body})
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake))
    assert parser == OFFLINE
    assert [i.title for i in proposal.items] == ["Add login page", "Add user dashboard"]
    assert len(fake.completions()) == 1


def test_the_answer_is_bounded_to_what_the_largest_proposal_needs(fake: FakeOpenAI) -> None:
    # Without max_tokens a model that goes on generating is billed for all of it, past any timeout of ours.
    parse_proposal(TEXT, TODAY, _settings(fake))
    (request,) = fake.completions()
    assert request.body["max_completion_tokens"] == openai_parser.MAX_ANSWER_TOKENS
    assert "max_tokens" not in request.body


def test_a_reasoning_model_is_asked_with_max_completion_tokens(fake: FakeOpenAI) -> None:
    # o-series models refuse max_tokens with a 400 (not retried): every proposal came from the offline parser.
    fake.refuse("max_tokens")
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake, ai_model="o3-mini"))
    assert parser == "o3-mini"
    assert proposal.to_json_dict()["items"][0]["title"] == VALID_PROPOSAL["items"][0]["title"]
    (request,) = fake.completions()
    assert request.body["max_completion_tokens"] == openai_parser.MAX_ANSWER_TOKENS


def _bounds_sent(fake: FakeOpenAI) -> list[tuple[int, str]]:
    """Each request's status and the name its answer bound was sent under."""
    return [
        (request.status, "max_completion_tokens" if "max_completion_tokens" in request.body else "max_tokens")
        for request in fake.completions()
    ]


@pytest.mark.parametrize("status", [400, 422])
def test_a_server_not_knowing_max_completion_tokens_is_asked_with_max_tokens_and_then_never_with_it(
    fake: FakeOpenAI, status: int
) -> None:
    # An older Azure api-version (400) or a pydantic server (422) refused it: every proposal came offline.
    fake.refuse_unknown("max_completion_tokens", status)
    settings = _settings(fake, ai_model=f"gpt-4o-azure-{status}")
    for _ in range(2):
        proposal, parser = parse_proposal(TEXT, TODAY, settings)
        assert parser == f"gpt-4o-azure-{status}"
        assert proposal.to_json_dict()["items"][0]["title"] == VALID_PROPOSAL["items"][0]["title"]
    assert _bounds_sent(fake) == [(status, "max_completion_tokens"), (200, "max_tokens"), (200, "max_tokens")]
    assert fake.completions()[1].body["max_tokens"] == openai_parser.MAX_ANSWER_TOKENS


def test_a_refusal_naming_max_completion_tokens_in_param_is_asked_with_max_tokens(fake: FakeOpenAI) -> None:
    fake.refuse("max_completion_tokens")
    _, parser = parse_proposal(TEXT, TODAY, _settings(fake, ai_model="compatible-param"))
    assert parser == "compatible-param"
    assert _bounds_sent(fake) == [(400, "max_completion_tokens"), (200, "max_tokens")]


def test_a_server_refusing_both_bounds_is_asked_twice_and_not_remembered(fake: FakeOpenAI) -> None:
    # max_tokens refused as well: two requests, the offline parser, and the next call tries the new name.
    fake.refuse_unknown("max_completion_tokens")
    fake.refuse_unknown("max_tokens")
    settings = _settings(fake, ai_model="knows-neither")
    for _ in range(2):
        assert parse_proposal(TEXT, TODAY, settings)[1] == OFFLINE
    assert _bounds_sent(fake) == [(400, "max_completion_tokens"), (400, "max_tokens")] * 2


def test_a_max_completion_tokens_out_of_range_is_not_asked_with_max_tokens(fake: FakeOpenAI) -> None:
    # A bound past what the model allows is the request's fault, under either name.
    fake.refuse("max_completion_tokens", "invalid_value")
    _, parser = parse_proposal(TEXT, TODAY, _settings(fake, ai_model="small-window"))
    assert parser == OFFLINE
    assert _bounds_sent(fake) == [(400, "max_completion_tokens")]


def test_a_400_naming_another_parameter_is_not_asked_with_max_tokens(fake: FakeOpenAI) -> None:
    fake.refuse_unknown("response_format")
    _, parser = parse_proposal(TEXT, TODAY, _settings(fake, ai_model="no-structured-outputs"))
    assert parser == OFFLINE
    assert _bounds_sent(fake) == [(400, "max_completion_tokens")]


@pytest.mark.parametrize("code", ["unsupported_value", "unsupported_parameter"])
def test_a_model_refusing_the_temperature_is_asked_again_without_it_and_then_never_with_it(
    fake: FakeOpenAI, code: str
) -> None:
    # Reasoning models refuse a temperature of 0 (any but their default) with a 400, which is not retried.
    fake.refuse("temperature", code)
    settings = _settings(fake, ai_model=f"o1-{code}")
    for _ in range(2):
        proposal, parser = parse_proposal(TEXT, TODAY, settings)
        assert parser == f"o1-{code}"
        assert proposal.to_json_dict()["items"][0]["title"] == VALID_PROPOSAL["items"][0]["title"]
    sent = [(request.status, "temperature" in request.body) for request in fake.completions()]
    assert sent == [(400, True), (200, False), (200, False)]


def test_a_model_refusing_another_parameter_too_is_asked_twice_then_the_offline_parser_answers(
    fake: FakeOpenAI,
) -> None:
    # Only the temperature is left out on a refusal, once: a model refusing structured outputs as well
    # gets no third request.
    fake.refuse("temperature")
    fake.refuse("response_format")
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake, ai_model="o1-strict"))
    assert parser == OFFLINE
    assert proposal.total_estimated_hours == 8
    sent = [(request.status, "temperature" in request.body) for request in fake.completions()]
    assert sent == [(400, True), (400, False)]


def test_a_400_naming_the_temperature_for_another_reason_is_not_retried(fake: FakeOpenAI) -> None:
    # A temperature out of range (a gateway's own limit) is the caller's to fix, not the model's to refuse.
    fake.refuse("temperature", "invalid_value")
    _, parser = parse_proposal(TEXT, TODAY, _settings(fake, ai_model="kimi-range"))
    assert parser == OFFLINE
    assert [request.status for request in fake.completions()] == [400]


def test_a_read_timeout_is_retried_once_then_the_offline_parser_answers(fake: FakeOpenAI) -> None:
    # A timed-out request may still be generating (and billed) on the server: a third one would pay again.
    asked: list[int] = []

    def too_slow() -> None:
        asked.append(len(asked) + 1)
        time.sleep(1.5)

    fake.while_answering = too_slow
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake, ai_timeout_seconds=0.5))
    assert parser == OFFLINE
    assert proposal.total_estimated_hours == 8
    assert asked == [1, 2]


def test_a_model_call_past_its_overall_budget_gives_way_to_the_offline_parser(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Attempts times WAPIPE_AI_TIMEOUT can outlast the task's soft time limit, and then the user gets the
    # apology, not even the offline answer: each attempt gets only what is left of the budget.
    monkeypatch.setattr(openai_parser, "MODEL_BUDGET_SECONDS", 1.0)
    asked: list[int] = []

    def slower_than_the_budget() -> None:
        asked.append(len(asked) + 1)
        time.sleep(2.5)

    fake.while_answering = slower_than_the_budget
    proposal, parser = parse_proposal(TEXT, TODAY, _settings(fake, ai_timeout_seconds=5))
    assert parser == OFFLINE
    assert proposal.total_estimated_hours == 8
    assert asked == [1]


class _Trickling(BaseHTTPRequestHandler):
    """A server that answers a valid completion one byte at a time: every read gets a byte well within any
    read timeout, so httpx's per-read timeout alone never ends it."""

    protocol_version = "HTTP/1.0"
    seconds_per_byte = 0.05

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        choice = {"index": 0, "message": {"role": "assistant", "content": json.dumps(VALID_PROPOSAL)}}
        body = json.dumps({"id": "chatcmpl-slow", "object": "chat.completion", "choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(self.seconds_per_byte)
        except OSError:
            pass  # the client gave up: what it should do

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_answer_trickling_in_past_the_timeout_is_timed_out() -> None:
    # The body takes half a minute at a byte per 50 ms; a 1 s timeout must end it, not restart with each
    # byte (twice: a timeout is retried once).
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickling)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        host, port = server.server_address[:2]
        settings = load_settings(
            openai_api_key="sk-test", openai_base_url=f"http://{host}:{port}/v1", ai_timeout_seconds=1
        )
        proposal, parser = parse_proposal(TEXT, TODAY, settings)
    finally:
        server.shutdown()
        server.server_close()
    assert parser == OFFLINE
    assert proposal.total_estimated_hours == 8


def test_one_client_per_process_and_settings_so_connections_are_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client per message paid a TLS handshake per model call and left its sockets to the garbage collector.
    from shared.ai import openai_parser

    settings = load_settings(
        ai="openai", openai_api_key="sk-test-key", openai_base_url="http://127.0.0.1:9/v1"
    )
    first = openai_parser.make_client(settings)

    assert openai_parser.make_client(settings) is first
    other = load_settings(ai="openai", openai_api_key="sk-test-key", openai_base_url="http://127.0.0.1:8/v1")
    assert openai_parser.make_client(other) is not first
    monkeypatch.setattr(openai_parser.os, "getpid", lambda: -1)  # as in a forked child
    assert openai_parser.make_client(settings) is not first


def test_an_attempt_gets_at_most_half_of_what_is_left_of_the_budget(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole-answer deadline is checked as bytes arrive: a server going quiet right after a check holds
    # an attempt one more read timeout, so an attempt may take twice its timeout, and that must still fit.
    from shared.ai import openai_parser

    monkeypatch.setattr(openai_parser, "MODEL_BUDGET_SECONDS", 8.0)
    client = openai_parser.make_client(_settings(fake, ai_timeout_seconds=60))
    timeouts: list[float] = []
    create = client.chat.completions.create

    def recording(**request: Any) -> Any:
        timeouts.append(request["timeout"])
        return create(**request)

    monkeypatch.setattr(client.chat.completions, "create", recording)
    fake.fail(503, retry_after=0)

    openai_parser.create_completion(
        client, 60, model="kimi-test", messages=[{"role": "user", "content": "hi"}]
    )

    assert len(timeouts) == 2
    assert timeouts[0] <= 8.0 / 2
    assert timeouts[1] <= 8.0 / 2


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),  # OpenAI sends both; the finer one wins
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after-ms": "-5"}, None),
        ({}, None),
    ],
)
def test_the_wait_a_server_asks_for(headers: dict[str, str], seconds: float | None) -> None:
    assert openai_parser.asked_delay(headers) == seconds
