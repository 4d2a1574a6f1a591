"""A missing or invalid setting fails at start with a message naming the environment variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import ProviderName, SettingsError, load_settings

PROVIDER_VARS = (
    "WAPIPE_PROVIDER",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_WHATSAPP_NUMBER",
    "META_ACCESS_TOKEN",
    "META_PHONE_NUMBER_ID",
)


@pytest.fixture(autouse=True)
def no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROVIDER_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WAPIPE_SEND_RATE", "5000"),
        ("WAPIPE_SEND_RATE", "fast"),
        ("WAPIPE_DEFAULT_REGION", "XX"),
        ("WAPIPE_PUBLIC_URL", "ftp://example.com"),
        ("WAPIPE_MODE", "chaos"),
        ("WAPIPE_MAX_BODY_BYTES", "0"),
        ("WAPIPE_AI_TIMEOUT", "61"),  # an attempt may take twice it: past half the model call's budget
        ("WAPIPE_API_KEYS", "good-key,clé-secrète"),  # not header-safe: it could never match
        # Read at the first connection, it failed every task that needed one, each acked and lost.
        ("WAPIPE_DB_POOL_SIZE", ""),
        ("WAPIPE_DB_POOL_SIZE", "eight"),
        ("WAPIPE_DB_POOL_SIZE", "0"),
        ("WAPIPE_LOG_LEVEL", "verbose"),  # failed later, in logging or Celery, without the variable's name
        ("WAPIPE_LOG_LEVEL", ""),
        ("WAPIPE_MEDIA_RETENTION_DAYS", "-1"),
    ],
)
def test_invalid_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://wp:S3cret%zzPass@db.internal.example/wapipe_prod",  # not percent-encoding
        "postgresql://wp:S3cret Pass@db.internal.example/wapipe_prod",  # a space
        "postgresql://wp:S3cretPass@db.internal.example/wapipe_prod?no_such_option=1",
        "host=db.internal.example password='S3cretPass",  # key=value form, unterminated quote
    ],
)
def test_malformed_database_url_is_named_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    # Accepted at start, it failed every task at its first connection (a ProgrammingError, not an outage:
    # each message acked and lost). The driver's error quotes the part it cannot parse: the password.
    monkeypatch.setenv("WAPIPE_DATABASE_URL", url)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "WAPIPE_DATABASE_URL" in message
    assert "malformed" in message
    for part in ("S3cret", "Pass", "db.internal", "wapipe_prod", "no_such_option"):
        assert part not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://wp:p%40ss%20word@db.example:6432/wapipe?sslmode=require",
        "postgresql:///wapipe?host=/var/run/postgresql",
        "host=db.example dbname=wapipe user=wp password='a b'",
    ],
)
def test_wellformed_database_urls_are_kept_as_given(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("WAPIPE_DATABASE_URL", url)
    assert load_settings().database_url == url


@pytest.mark.parametrize(
    "url",
    [
        "cache.internal.example:6379",  # no scheme
        "http://:S3cretPass@cache.internal.example:6379/0",
        "redis://:S3cretPass@cache.internal.example:6379/zero",  # not a database number
    ],
)
def test_malformed_redis_url_is_named_without_showing_it(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    # Accepted at start, it was a ValueError's traceback in the CLI (`dlq replay`, `chat`) and in every
    # worker and request that needed the broker.
    monkeypatch.setenv("WAPIPE_REDIS_URL", url)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "WAPIPE_REDIS_URL" in message
    for part in ("S3cret", "Pass", "cache.internal", "zero"):
        assert part not in message


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379", "rediss://:p%40ss@cache.example:6380/2", "unix:///run/redis.sock?db=1"],
)
def test_wellformed_redis_urls_are_kept_as_given(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("WAPIPE_REDIS_URL", url)
    assert load_settings().redis_url == url


def test_log_level_is_taken_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAPIPE_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


@pytest.mark.parametrize(
    ("given", "level"), [("warn", "WARNING"), ("WARN", "WARNING"), ("fatal", "CRITICAL")]
)
def test_the_older_log_level_names_still_start(
    monkeypatch: pytest.MonkeyPatch, given: str, level: str
) -> None:
    # logging's setLevel and Celery took them, so a deployment that set one must not stop at the upgrade.
    monkeypatch.setenv("WAPIPE_LOG_LEVEL", given)
    assert load_settings().log_level == level


def test_pool_size_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().db_pool_size == 8
    monkeypatch.setenv("WAPIPE_DB_POOL_SIZE", "3")
    assert load_settings().db_pool_size == 3


def test_media_can_be_kept_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused before: a deployment that must keep its media had no setting to say so.
    monkeypatch.setenv("WAPIPE_MEDIA_RETENTION_DAYS", "0")
    assert load_settings().media_retention_days == 0


def test_twilio_provider_without_credentials_names_each_missing_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WAPIPE_PROVIDER", "twilio")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "1" * 32)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "TWILIO_AUTH_TOKEN" in message
    assert "TWILIO_WHATSAPP_NUMBER" in message
    assert "TWILIO_ACCOUNT_SID" not in message


def test_defaults_work_with_no_provider_credentials() -> None:
    settings = load_settings()
    assert settings.active_provider == ProviderName.console
    assert settings.default_region == "US"


def test_region_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAPIPE_DEFAULT_REGION", "co")
    assert load_settings().default_region == "CO"


def test_wapipe_migrate_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in PROVIDER_VARS}
    env.update({"WAPIPE_SEND_RATE": "5000", "WAPIPE_DATA_DIR": str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "WAPIPE_SEND_RATE" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_documents_every_variable() -> None:
    from shared.settings import Settings

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    undocumented = [
        field.validation_alias
        for field in Settings.model_fields.values()
        if f"| `{field.validation_alias}` |" not in readme
    ]
    assert undocumented == []
