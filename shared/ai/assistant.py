"""The AI assistant's reply to one inbound message: the chat model with the number's config and the
conversation's history, or the rule-based assistant when there is no model or it keeps failing.

- Config: the ``assistant_configs`` row of the conversation's business number (system prompt, model,
  max_tokens, temperature); without one, :data:`DEFAULT_SYSTEM_PROMPT` and the deployment's
  ``WAPIPE_AI_MODEL`` with the table's defaults.
- Context: the conversation's last :data:`HISTORY_LIMIT` messages, both directions, oldest first, the
  message being answered last; inbound ones are the ``user`` role, our replies the ``assistant`` role
  (https://platform.openai.com/docs/api-reference/chat/create).
- One HTTP call is retried by tenacity on 429 (honouring ``Retry-After``), 5xx, timeouts (once) and
  connection errors, the same policy as the proposal parser (:mod:`shared.ai.openai_parser`), which also
  asks a model that refuses the temperature (a reasoning model) again without it, and a server that does
  not know ``max_completion_tokens`` (an older Azure api-version) again with ``max_tokens``; when every
  attempt fails, or the answer is empty, the rule-based assistant (:mod:`shared.ai.offline_assistant`)
  answers. An answer cut at ``max_tokens`` is sent up to its last whole sentence.
- A request for a person is honoured without asking the model: handing off changes the conversation's
  state, which a model's text cannot do.

:attr:`AssistantReply.source` says what produced the reply: the model's name, or ``offline``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import openai
import psycopg

from shared.ai.clean_text import storable_text
from shared.ai.offline_assistant import Intent, intent_of, offline_reply
from shared.ai.openai_parser import OFFLINE, answer_text, create_completion, first_choice, make_client
from shared.db import assistant_configs, chat_context
from shared.db.messages import InboundRecord
from shared.logging import get_logger
from shared.settings import AIBackend, Settings

log = get_logger(__name__)

HISTORY_LIMIT = 10
# WhatsApp's limit for a text message body (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages).
MAX_REPLY_CHARS = 4096
# What the model reads of each message of the history. A user's message may hold 65,536 characters: a
# few of them whole are past a model's context, and each reply would be refused until they left the
# history. Cut to a WhatsApp text, ten messages and the longest system prompt are about 60,000 characters.
MAX_HISTORY_MESSAGE_CHARS = MAX_REPLY_CHARS
DEFAULT_SYSTEM_PROMPT = (
    "You are the WhatsApp assistant of a business. Answer in the user's language, briefly and kindly: "
    "a few short sentences, plain text, no markdown tables. If you do not know something about the "
    "business, say so rather than guess. If the user wants a human, tell them to send "
    '"talk to a person" ("hablar con una persona" in Spanish).'
)
# A sentence's end: its mark before a space or the end, a CJK one, or a line break.
_SENTENCE_END = re.compile(r"[.!?…](?=\s|$)|[。！？]|\n")
# The assistant_configs columns' defaults (0001_initial.sql), for numbers without a stored config.
DEFAULT_MAX_TOKENS = 300
DEFAULT_TEMPERATURE = 0.3


@dataclass(frozen=True)
class EffectiveConfig:
    """How to answer on one business number: the stored config, or the defaults."""

    system_prompt: str
    model: str
    max_tokens: int
    temperature: float
    stored: bool  # False: the defaults (no assistant_configs row)


@dataclass(frozen=True)
class ModelPrompt:
    """What the model is asked with, read from the database before the call (:func:`model_prompt`)."""

    config: EffectiveConfig
    chat: list[dict[str, str]]


@dataclass(frozen=True)
class AssistantReply:
    text: str
    source: str  # the model's name, or "offline"
    handoff: bool = False  # the user asked for a person: hand the conversation over


def effective_config(conn: psycopg.Connection, business_number: str, settings: Settings) -> EffectiveConfig:
    stored = assistant_configs.get(conn, business_number)
    if stored is None:
        return EffectiveConfig(
            DEFAULT_SYSTEM_PROMPT, settings.ai_model, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, False
        )
    return EffectiveConfig(
        system_prompt=stored.system_prompt,
        model=stored.model or settings.ai_model,
        max_tokens=stored.max_tokens,
        temperature=stored.temperature,
        stored=True,
    )


def history(
    conn: psycopg.Connection, record: InboundRecord, limit: int = HISTORY_LIMIT
) -> list[dict[str, str]]:
    """The chat messages for the model: the conversation's last ``limit`` messages up to ``record``,
    oldest first, as ``{"role": "user" | "assistant", "content": ...}``, each at most
    :data:`MAX_HISTORY_MESSAGE_CHARS` long."""
    chat = []
    for message in chat_context.recent_messages(conn, record.conversation_id, record.id, limit):
        content = (message.body or "").strip()
        if not content:
            if message.direction == "out":
                continue  # nothing we said in words (a reaction, a template without text)
            # A photo or voice note alone: say that one came. A location or a Flow's answers: what they say.
            content = _described(message) or f"[{message.type}]"
        if len(content) > MAX_HISTORY_MESSAGE_CHARS:
            content = content[: MAX_HISTORY_MESSAGE_CHARS - 1] + "…"
        chat.append({"role": "user" if message.direction == "in" else "assistant", "content": content})
    return chat


def _described(message: chat_context.ContextMessage) -> str | None:
    """A location or a submitted Flow in words the model can read; None for another message."""
    if isinstance(message.location, dict):
        return describe_location(message.location)
    if isinstance(message.flow_reply, dict):
        answers = message.flow_reply.get("response")
        if not isinstance(answers, dict):
            return "[form submitted]"
        # flow_token is ours, sent with the Flow to tell its replies apart: nothing the user answered.
        shown = {key: value for key, value in answers.items() if key != "flow_token"}
        return f"[form answers: {json.dumps(shown, ensure_ascii=False)}]"
    return None


def describe_location(location: dict[str, Any]) -> str:
    """``[location: Acme HQ, 1 Main St (40.7128, -74.006)]``: the place's name and address when it has them,
    then its coordinates as the user's phone gave them."""
    place = ", ".join(str(location[key]) for key in ("name", "address") if location.get(key))
    where = f"({location.get('latitude')}, {location.get('longitude')})"
    return f"[location: {place} {where}]" if place else f"[location: {where}]"


