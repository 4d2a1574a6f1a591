"""Meta and Kapso webhook signatures are HMAC-SHA256 over the raw bytes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from shared.providers.kapso import signature as kapso_signature
from shared.providers.meta import signature as meta_signature

DATA = Path(__file__).resolve().parents[2] / "data"
SECRET = "app-secret-for-tests"


def test_meta_signature_matches_metas_scheme() -> None:
    body = (DATA / "meta" / "text.json").read_bytes()
    header = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert meta_signature.sign(SECRET, body) == header
    assert meta_signature.is_valid(SECRET, body, header)
    assert meta_signature.is_valid(SECRET, body, header.upper().replace("SHA256=", "sha256="))


def test_meta_signature_is_over_the_raw_escaped_bytes() -> None:
    raw = (DATA / "meta" / "text.json").read_bytes()
    assert b"\\u00e9" in raw  # Meta escapes non-ASCII in what it signs
    header = meta_signature.sign(SECRET, raw)
    reserialised = json.dumps(json.loads(raw), ensure_ascii=False).encode()
    assert not meta_signature.is_valid(SECRET, reserialised, header)
    assert meta_signature.is_valid(SECRET, raw, header)


@pytest.mark.parametrize(
    "header",
    [None, "", "sha256=", "sha256=deadbeef", "sha1=" + "0" * 40, "sha256=é" * 3],
)
def test_meta_forged_or_missing_signatures_fail(header: str | None) -> None:
    assert not meta_signature.is_valid(SECRET, b"{}", header)


def test_meta_signature_with_another_secret_or_none_fails() -> None:
    body = b'{"entry":[]}'
    assert not meta_signature.is_valid("other", body, meta_signature.sign(SECRET, body))
    assert not meta_signature.is_valid(None, body, meta_signature.sign(SECRET, body))
    assert not meta_signature.is_valid(SECRET, body + b" ", meta_signature.sign(SECRET, body))


def test_kapso_signature_is_plain_hex() -> None:
    body = (DATA / "kapso" / "batch_received.json").read_bytes()
    header = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert kapso_signature.sign(SECRET, body) == header
    assert kapso_signature.is_valid(SECRET, body, header)
    assert not kapso_signature.is_valid(SECRET, body, "sha256=" + header)
    assert not kapso_signature.is_valid(SECRET, body + b"\n", header)
    assert not kapso_signature.is_valid(None, body, header)
    assert not kapso_signature.is_valid(SECRET, body, None)
    assert not kapso_signature.is_valid(SECRET, body, "ñ" * 64)
