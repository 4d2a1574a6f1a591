"""API keys for the REST API called by internal services (``X-API-Key``, from ``WAPIPE_API_KEYS``)."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request

from ingress.errors import api_error

HEADER = "X-API-Key"
KEYS_KEY = "wapipe.api_keys"

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
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(given_digest, key)
        if not matched:
            return api_error(401, "unauthorized", f"invalid {HEADER}")
        return view(*args, **kwargs)

    return checked  # type: ignore[return-value]