def ask_model(
    settings: Settings,
    config: EffectiveConfig,
    chat: list[dict[str, str]],
    client: openai.OpenAI | None = None,
) -> str:
    """The model's answer text; raises the SDK's error when every attempt failed, ``ValueError`` when the
    model answered nothing usable (no text, or an answer of another shape)."""
    client = client or make_client(settings)
    messages: list[dict[str, Any]] = [{"role": "system", "content": config.system_prompt}, *chat]
    completion = create_completion(
        client,
        settings.ai_timeout_seconds,
        model=config.model,
        messages=messages,
        # max_completion_tokens, not max_tokens: o-series models refuse max_tokens with a 400, and the
        # SDK documents it as deprecated (the number's max_tokens setting is the same bound).
        max_completion_tokens=config.max_tokens,
        temperature=config.temperature,
    )
    text = storable_text(answer_text(completion)).strip()
    reason = _finish_reason(completion)
    if reason == "content_filter":
        # The provider stopped the answer part way: a fragment is no reply (the offline one is sent).
        raise ValueError("the provider filtered the model's answer")
    if text and reason == "length":
        text = _whole_sentences(text)
    if not text:
        raise ValueError("the model answered no text")
    return text[:MAX_REPLY_CHARS]


def _finish_reason(completion: Any) -> str | None:
    """Why the model stopped; None when the completion has no choice to say it (called once
    :func:`answer_text` found the completion well formed)."""
    return getattr(first_choice(completion), "finish_reason", None)


def _whole_sentences(cut: str) -> str:
    """A reply the model ran out of tokens in (the number's ``max_tokens``): up to its last whole sentence,
    else what there is with an ellipsis, rather than a message that stops mid-word."""
    ends = list(_SENTENCE_END.finditer(cut))
    if not ends:
        return cut + "…"
    return cut[: ends[-1].end()].rstrip()


def model_prompt(conn: psycopg.Connection, record: InboundRecord, settings: Settings) -> ModelPrompt | None:
    """The number's config and the conversation's history for answering ``record`` (reads on ``conn``),
    or None when the model is not asked (a handoff request, no model configured)."""
    if intent_of(record.body or "") is Intent.handoff:
        return None
    if settings.active_ai != AIBackend.openai or not settings.openai_api_key:
        return None
    return ModelPrompt(effective_config(conn, record.business_number, settings), history(conn, record))


def generate_reply(
    record: InboundRecord,
    settings: Settings,
    prompt: ModelPrompt | None,
    client: openai.OpenAI | None = None,
) -> AssistantReply:
    """The reply to inbound ``record``: the model's, asked with ``prompt``, else the offline one.

    Takes no database connection: the model call can take a minute with its retries, and a transaction
    held open across it would keep a pooled connection and its locks ("idle in transaction") that long.
    Read the prompt with :func:`model_prompt` and end that transaction first.
    """
    text = record.body or ""
    if intent_of(text) is Intent.handoff:
        return AssistantReply(offline_reply(text, record.profile_name).text, OFFLINE, handoff=True)
    if prompt is not None:
        config = prompt.config
        try:
            return AssistantReply(ask_model(settings, config, prompt.chat, client), config.model)
        except openai.OpenAIError as exc:
            log.warning("assistant.model_unavailable", model=config.model, error=type(exc).__name__)
        except ValueError as exc:  # no text, or not text: MalformedAnswer is a ValueError
            log.warning("assistant.unusable_answer", model=config.model, error=str(exc))
    offline = offline_reply(text, record.profile_name)
    return AssistantReply(offline.text, OFFLINE, handoff=offline.handoff)
