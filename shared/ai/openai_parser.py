"""Proposals from an OpenAI-compatible model (OpenAI, Kimi, a local server), with the offline parser as
the net under it.

The model answers through structured outputs (``response_format`` = strict JSON schema, see
https://platform.openai.com/docs/guides/structured-outputs) and the answer is validated again by pydantic.
One HTTP call is retried by tenacity on 429 (honouring ``Retry-After``), 5xx, timeouts (once) and
connection errors; the SDK's own retries are off so there is exactly one retry policy. When every attempt
fails, or the answer is not valid JSON of the schema, the offline parser answers and the parser name says
so.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx2
import openai
from pydantic import ValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from shared.ai.offline import parse_offline
from shared.ai.proposal import Proposal, ProposalItem, json_schema_for_model
from shared.logging import get_logger
from shared.providers.base import retry_after_seconds
from shared.settings import AIBackend, Settings

log = get_logger(__name__)

OFFLINE = "offline"
MAX_ATTEMPTS = 3
# A timed-out request may still be generating on the server, and is billed as it goes on: a read timeout
# is retried once, not until MAX_ATTEMPTS.
MAX_TIMEOUTS = 2
MAX_RETRY_AFTER_SECONDS = 30.0
# One model call with its retries and waits, overall: well under the ai tasks' soft time limit (270 s,
# shared/queues.py), which must leave time for the offline answer and its storing. Each attempt's timeout
# is half what is left of it, at most WAPIPE_AI_TIMEOUT; no attempt starts with less than MIN_ATTEMPT_SECONDS.
MODEL_BUDGET_SECONDS = 120.0
MIN_ATTEMPT_SECONDS = 1.0
# The longest answer a proposal needs: MAX_ITEMS items, each a title up to MAX_TITLE characters, the one
# sentence of description the rules ask for and the other keys (about 450 characters of JSON, 110 to 230
# tokens as the language goes), and the summary. An answer cut there is not JSON and the offline parser
# answers; without the bound a model that runs on is billed for every token, past any timeout of ours.
MAX_ANSWER_TOKENS = 4096
_NO_CONTENT = object()
_backoff = wait_exponential_jitter(multiplier=0.5, max=8, jitter=0.5)

RULES = """\
Turn the user's message into a project proposal. Reply with JSON only, matching the schema.
Items: one per work item; items are separated by "and"/"y", commas, semicolons, new lines, bullets or
numbered lines. A shared verb distributes ("add login page and user dashboard" = "Add login page",
"Add user dashboard"). Words about time, effort or priority are not items. Titles are short, start with a
capital letter and keep the item's own words, in the user's language.
estimatedHours: minutes/min/minutos, hours/h/hrs/horas, days/días of work = 8 hours each, half a day /
medio día = 4. Ignore hedges (about, around, ~, unas, aproximadamente). An amount in brackets or right
after an item is that item's; "N each"/"N cada uno" gives every item N; a total ("should take 8 hours",
"6 hours total", "en total") with no per-item amounts is split evenly. null when not stated.
totalEstimatedHours: the sum when every item has hours, otherwise null.
dueDate (YYYY-MM-DD, relative to today): today/hoy; tomorrow/mañana = +1; "in N days"/"en N días" = +N;
a weekday (with or without by/on/next/para el/el/Deadline:) is its next occurrence strictly after today;
end of month/fin de mes = the month's last day; "Dec 15"/"15 de diciembre" = this year, or next year if
passed. A date attached to one item is that item's; a date for the whole message applies to every item
without its own. null when not stated.
priority: high for urgent/urgente/ASAP/critical/crítico/high priority/prioridad alta/lo antes posible;
low for low priority/baja prioridad/no rush/sin prisa/when you can/cuando puedas; otherwise medium. A
message-level priority applies to every item.
type: task, bug, feature, meeting, research or docs. description: one sentence of context.
summary: e.g. "2 items, 8h total, due 2026-01-30". confidence: 0 to 1, how sure you are.
"""


class MalformedAnswer(ValueError):
    """The model answered, but not with JSON that fits the proposal schema, or not with text at all."""


def system_prompt(today: dt.date) -> str:
    """The instructions: today's date (weekday included, for relative dates) and the parsing rules."""
    return f"Today is {today.strftime('%A')} {today.isoformat()}.\n{RULES}"


