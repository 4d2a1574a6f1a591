"""Kapso webhook signatures: ``X-Webhook-Signature`` = hex HMAC-SHA256 of the body, keyed by the secret.

Hashed over the raw request bytes as received, never over re-serialised JSON.
https://docs.kapso.ai/docs/platform/webhooks/security
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Webhook-Signature"


def sign(secret: str, body: bytes) -> str:
    """The header value Kapso sends for ``body``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_valid(secret: str | None, body: bytes, header: str | None) -> bool:
    """True when ``header`` is Kapso's signature of ``body``; compared in constant time."""
    if not secret or not header:
        return False
    return hmac.compare_digest(header.strip().lower().encode(), sign(secret, body).encode())
