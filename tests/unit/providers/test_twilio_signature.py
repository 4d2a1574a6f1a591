"""Our Twilio signature check must answer exactly as the SDK's RequestValidator on every input."""

from __future__ import annotations

import json
import random
import string

import pytest
from twilio.request_validator import RequestValidator, get_signature_algorithm
from werkzeug.datastructures import MultiDict

from shared.providers.twilio.signature import (
    Verifier,
    algorithm_from_header,
    body_sha256,
    sign,
    url_variants,
)

TOKEN = "12345678901234567890123456789012"
BASES = [
    "https://example.com",
    "https://example.com:443",
    "https://example.com:8443",
    "http://127.0.0.1:8000",
    "http://localhost",
    "http://localhost:80",
    "https://hooks.example.org/wapipe",
    "https://hooks.example.org:9000/prefix/deeper",
]
ALPHABET = string.ascii_letters + string.digits + " +-_.:/=&%?é漢😀\u00a0"


def _text(rng: random.Random, max_len: int = 12) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len)))


def _query(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return ""
    safe = string.ascii_letters + string.digits + "=&%+-_.~"
    return "".join(rng.choice(safe) for _ in range(rng.randint(1, 20)))


def _form(rng: random.Random) -> MultiDict:
    keys = ["Body", "From", "To", "MessageSid", "NumMedia", "a", "A", "b", "é", "MediaUrl0", "MediaUrl10"]
    pairs = []
    for _ in range(rng.randint(0, 10)):
        key = rng.choice(keys) if rng.random() < 0.8 else _text(rng, 5)
        pairs.append((key, _text(rng)))
        if rng.random() < 0.2:  # repeated key, sometimes with the same value twice
            pairs.append((key, rng.choice([pairs[-1][1], _text(rng)])))
    return MultiDict(pairs)


def _signature(rng: random.Random, url: str, params: object, token: str) -> str:
    """A signature that is right for one URL variant, or wrong in a random way."""
    roll = rng.random()
    without, with_port = url_variants(url)
    if roll < 0.35:
        return RequestValidator(token).compute_signature(without, params)
    if roll < 0.7:
        return RequestValidator(token).compute_signature(with_port, params)
    if roll < 0.8:
        return RequestValidator("another-token").compute_signature(url, params)
    if roll < 0.9:
        good = RequestValidator(token).compute_signature(url, params)
        return good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    return _text(rng, 30)


@pytest.mark.parametrize("seed", range(4))
def test_form_signatures_match_request_validator(seed: int) -> None:
    rng = random.Random(seed)
    sdk = RequestValidator(TOKEN)
    verifiers = {base: Verifier([TOKEN], base) for base in BASES}
    agreed_valid = 0
    for _ in range(1500):
        base = rng.choice(BASES)
        query = _query(rng)
        path_and_query = "/webhooks/twilio" + (f"?{query}" if query else "")
        url = base + path_and_query
        form = _form(rng)
        signature = _signature(rng, url, form, TOKEN)
        expected = sdk.validate(url, form, signature)
        assert verifiers[base].is_valid_form(path_and_query, form.lists(), signature) == expected, (
            url,
            form,
            signature,
        )
        agreed_valid += expected
    # The random mix must exercise both answers, or this test proves nothing.
    assert 600 < agreed_valid < 1300


@pytest.mark.parametrize("seed", range(2))
def test_json_body_signatures_match_request_validator(seed: int) -> None:
    rng = random.Random(100 + seed)
    sdk = RequestValidator(TOKEN)
    verifiers = {base: Verifier([TOKEN], base) for base in BASES}
    agreed_valid = 0
    for _ in range(800):
        base = rng.choice(BASES)
        body = json.dumps({"MessageSid": f"SM{rng.randint(0, 10**6)}", "Body": _text(rng)}).encode()
        digest = body_sha256(body)
        roll = rng.random()
        if roll < 0.1:
            digest = body_sha256(body + b" ")  # a body that is not the one signed
        elif roll < 0.15:
            digest = digest.upper()
        extra = _query(rng)
        query = f"bodySHA256={digest}" + (f"&{extra}" if extra and "bodySHA256" not in extra else "")
        path_and_query = f"/webhooks/twilio?{query}"
        url = base + path_and_query
        signature = _signature(rng, url, {}, TOKEN)
        expected = sdk.validate(url, body.decode(), signature)
        got = verifiers[base].is_valid_body(path_and_query, query, body, signature)
        assert got == expected, (url, body, signature)
        agreed_valid += expected
    assert 250 < agreed_valid < 650


def test_json_body_without_body_hash_is_refused() -> None:
    verifier = Verifier([TOKEN], "https://example.com")
    url = "https://example.com/webhooks/twilio"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    assert not verifier.is_valid_body("/webhooks/twilio", "", b'{"a": 1}', signature)
    # An empty body with a URL-only signature is what the SDK accepts too.
    assert RequestValidator(TOKEN).validate(url, "", signature)
    assert verifier.is_valid_body("/webhooks/twilio", "", b"", signature)


def test_repeated_keys_and_unicode_sign_like_the_sdk() -> None:
    form = MultiDict([("b", "2"), ("a", "z"), ("a", "é"), ("a", "z"), ("Body", "¿Qué tal? 漢字 😀")])
    url = "https://example.com/webhooks/twilio"
    expected = RequestValidator(TOKEN).compute_signature(url, form)
    assert sign(TOKEN, url, form.lists()) == expected
    assert Verifier([TOKEN], "https://example.com").is_valid_form("/webhooks/twilio", form.lists(), expected)


def test_sha256_algorithm_header_like_the_sdk() -> None:
    url = "https://example.com/webhooks/twilio"
    form = MultiDict([("MessageSid", "SM1"), ("Body", "hi")])
    verifier = Verifier([TOKEN], "https://example.com")
    header = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    assert algorithm_from_header(header) == get_signature_algorithm(header).upper()
    sha256_sig = RequestValidator(TOKEN).compute_signature(url, form, "HMAC_SHA256")
    assert verifier.is_valid_form("/webhooks/twilio", form.lists(), sha256_sig, header)
    assert not verifier.is_valid_form("/webhooks/twilio", form.lists(), sha256_sig)
    unknown = "key=x,algorithm=HMAC_MD5"
    assert not RequestValidator(TOKEN).validate(url, form, sha256_sig, get_signature_algorithm(unknown))
    assert not verifier.is_valid_form("/webhooks/twilio", form.lists(), sha256_sig, unknown)


@pytest.mark.parametrize("signature", [None, "", "ñ-not-base64"])
def test_missing_or_garbage_signature_is_invalid(signature: str | None) -> None:
    verifier = Verifier([TOKEN], "https://example.com")
    assert not verifier.is_valid_form("/webhooks/twilio", [("Body", "hi")], signature)