def response_format() -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "proposal", "strict": True, "schema": json_schema_for_model()},
    }


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.RateLimitError):
        # OpenAI answers 429 for a spent billing quota too: no retry changes that, the offline answer now.
        return exc.code != "insufficient_quota"
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def _wait(state: RetryCallState) -> float:
    """Retry-After when the server sent one (429/503), else exponential backoff with jitter."""
    exc = state.outcome.exception() if state.outcome else None
    response = getattr(exc, "response", None)
    asked = asked_delay(response.headers) if response is not None else None
    if asked is not None:
        return min(asked, MAX_RETRY_AFTER_SECONDS)
    return _backoff(state)  # none, or not a number of seconds (an HTTP date, NaN): our own backoff


def asked_delay(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: OpenAI's ``retry-after-ms`` (finer, and the one its own SDK
    reads first), else ``Retry-After``; None when neither is a usable number."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            seconds = float(millis) / 1000
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return retry_after_seconds(headers.get("retry-after"))


class _StopAfterTimeouts:
    """A tenacity stop: after :data:`MAX_TIMEOUTS` timed-out attempts of one call."""

    def __init__(self) -> None:
        self.timeouts = 0

    def __call__(self, state: RetryCallState) -> bool:
        if state.outcome is not None and isinstance(state.outcome.exception(), openai.APITimeoutError):
            self.timeouts += 1
        return self.timeouts >= MAX_TIMEOUTS


# Parameters a model may do without: a reasoning model refuses any temperature but its default
# (https://platform.openai.com/docs/guides/reasoning), and answers at its default when none is sent.
OPTIONAL_PARAMETERS = frozenset({"temperature"})
# The codes of OpenAI's 400 for a parameter the model does not take, the parameter named in ``param``
# (https://platform.openai.com/docs/guides/error-codes); another code (invalid_value: out of range) is the
# request's fault, which asking again without it would hide.
_REFUSAL_CODES = frozenset({"unsupported_value", "unsupported_parameter"})
# A parameter some OpenAI-compatible servers do not know, and the older name they take it by: older Azure
# api-versions answer max_completion_tokens with a 400, pydantic servers with a 422, where max_tokens is the
# same bound (https://platform.openai.com/docs/api-reference/chat/create).
RENAMED_PARAMETERS = {"max_completion_tokens": "max_tokens"}
_NOT_KNOWN_STATUSES = frozenset({400, 422})
# (base URL, model) and a parameter it refused, for this process: a set's add and lookup are atomic, and
# it grows only by the models configured that refuse one.
_refused_parameters: set[tuple[tuple[str, str], str]] = set()


def _refused_parameter(exc: openai.APIStatusError, request: Mapping[str, Any]) -> str | None:
    """The parameter of :data:`OPTIONAL_PARAMETERS` or :data:`RENAMED_PARAMETERS` that ``exc`` says the
    model does not take, if it is one ``request`` sent; None for any other error."""
    if (
        isinstance(exc, openai.BadRequestError)
        and exc.code in _REFUSAL_CODES
        and exc.param in OPTIONAL_PARAMETERS
    ):
        return exc.param if exc.param in request else None
    if exc.status_code not in _NOT_KNOWN_STATUSES:
        return None
    return next((name for name in RENAMED_PARAMETERS if name in request and _names(exc, name)), None)


