"""Meta webhook signatures: ``X-Hub-Signature-256`` = ``sha256=`` + hex HMAC-SHA256 of the body (app secret).

The HMAC is over the raw request bytes exactly as received. Meta escapes non-ASCII characters in the JSON
it signs (``\\u00e9``), so parsing and re-serialising the body would change the bytes and break the check.
https://developers.facebook.com/docs/graph-api/webhooks/getting-started#validate-payloads
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The header value Meta sends for ``body`` (what tests and local tools use to sign)."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_valid(secret: str | None, body: bytes, header: str | None) -> bool:
    """True when ``header`` is Meta's signature of ``body``; compared in constant time.

    A missing secret never validates: an unconfigured deployment must not accept unsigned webhooks.
    """
    if not secret or not header:
        return False
    given = header.strip()
    if given[: len(_PREFIX)].lower() != _PREFIX:
        return False
    expected = sign(secret, body)
    return hmac.compare_digest((_PREFIX + given[len(_PREFIX) :].lower()).encode(), expected.encode())
