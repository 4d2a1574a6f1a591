"""API keys for the REST API called by internal services (``X-API-Key``, from ``WAPIPE_API_KEYS``).

Each call a key lets through is logged once (``api.request``), and every line logged while it is served
carries ``caller_key``: the key's position in ``WAPIPE_API_KEYS``, 1 for the first. The position and
never the key, nor a hash of it: a short key's hash is as good as the key to whoever reads the log. So
an operator rotating a key sees when its callers have moved to the new one.

Idempotency keys are the caller's own (:func:`caller_scope`): two services holding different keys may both
number their requests "order-1" without one's message standing for the other's.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from flask import Flask, Response, current_app, g, request

from ingress.errors import api_error
from shared.logging import get_logger

HEADER = "X-API-Key"
KEYS_KEY = "wapipe.api_keys"
# Not ``api_key``: the log scrubber drops the value of any field whose name looks like a secret's.
CALLER_FIELD = "caller_key"
# Hex digits of a caller's scope: 64 bits, so a handful of keys never share one. Like any digest of a key
# it lets whoever reads the messages table test guesses at a short key; it is never logged, and API keys
# are long random strings (deploy/README.md).
SCOPE_CHARS = 16

log = get_logger(__name__)

View = TypeVar("View", bound=Callable[..., Any])


def api_keys_from(secrets: list[Any]) -> tuple[bytes, ...]:
    """The configured keys' SHA-256 digests, once per app (``create_app`` stores them).

    Comparing digests rather than the keys themselves makes every comparison the same length, so the
    time it takes says nothing about a key's length either; the app keeps no key in clear.
    """
    return tuple(_digest(secret.get_secret_value()) for secret in secrets)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()


def require_api_key(view: View) -> View:
    """Answer 401 JSON unless the request's ``X-API-Key`` is one of ``WAPIPE_API_KEYS``.

    The given key's digest is compared with every configured key's in constant time, without stopping at
    the first match, so neither timing nor key position reveals anything. With no keys configured every
    call is refused: an API left open by a missing variable would be worse than one that says what to set.
    """

    @functools.wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        keys: tuple[bytes, ...] = current_app.extensions.get(KEYS_KEY, ())
        if not keys:
            return api_error(
                401, "unauthorized", "WAPIPE_API_KEYS is not set: the API refuses every call until it is"
            )
        given = request.headers.get(HEADER, "")
        if not given:
            return api_error(401, "unauthorized", f"missing {HEADER} header")
        given_digest = _digest(given)
        position = 0
        for index, key in enumerate(keys, start=1):
            if hmac.compare_digest(given_digest, key) and not position:
                position = index
        if not position:
            return api_error(401, "unauthorized", f"invalid {HEADER}")
        g.wapipe_caller_key = position
        g.wapipe_caller_scope = _scope(given)
        g.wapipe_caller_tokens = structlog.contextvars.bind_contextvars(**{CALLER_FIELD: position})
        return view(*args, **kwargs)

    return checked  # type: ignore[return-value]


def caller_scope() -> str:
    """A stable short id of the API key this request came with, for names the caller chooses (its
    idempotency keys) to be its own. A digest of the key, not its position in ``WAPIPE_API_KEYS``: the
    scope must outlive a reordering of that list, as a stored key does. Never the key itself, which must
    not reach the database; the scope is not logged either. Only inside a :func:`require_api_key` view."""
    scope: str = g.wapipe_caller_scope
    return scope


def _scope(key: str) -> str:
    # Domain-separated, so the scope is no digest the key is ever compared or stored by elsewhere.
    seed = b"wapipe idempotency scope\x00" + key.encode("utf-8", "replace")
    return hashlib.sha256(seed).hexdigest()[:SCOPE_CHARS]


def register(app: Flask) -> None:
    """Log each call an API key let through, and forget its key when the request ends."""
    app.after_request(_log_call)
    app.teardown_request(_forget_caller)


def _log_call(response: Response) -> Response:
    if g.get("wapipe_caller_key") is not None:
        # The route's rule, not the path: a path may hold a phone number (/api/v1/sessions/<phone>).
        route = request.url_rule.rule if request.url_rule is not None else None
        log.info("api.request", method=request.method, route=route, status=response.status_code)
    return response


def _forget_caller(_exc: BaseException | None) -> None:
    # A server thread serves request after request in one context: left bound, the key would be named
    # on the lines of the next request, a webhook's or another caller's.
    tokens = g.pop("wapipe_caller_tokens", None)
    if tokens is not None:
        structlog.contextvars.reset_contextvars(**tokens)