def _names(exc: openai.APIStatusError, parameter: str) -> bool:
    """Whether ``exc``'s error is about ``parameter``: its ``param`` (OpenAI's shape, with a refusal's code
    or none), else, when it has none, its message (Azure's "Unrecognized request argument supplied: ...")
    or a pydantic error's ``loc`` (a 422's ``detail``). Another field that names it (the request echoed
    back) does not count."""
    error = exc.body if isinstance(exc.body, Mapping) else {}
    if error.get("param") is not None:
        return error["param"] == parameter and (exc.code is None or exc.code in _REFUSAL_CODES)
    message = error.get("message")
    if isinstance(message, str):
        return re.search(rf"\b{re.escape(parameter)}\b", message) is not None
    details = error.get("detail")
    if not isinstance(details, list):
        return False
    return any(
        isinstance(detail, Mapping)
        and isinstance(detail.get("loc"), list)
        and detail["loc"][-1:] == [parameter]
        for detail in details
    )


def _as_served(served: tuple[str, str], request: Mapping[str, Any]) -> dict[str, Any]:
    """``request`` without the parameters this model refused, the renamed ones under their older name."""
    sent: dict[str, Any] = {}
    for name, value in request.items():
        if (served, name) not in _refused_parameters:
            sent[name] = value
        elif name in RENAMED_PARAMETERS:
            sent[RENAMED_PARAMETERS[name]] = value
    return sent


def create_completion(client: openai.OpenAI, timeout_seconds: float, **request: Any) -> Any:
    """One chat completion (``request`` as ``chat.completions.create`` takes it) under the one retry
    policy: 429 honouring ``Retry-After``, 5xx, timeouts (once) and connection errors, at most
    :data:`MAX_ATTEMPTS` attempts within :data:`MODEL_BUDGET_SECONDS`, each attempt's timeout
    ``timeout_seconds`` or half what is left of the budget. Raises the SDK's error when every attempt
    failed.

    A parameter of :data:`OPTIONAL_PARAMETERS` the model refuses (a reasoning model's 400 for a
    temperature) is left out, for this call, asked again once within the same budget, and for the model's
    later calls in this process, so each model pays for the refusal once. One of
    :data:`RENAMED_PARAMETERS` a server does not know is sent under its older name the same way, and
    remembered only once the older name was taken. One such refusal per call: the refusal comes before
    any answer, so at most two requests and never a reply twice."""
    started = time.monotonic()
    served = (str(client.base_url), str(request.get("model")))
    sent = _as_served(served, request)
    try:
        return _attempts(client, timeout_seconds, started, sent)
    except openai.APIStatusError as exc:
        refused = _refused_parameter(exc, sent)
        if refused is None:
            raise
        log.info("ai.parameter_refused", model=request.get("model"), parameter=refused, code=exc.code)
        value = sent.pop(refused)
        if refused not in RENAMED_PARAMETERS:
            _refused_parameters.add((served, refused))
            return _attempts(client, timeout_seconds, started, sent)
        sent[RENAMED_PARAMETERS[refused]] = value
        # Remembered only when taken: a server refusing the older name too tries the newer one next time.
        completion = _attempts(client, timeout_seconds, started, sent)
        _refused_parameters.add((served, refused))
        return completion


