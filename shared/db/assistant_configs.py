"""Assistant configs: per business number, how the AI assistant answers (prompt, model, length, heat).

The ``ai`` worker reads the config of the number a message came in on; the API edits it. The key is the
conversation's ``business_number``: our E.164 number (Twilio) or Meta's phone_number_id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from shared.db.errors import wrap_errors

# temperature is a float4 column: read it back rounded, so 0.7 comes out as 0.7, not 0.699999988.
_GET = """
SELECT business_number, system_prompt, model, max_tokens,
       round(temperature::numeric, 3)::float8 AS temperature, updated_at
FROM assistant_configs WHERE business_number = %(business_number)s
"""
_UPSERT = """
INSERT INTO assistant_configs (business_number, system_prompt, model, max_tokens, temperature)
VALUES (%(business_number)s, %(system_prompt)s, %(model)s, %(max_tokens)s, %(temperature)s)
ON CONFLICT (business_number) DO UPDATE SET
    system_prompt = EXCLUDED.system_prompt, model = EXCLUDED.model, max_tokens = EXCLUDED.max_tokens,
    temperature = EXCLUDED.temperature, updated_at = now()
RETURNING business_number, system_prompt, model, max_tokens,
          round(temperature::numeric, 3)::float8 AS temperature, updated_at
"""


@dataclass(frozen=True)
class AssistantConfig:
    business_number: str
    system_prompt: str
    model: str | None  # None: the deployment's WAPIPE_AI_MODEL
    max_tokens: int
    temperature: float
    updated_at: datetime


def get(conn: psycopg.Connection, business_number: str) -> AssistantConfig | None:
    with wrap_errors():
        row = conn.execute(_GET, {"business_number": business_number}).fetchone()
    return AssistantConfig(**row) if row else None


def upsert(
    conn: psycopg.Connection,
    business_number: str,
    *,
    system_prompt: str,
    model: str | None,
    max_tokens: int,
    temperature: float,
) -> AssistantConfig:
    """Create or replace the number's config (the caller has validated the values)."""
    params = {
        "business_number": business_number,
        "system_prompt": system_prompt,
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    with wrap_errors():
        row = conn.execute(_UPSERT, params).fetchone()
    assert row is not None
    return AssistantConfig(**row)
