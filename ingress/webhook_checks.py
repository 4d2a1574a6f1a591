"""The checks every HMAC-signed JSON webhook (Meta, Kapso) makes before it reads the body as an event."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flask import Response, request

from ingress.errors import api_error
from ingress.metrics import SIGNATURE_FAILURES, WEBHOOKS
from ingress.state import current_settings
from shared.logging import get_logger

log = get_logger(__name__)


def signature_refusal(
    provider: str,
    secrets: Sequence[str],
    variable: str,
    header: str,
    is_valid: Callable[[str, bytes, str], bool],
) -> Response | None:
    """A 403 (counted) when the request's ``header`` is missing or is not the HMAC of its raw body with one
    of ``secrets``: the one the environment ``variable`` holds, and its secondary during a rotation
    (:meth:`Settings.signing_secrets`). None when the signature is right or the explicit
    ``WAPIPE_INSECURE_SKIP_SIGNATURES`` is on.

    The body is read (and cached, for the caller's ``request.get_data(cache=True)``) only once there is a
    header and a secret to check it with: a request that cannot be signed costs nothing but its headers,
    not the read of up to ``WAPIPE_MAX_BODY_BYTES``."""
    if current_settings().insecure_skip_signatures:
        return None
    refusal = unsigned_refusal(bool(secrets), variable, header) or _mismatch_refusal(
        provider, secrets, header, is_valid
    )
    if refusal is not None:
        SIGNATURE_FAILURES.labels(provider).inc()
        WEBHOOKS.labels(provider, "unknown", "forbidden").inc()
    return refusal


def unsigned_refusal(verifiable: bool, variable: str, header: str) -> Response | None:
    """The 403 (not counted) for a request with no ``header``, or that nothing can check (``verifiable``
    false: the environment ``variable`` is not set); None otherwise. Every webhook makes these checks
    before it reads its body."""
    if not verifiable:
        return api_error(
            403, "signature_unverifiable", f"{variable} is not set: signatures cannot be verified"
        )
    if not request.headers.get(header):
        return api_error(403, "signature_missing", f"missing {header} header")
    return None


def _mismatch_refusal(
    provider: str, secrets: Sequence[str], header: str, is_valid: Callable[[str, bytes, str], bool]
) -> Response | None:
    raw = request.get_data(cache=True)
    value = request.headers[header]
    if not any(is_valid(secret, raw, value) for secret in secrets):
        log.warning(f"{provider}.signature_invalid")
        return api_error(403, "signature_invalid", f"{header} does not match this request")
    return None


def malformed(provider: str, code: str, message: str) -> Response:
    """A 400 for a correctly signed body that is not a webhook of ``provider``'s, counted."""
    WEBHOOKS.labels(provider, "unknown", "malformed").inc()
    log.info(f"{provider}.malformed_webhook", reason=message)
    return api_error(400, code, message)