def _attempts(client: openai.OpenAI, timeout_seconds: float, started: float, request: dict[str, Any]) -> Any:
    """``request``'s attempts under the retry policy, within what is left of the budget since ``started``."""
    budget = MODEL_BUDGET_SECONDS - (time.monotonic() - started)
    retrying = Retrying(
        retry=retry_if_exception(_retryable),
        wait=_wait,
        # stop_before_delay counts the coming wait: no sleeping into the budget only to give up after.
        stop=(
            stop_after_attempt(MAX_ATTEMPTS)
            | _StopAfterTimeouts()
            | stop_before_delay(max(budget - MIN_ATTEMPT_SECONDS, 0))
        ),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            left = budget - (time.monotonic() - attempt.retry_state.start_time)
            # Half of what is left: the whole-answer deadline is checked as bytes arrive, so a server going
            # quiet just after a check holds the attempt one more read timeout, twice this in all.
            timeout = min(timeout_seconds, max(left / 2, MIN_ATTEMPT_SECONDS))
            completion = client.chat.completions.create(**request, timeout=timeout)
    return completion


class _AnswerDeadline(httpx2.BaseTransport):
    """The request's read timeout as a deadline for its whole answer, on the SDK's HTTP client (httpx2,
    https://github.com/openai/openai-python/tree/main/httpx2.md). Its read timeout is per read, so
    a server that sends a byte now and then (a proxy's keep-alive, a slow generation) never trips it, and
    an attempt could outlast the model call's budget and the task's time limit."""

    def __init__(self, inner: httpx2.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        read_timeout = request.extensions.get("timeout", {}).get("read")
        deadline = time.monotonic() + read_timeout if read_timeout is not None else None
        response = self._inner.handle_request(request)
        if deadline is None:
            return response
        if time.monotonic() > deadline:
            response.close()
            raise httpx2.ReadTimeout("no whole answer within the read timeout", request=request)
        response.stream = _DeadlineStream(response.stream, deadline, request)
        return response

    def close(self) -> None:
        self._inner.close()


class _DeadlineStream(httpx2.SyncByteStream):
    def __init__(self, inner: Any, deadline: float, request: httpx2.Request) -> None:
        self._inner, self._deadline, self._request = inner, deadline, request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if time.monotonic() > self._deadline:
                raise httpx2.ReadTimeout("no whole answer within the read timeout", request=self._request)
            yield chunk

    def close(self) -> None:
        self._inner.close()


def make_client(settings: Settings) -> openai.OpenAI:
    """The process's client for these settings. One per process, not per message: its pooled connections
    (and their TLS handshakes) carry over from one model call to the next, where a client per message
    paid a new handshake each time and left its sockets for the garbage collector. Made again in a forked
    child, which must not share its parent's sockets; thread-safe, as the SDK's client is."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return _process_client(os.getpid(), key, settings.openai_base_url, settings.ai_timeout_seconds)


@functools.lru_cache(maxsize=8)
def _process_client(pid: int, key: str, base_url: str | None, timeout: float) -> openai.OpenAI:
    transport = _AnswerDeadline(httpx2.HTTPTransport())
    return openai.OpenAI(
        api_key=key,
        base_url=base_url,
        timeout=timeout,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(transport=transport),
    )


def first_choice(completion: Any) -> Any | None:
    """The first choice of a chat completion; None when it has none: ``choices`` empty, null or missing,
    as OpenAI-compatible gateways answer when the model produced nothing. A 200 whose body is not a
    completion (a proxy's error page: the SDK then hands back its text) raises :class:`MalformedAnswer`,
    as a body that is not JSON at all raises ``ValueError`` in the SDK, so the callers fall back as for any
    unusable answer."""
    try:
        choices = completion.choices
        return choices[0] if choices else None
    except (AttributeError, TypeError, IndexError, KeyError) as exc:
        raise MalformedAnswer(f"not a chat completion ({type(exc).__name__})") from None


def first_message(completion: Any) -> Any | None:
    """The first choice's message of a chat completion; None when it has none (see :func:`first_choice`)."""
    choice = first_choice(completion)
    if choice is None:
        return None
    try:
        return choice.message
    except AttributeError as exc:
        raise MalformedAnswer(f"not a chat completion ({type(exc).__name__})") from None


def answer_text(completion: Any) -> str:
    """The text of the completion's first message ("" when it has none); raises :class:`MalformedAnswer`
    for a refusal or a message of another shape. The SDK builds its models without validating them, so an
    OpenAI-compatible server's message that is a string, or content that is a list of parts or a number,
    arrives as it was sent and must be checked here, not trusted."""
    message = first_message(completion)
    if message is None:
        return ""
    if getattr(message, "refusal", None):
        raise MalformedAnswer("a refusal")
    content = getattr(message, "content", _NO_CONTENT)
    if content is _NO_CONTENT:
        raise MalformedAnswer(f"the message is a {type(message).__name__}, not a message")
    if content is not None and not isinstance(content, str):
        raise MalformedAnswer(f"the content is a {type(content).__name__}, not text")
    return content or ""


# The keys of the proposal's schema, as the model writes them and as pydantic names them.
_SCHEMA_KEYS = frozenset(
    key
    for model in (Proposal, ProposalItem)
    for name, field in model.model_fields.items()
    for key in (name, field.alias)
    if key
)


def _where(loc: tuple[int | str, ...]) -> str:
    """Where in the answer an error is, as ``items.0.title``, with every key the schema does not know shown
    as ``<key>``: a model outside strict mode may key an item by its title, the user's own words."""
    return ".".join(str(part) if isinstance(part, int) or part in _SCHEMA_KEYS else "<key>" for part in loc)


_FENCE = "```"


def _unfenced(content: str) -> str:
    """The text of a whole answer inside a Markdown code block, as OpenAI-compatible servers that ignore
    response_format (OPENAI_BASE_URL) tend to write JSON; any other answer as it is. Plain string work: a
    pattern backtracked for minutes over the whitespace a model in JSON mode may write up to its
    max_tokens."""
    stripped = content.strip()
    if len(stripped) < 2 * len(_FENCE) or not (stripped.startswith(_FENCE) and stripped.endswith(_FENCE)):
        return content
    inside = stripped[len(_FENCE) : -len(_FENCE)]
    if inside[:4].casefold() == "json":
        inside = inside[4:]
    return inside.strip()


def _validated(content: str) -> Proposal:
    if not content:
        raise MalformedAnswer("empty answer")
    content = _unfenced(content)
    try:
        return Proposal.model_validate(json.loads(content))
    except json.JSONDecodeError as exc:
        raise MalformedAnswer(f"not JSON: {exc.msg} at {exc.pos}") from exc
    except ValidationError as exc:
        # Where and what kind, never the values: they are the user's own words, which logs do not keep.
        problems = "; ".join(f"{_where(e['loc']) or 'answer'}: {e['type']}" for e in exc.errors())
        raise MalformedAnswer(f"outside the schema: {problems}"[:300]) from exc
    except TypeError as exc:
        raise MalformedAnswer(f"not a proposal ({type(exc).__name__})") from exc
    except RecursionError as exc:  # "[[[[..." thousands deep: json's decoder recurses once per level
        raise MalformedAnswer("nested too deeply") from exc
    except ValueError as exc:  # an integer past Python's 4300 digits, which json.loads refuses
        raise MalformedAnswer(f"not JSON we read ({type(exc).__name__})") from exc


def parse_with_model(
    text: str, today: dt.date, settings: Settings, client: openai.OpenAI | None = None
) -> Proposal:
    """Ask the model; raise the SDK's error when every attempt failed, :class:`MalformedAnswer` on a bad
    answer (not retried: the same prompt tends to give the same answer, and the offline parser is ready)."""
    client = client or make_client(settings)
    try:
        completion = create_completion(
            client,
            settings.ai_timeout_seconds,
            model=settings.ai_model,
            messages=[
                {"role": "system", "content": system_prompt(today)},
                {"role": "user", "content": text},
            ],
            response_format=response_format(),
            temperature=0,
            # Not max_tokens, which o-series models refuse with a 400 and the SDK documents as deprecated.
            max_completion_tokens=MAX_ANSWER_TOKENS,
        )
    except ValueError as exc:  # a 200 whose body is not JSON: the SDK's json.loads failed
        raise MalformedAnswer("not JSON") from exc
    return _validated(answer_text(completion))


def parse_proposal(
    text: str, today: dt.date, settings: Settings, client: openai.OpenAI | None = None
) -> tuple[Proposal, str]:
    """The proposal and the name of what made it: the model's name, or ``offline``.

    Raises :class:`shared.ai.proposal.ProposalError` only when the offline parser finds no work item.
    """
    if settings.active_ai == AIBackend.openai and settings.openai_api_key:
        try:
            return parse_with_model(text, today, settings, client), settings.ai_model
        except MalformedAnswer as exc:
            log.warning("ai.malformed_answer", model=settings.ai_model, error=str(exc))
        except openai.OpenAIError as exc:
            log.warning("ai.model_unavailable", model=settings.ai_model, error=type(exc).__name__)
    return parse_offline(text, today), OFFLINE
