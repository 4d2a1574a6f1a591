"""The checks every HMAC-signed JSON webhook (Meta, Kapso) makes before it reads a byte of the body."""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, request
from pydantic import SecretStr

from ingress.errors import api_error
from ingress.metrics import SIGNATURE_FAILURES, WEBHOOKS
from ingress.state import current_settings
from shared.logging import get_logger

log = get_logger(__name__)


def signature_refusal(
    provider: str,
    raw: bytes,
    secret: SecretStr | None,
    variable: str,
    header: str,
    is_valid: Callable[[str, bytes, str], bool],
) -> Response | None:
    """A 403 (counted) when the request's ``header`` is missing or is not the HMAC of ``raw`` with the
    secret that the environment ``variable`` holds; None when the signature is right or the explicit
    ``WAPIPE_INSECURE_SKIP_SIGNATURES`` is on."""
    if current_settings().insecure_skip_signatures:
        return None
    refusal = _refusal(provider, raw, secret, variable, header, is_valid)
    if refusal is not None:
        SIGNATURE_FAILURES.labels(provider).inc()
        WEBHOOKS.labels(provider, "unknown", "forbidden").inc()
    return refusal


def _refusal(
    provider: str,
    raw: bytes,
    secret: SecretStr | None,
    variable: str,
    header: str,
    is_valid: Callable[[str, bytes, str], bool],
) -> Response | None:
    if secret is None:
        return api_error(
            403, "signature_unverifiable", f"{variable} is not set: signatures cannot be verified"
        )
    value = request.headers.get(header)
    if not value:
        return api_error(403, "signature_missing", f"missing {header} header")
    if not is_valid(secret.get_secret_value(), raw, value):
        log.warning(f"{provider}.signature_invalid")
        return api_error(403, "signature_invalid", f"{header} does not match this request")
    return None


def malformed(provider: str, code: str, message: str) -> Response:
    """A 400 for a correctly signed body that is not a webhook of ``provider``'s, counted."""
    WEBHOOKS.labels(provider, "unknown", "malformed").inc()
    log.info(f"{provider}.malformed_webhook", reason=message)
    return api_error(400, code, message)
