"""``/api/v1/assistant-configs/{number}``: how the AI assistant answers on one business number.

``number`` is the conversation's business number: our E.164 number (``+14155238886``, or written any
usual way with a leading ``+``) or Meta's phone_number_id (digits only, used as is). ``PUT`` replaces the
whole config (fields left out take their defaults); ``GET`` answers 404 while none is stored, in which
case the ``ai`` worker uses the deployment's defaults.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingress.api.common import InvalidParam, handle_invalid_params, iso
from ingress.auth import require_api_key
from ingress.errors import api_error
from ingress.json_body import NotAnObject, request_object
from ingress.state import current_settings
from shared.db import assistant_configs
from shared.db.pool import connection, transaction
from shared.logging import get_logger, mask_phone
from shared.phone import InvalidPhone, normalize
from shared.wire.outbound_api import Storable

log = get_logger(__name__)

bp = Blueprint("assistant_configs_api", __name__, url_prefix="/api/v1/assistant-configs")
handle_invalid_params(bp)

_PHONE_NUMBER_ID = re.compile(r"^[0-9]{1,32}$")  # ASCII: \d would take other scripts' digits too


class AssistantConfigBody(BaseModel):
    """A PUT body; strict, so ``"300"`` or ``true`` is not taken for a number, and unknown fields are
    refused rather than silently ignored (a typo such as ``max_token`` would otherwise be lost)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Storable: PostgreSQL text cannot hold U+0000 (a 500 when the row was written), nor UTF-8 a lone
    # surrogate; either is a 422 naming the field.
    system_prompt: Annotated[str, Field(min_length=1, max_length=20_000), Storable]
    model: Annotated[str, Field(min_length=1, max_length=200), Storable] | None = None
    max_tokens: int = Field(default=300, ge=1, le=4096)
    temperature: float = Field(default=0.3, ge=0, le=2)


def _business_number(raw: str) -> str:
    text = raw.strip()
    if _PHONE_NUMBER_ID.match(text):
        return text
    if not text.startswith(("+", "whatsapp:")):
        raise InvalidParam("number", "must be an E.164 number starting with + or a Meta phone_number_id")
    try:
        return normalize(text, current_settings().default_region, strict=False)
    except InvalidPhone as exc:
        raise InvalidParam("number", str(exc)) from None


def _render(config: assistant_configs.AssistantConfig) -> dict[str, Any]:
    return {
        "business_number": config.business_number,
        "system_prompt": config.system_prompt,
        "model": config.model,
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "updated_at": iso(config.updated_at),
    }


@bp.get("/<string:number>")
@require_api_key
def get_config(number: str) -> Response:
    business_number = _business_number(number)
    with connection() as conn:
        config = assistant_configs.get(conn, business_number)
    if config is None:
        return api_error(404, "not_found", "no assistant config for that number")
    return jsonify(_render(config))


@bp.put("/<string:number>")
@require_api_key
def put_config(number: str) -> Response:
    business_number = _business_number(number)
    try:
        data = request_object(request)
    except NotAnObject as exc:
        return api_error(422, "validation_error", f"body: {exc}", field="body")
    try:
        # The parsed body, not the raw bytes: pydantic's JSON parser refuses a lone surrogate (\ud800) as
        # "Invalid JSON" for the whole body, where the Storable check names the field.
        body = AssistantConfigBody.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        return api_error(422, "validation_error", f"{field}: {error['msg']}", field=field)
    with transaction() as conn:
        config = assistant_configs.upsert(conn, business_number, **body.model_dump())
    log.info("assistant config saved", business_number=mask_phone(business_number))
    return jsonify(_render(config))
