"""Twilio webhook signatures (``X-Twilio-Signature``), computed exactly as Twilio's SDK does, cheaper.

Twilio signs the URL it requested followed by every POST parameter, keys sorted, each key immediately
followed by its value (a repeated key contributes each distinct value, sorted), HMAC-SHA1 keyed by the
account's auth token, base64-encoded. For JSON bodies the URL carries ``bodySHA256`` (hex SHA-256 of the
raw body) and only the URL is signed.
https://www.twilio.com/docs/usage/webhooks/webhooks-security#validating-signatures-from-twilio

The reference is ``twilio.request_validator.RequestValidator.validate``; :class:`Verifier` gives the same
answer for every input (tests/unit/shared/providers/test_twilio_signature.py compares them on thousands
of random requests), including its quirks:

- the URL is tried both with and without the scheme's default port, since Twilio's own signing is
  inconsistent about it;
- ``X-Twilio-Webhooks-Signature-Settings: algorithm=HMAC_SHA256`` switches the digest; an unknown
  algorithm never validates.

One addition: our webhook URLs carry Twilio's retry overrides as a fragment (:data:`RETRY_FRAGMENT`),
which never reaches the server. Twilio's validators check the URL the server saw, without it; should
Twilio sign the URL as configured, a signature over the URL plus exactly that fragment is accepted too
(a second HMAC, only when the first fails). Any other fragment is not ours and never validates.

What makes it cheaper: the URL is built from ``WAPIPE_PUBLIC_URL`` (never the Host header, so it holds
behind a TLS-terminating proxy) and the HMAC state after absorbing the key and each variant of that base
URL is computed once, so a request only copies two prepared states and feeds them the path and the
parameters; no URL parsing or validator object per request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse

HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"

# Twilio's connection overrides for a webhook, carried in its URL's fragment
# (https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides): by default Twilio retries a
# webhook once, and only when it cannot connect. rc=5 is the most retries allowed; rp asks for them on a
# 5xx (our 503 while the queue is unreachable), a failed connection and a read timeout. Every attempt
# falls within the total time tt, at most and by default 15,000 ms. A retried delivery is deduplicated
# by the ingress (its message or receipt has a dedupe key), so retrying one we may have taken is safe.
RETRY_FRAGMENT = "#rc=5&rp=5xx,ct,rt"

_DIGESTS: dict[str, Callable[..., Any]] = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
_DEFAULT_ALGORITHM = "HMAC_SHA1"

# One form parameter as werkzeug's ``MultiDict.lists()`` yields it: the key and all its values.
ParamLists = Iterable[tuple[str, Sequence[str]]]


def algorithm_from_header(settings_header: str | None) -> str:
    """The algorithm named by ``X-Twilio-Webhooks-Signature-Settings`` (``key=...,algorithm=...``).

    Absent, empty or without ``algorithm=``: the legacy auth-token signature, HMAC-SHA1.
    """
    for part in (settings_header or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return _DEFAULT_ALGORITHM


def url_variants(url: str) -> tuple[str, str]:
    """``url`` without and with its scheme's default port, as the SDK's ``remove_port``/``add_port``."""
    parts = urlparse(url)
    if parts.port:
        without = parts._replace(netloc=parts.netloc.split(":")[0]).geturl()
        return without, parts.geturl()
    port = 443 if parts.scheme == "https" else 80
    return parts.geturl(), parts._replace(netloc=f"{parts.netloc}:{port}").geturl()


def params_string(params: ParamLists | Mapping[str, str | Sequence[str]] | None) -> str:
    """The signed parameter text: keys sorted, each followed by its distinct values, sorted."""
    if not params:
        return ""
    items = params.items() if isinstance(params, Mapping) else params
    pieces: list[str] = []
    for key, values in sorted(_as_lists(items)):
        if len(values) == 1:
            pieces.append(key + values[0])
        else:
            pieces.extend(key + value for value in sorted(set(values)))
    return "".join(pieces)


def _as_lists(items: Iterable[tuple[str, Any]]) -> list[tuple[str, Sequence[str]]]:
    merged: dict[str, list[str]] = {}
    for key, value in items:
        values = [value] if isinstance(value, str) else list(value)
        merged.setdefault(key, []).extend(values)
    return list(merged.items())


def sign(auth_token: str, url: str, params: ParamLists | Mapping[str, Any] | None = None) -> str:
    """The ``X-Twilio-Signature`` Twilio sends for a form POST of ``params`` to ``url``.

    For a JSON body, sign the URL carrying ``?bodySHA256=<body_sha256(body)>`` with no params.
    Used by tests and by ``wapipe chat`` to send correctly signed webhooks.
    """
    mac = hmac.new(auth_token.encode(), (url + params_string(params)).encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Verifier:
    """Checks Twilio signatures for requests to ``public_url`` + path; one per process, thread-safe.

    ``public_url`` is ``WAPIPE_PUBLIC_URL``: the scheme, host and any path prefix Twilio calls (the part
    a reverse proxy strips before the request reaches us). ``auth_tokens``: the account's auth token, and
    during a rotation its secondary; a signature by any of them is valid.
    """

    def __init__(self, auth_tokens: Sequence[str], public_url: str) -> None:
        if isinstance(auth_tokens, str):
            # One token passed bare would be taken as one token per character.
            raise TypeError("auth_tokens is a sequence of tokens, not one token")
        self._prepared: dict[str, tuple[Any, ...]] = {}
        for algorithm, digest in _DIGESTS.items():
            states = []
            for token in auth_tokens:
                for base in url_variants(public_url.rstrip("/")):
                    state = hmac.new(token.encode(), digestmod=digest)
                    state.update(base.encode())
                    states.append(state)
            self._prepared[algorithm] = tuple(states)

    def is_valid_form(
        self,
        path_and_query: str,
        params: ParamLists | Mapping[str, Any] | None,
        signature: str | None,
        settings_header: str | None = None,
    ) -> bool:
        """A form-encoded POST: the URL plus every parameter is signed."""
        return self._check(path_and_query, params_string(params), signature, settings_header)

    def is_valid_body(
        self,
        path_and_query: str,
        query: str,
        body: bytes,
        signature: str | None,
        settings_header: str | None = None,
    ) -> bool:
        """A JSON (or other non-form) POST: the URL is signed and its ``bodySHA256`` covers the body.

        Without ``bodySHA256`` only an empty body can be valid: anything else would be unauthenticated
        (the SDK raises on that input; we refuse it).
        """
        given = parse_qs(query).get("bodySHA256") if "bodySHA256" in query else None
        if given:
            if not hmac.compare_digest(body_sha256(body).encode(), given[0].encode()):
                # Still compute the signature: the answer should not come sooner for a bad body hash.
                self._check(path_and_query, "", signature, settings_header)
                return False
        elif body:
            return False
        return self._check(path_and_query, "", signature, settings_header)

    def _check(
        self, path_and_query: str, params: str, signature: str | None, settings_header: str | None
    ) -> bool:
        """Whether ``signature`` signs the URL (``path_and_query`` after a prepared base) then ``params``,
        with or without our :data:`RETRY_FRAGMENT` after the URL."""
        if not signature:
            return False
        states = self._prepared.get(algorithm_from_header(settings_header))
        if states is None:
            return False
        given = signature.encode()
        if _signs(states, (path_and_query + params).encode(), given):
            return True
        return _signs(states, (path_and_query + RETRY_FRAGMENT + params).encode(), given)


def _signs(states: tuple[Any, ...], suffix: bytes, given: bytes) -> bool:
    """Whether ``given`` is the signature of a prepared state (a token and URL variant) fed ``suffix``."""
    valid = False
    for prepared in states:
        mac = prepared.copy()
        mac.update(suffix)
        # No early exit: every variant (and token) is always computed and compared.
        valid |= hmac.compare_digest(base64.b64encode(mac.digest()), given)
    return valid
