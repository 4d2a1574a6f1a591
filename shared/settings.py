"""Configuration, read once from the environment.

Providers keep their own conventional variable names (``TWILIO_AUTH_TOKEN``, ``OPENAI_API_KEY``, ...);
everything else is ``WAPIPE_*``. A missing or malformed value fails at start with the variable's name
(:class:`SettingsError`), never later at the first message that needs it.
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import phonenumbers
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.connection import parse_url as parse_redis_url


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


class ProviderName(StrEnum):
    console = "console"
    twilio = "twilio"
    meta = "meta"
    kapso = "kapso"


class AIBackend(StrEnum):
    openai = "openai"
    offline = "offline"


class Mode(StrEnum):
    """What an inbound message from WhatsApp is for; see ARCHITECTURE.md's table of uses."""

    project = "project"
    menu = "menu"
    assistant = "assistant"


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_CONTENT_SID_KEY = re.compile(r"^[a-z0-9_]{1,512}(:[a-z]{2,3}(_[A-Za-z]{2,4})?)?$")
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")


def _content_sid_map(value: str) -> dict[str, str]:
    """``"order_update:es=HX...,welcome=HX..."`` -> ``{"order_update:es": "HX...", "welcome": "HX..."}``."""
    out: dict[str, str] = {}
    for entry in _comma_list(value):
        key, sep, sid = (part.strip() for part in entry.partition("="))
        if not sep or not _CONTENT_SID_KEY.fullmatch(key) or not _CONTENT_SID.fullmatch(sid):
            raise ValueError(f"{entry!r} is not template_name[:language]=HX<32 hex digits>")
        if key in out:
            raise ValueError(f"{key!r} appears twice")
        out[key] = sid
    return out


_MEDIA_HOST = re.compile(r"^(https?://)?(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?(/\S*)?$")


def _media_host(entry: Any) -> str:
    """One WAPIPE_MEDIA_HOSTS entry, checked as workers/media.py reads it: a host, ``*.domain`` or an
    http(s) URL prefix; nothing else, so a typo fails at start instead of refusing every download."""
    if not isinstance(entry, str) or not _MEDIA_HOST.fullmatch(entry):
        raise ValueError(f"{entry!r} is not a host, *.domain or http(s):// URL")
    return entry


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _env(name: str, **kwargs: Any) -> Any:
    return Field(validation_alias=name, **kwargs)


# The webhook secrets that may have a secondary, accepted beside them during a rotation (Settings' fields).
_SECONDARY_SECRETS = {
    "twilio_secondary_auth_token": "twilio_auth_token",
    "meta_secondary_app_secret": "meta_app_secret",
    "kapso_secondary_webhook_secret": "kapso_webhook_secret",
}
_SECONDARY_OF = {primary: secondary for secondary, primary in _SECONDARY_SECRETS.items()}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=False)

    # Where the servers are; unset means `wapipe up` runs embedded ones under data_dir.
    database_url: str | None = _env("WAPIPE_DATABASE_URL", default=None)
    redis_url: str | None = _env("WAPIPE_REDIS_URL", default=None)
    data_dir: Path = _env("WAPIPE_DATA_DIR", default=Path("var"))
    # Pooled connections cancel a statement after this long (shared/db/pool.py); 0 leaves it to the server
    # (a role's own statement_timeout, or behind PgBouncer's transaction pooling, where a session SET does
    # not hold).
    db_statement_timeout_seconds: float = _env("WAPIPE_DB_STATEMENT_TIMEOUT", default=20.0, ge=0, le=3600)
    # PostgreSQL connections per process (shared/db/pool.py).
    db_pool_size: int = _env("WAPIPE_DB_POOL_SIZE", default=8, ge=1)
    # How long a task, a request or a CLI command waits for a pooled connection before PostgreSQL counts as
    # unreachable (a task retries, the API answers 503, the CLI says so).
    db_pool_timeout_seconds: float = _env("WAPIPE_DB_POOL_TIMEOUT", default=10.0, gt=0, le=300)

    public_url: str = _env("WAPIPE_PUBLIC_URL", default="http://127.0.0.1:8000")
    app_url: str | None = _env("WAPIPE_APP_URL", default=None)
    api_keys: Annotated[list[SecretStr], NoDecode] = _env("WAPIPE_API_KEYS", default_factory=list)
    # Keys the HMAC of verification codes (shared/verification.py); unset: a dev key, with a warning.
    secret_key: SecretStr | None = _env("WAPIPE_SECRET_KEY", default=None)
    default_region: str = _env("WAPIPE_DEFAULT_REGION", default="US")
    mode: Mode = _env("WAPIPE_MODE", default=Mode.project)
    flows: str | None = _env("WAPIPE_FLOWS", default=None)

    provider: ProviderName | None = _env("WAPIPE_PROVIDER", default=None)
    insecure_skip_signatures: bool = _env("WAPIPE_INSECURE_SKIP_SIGNATURES", default=False)
    max_body_bytes: int = _env("WAPIPE_MAX_BODY_BYTES", default=3 * 1024 * 1024, gt=0)

    rate_limit_per_minute: int = _env("WAPIPE_RATE_LIMIT", default=10, gt=0)
    session_ttl_seconds: int = _env("WAPIPE_SESSION_TTL", default=30 * 60, gt=0)
    # Maintenance (workers/maintenance.py): when a silent conversation closes; how long raw webhooks stay.
    conversation_idle_minutes: int = _env("WAPIPE_CONVERSATION_IDLE_MINUTES", default=24 * 60, gt=0)
    webhook_retention_days: int = _env("WAPIPE_WEBHOOK_RETENTION_DAYS", default=30, gt=0)
    send_rate: float = _env("WAPIPE_SEND_RATE", default=80.0, gt=0, le=1000)
    recipient_rate_per_minute: int = _env("WAPIPE_RECIPIENT_RATE", default=20, gt=0)
    # Outbound retries: exponential backoff with jitter from this base, capped at 30 min; 60 attempts span
    # about a day.
    send_max_attempts: int = _env("WAPIPE_SEND_MAX_ATTEMPTS", default=60, gt=0)
    send_retry_base_seconds: float = _env("WAPIPE_SEND_RETRY_BASE", default=2.0, gt=0)
    # Opt-out and opt-in words are whole messages (or a tapped button's title or id), compared without case,
    # accents, or punctuation and emoji around them (workers/inbound.py). The router's notices tell people
    # to send START / ALTA and STOP / BAJA: keep those in the lists. "Stop promotions" is the title of
    # Meta's marketing opt-out quick-reply button.
    opt_out_words: Annotated[list[str], NoDecode] = _env(
        "WAPIPE_OPT_OUT_WORDS", default_factory=lambda: ["STOP", "UNSUBSCRIBE", "BAJA", "STOP PROMOTIONS"]
    )
    opt_in_words: Annotated[list[str], NoDecode] = _env(
        "WAPIPE_OPT_IN_WORDS", default_factory=lambda: ["START", "ALTA"]
    )

    # Inbound media (workers/media.py): downloaded into this folder (default <data_dir>/media), each file at
    # most this many bytes (WhatsApp's own cap for most media is 16 MB), deleted by maintenance this many
    # days after it was last stored (by default as long as raw webhook events are kept; 0 keeps it for good).
    media_dir: Path | None = _env("WAPIPE_MEDIA_DIR", default=None)
    media_max_bytes: int = _env("WAPIPE_MEDIA_MAX_BYTES", default=16 * 1024 * 1024, gt=0)
    media_retention_days: int = _env("WAPIPE_MEDIA_RETENTION_DAYS", default=30, ge=0)
    # Places media may also be downloaded from, besides the providers' own hosts (a Kapso storage host):
    # "host" (https), "*.domain" (its subdomains, https), or an http(s) URL prefix.
    media_hosts: Annotated[list[str], NoDecode] = _env("WAPIPE_MEDIA_HOSTS", default_factory=list)

    # A name both logging and Celery's --loglevel take (shared/logging.py, wapipe worker and beat).
    log_level: str = _env("WAPIPE_LOG_LEVEL", default="INFO")
    log_format: str = _env("WAPIPE_LOG_FORMAT", default="auto", pattern="^(auto|json|console)$")

    twilio_account_sid: str | None = _env("TWILIO_ACCOUNT_SID", default=None)
    twilio_auth_token: SecretStr | None = _env("TWILIO_AUTH_TOKEN", default=None)
    # Each provider signs webhooks with its new secret the moment it is rotated (Twilio's promoted secondary
    # token, a reset Meta app secret, a regenerated Kapso secret), and Twilio does not retry a refused
    # webhook. A secondary is accepted for webhook signatures beside the primary while a rotation lasts;
    # never used to call the providers' APIs.
    twilio_secondary_auth_token: SecretStr | None = _env("WAPIPE_TWILIO_SECONDARY_AUTH_TOKEN", default=None)
    twilio_whatsapp_number: str | None = _env("TWILIO_WHATSAPP_NUMBER", default=None)
    # Only for pointing the SDK at a local fake API in tests; production leaves it unset.
    twilio_api_url: str | None = _env("WAPIPE_TWILIO_API_URL", default=None)
    # Twilio sends templates by Content SID: "name:lang=HX...,name=HX..." maps the API's template names to
    # them (shared/providers/twilio/client.py), so one API call works with every provider.
    twilio_content_sids: Annotated[dict[str, str], NoDecode] = _env(
        "WAPIPE_TWILIO_CONTENT_SIDS", default_factory=dict
    )

    meta_app_secret: SecretStr | None = _env("META_APP_SECRET", default=None)
    meta_secondary_app_secret: SecretStr | None = _env("WAPIPE_META_SECONDARY_APP_SECRET", default=None)
    meta_verify_token: SecretStr | None = _env("META_VERIFY_TOKEN", default=None)
    meta_access_token: SecretStr | None = _env("META_ACCESS_TOKEN", default=None)
    meta_phone_number_id: str | None = _env("META_PHONE_NUMBER_ID", default=None)
    meta_graph_url: str = _env("META_GRAPH_URL", default="https://graph.facebook.com/v21.0")

    kapso_webhook_secret: SecretStr | None = _env("KAPSO_WEBHOOK_SECRET", default=None)
    kapso_secondary_webhook_secret: SecretStr | None = _env(
        "WAPIPE_KAPSO_SECONDARY_WEBHOOK_SECRET", default=None
    )
    kapso_api_key: SecretStr | None = _env("KAPSO_API_KEY", default=None)
    # Kapso's Meta-compatible proxy (https://docs.kapso.ai/docs/how-to/whatsapp/use-meta-proxy).
    kapso_api_url: str = _env("KAPSO_API_URL", default="https://api.kapso.ai/meta/whatsapp/v24.0")
    kapso_phone_number_id: str | None = _env("KAPSO_PHONE_NUMBER_ID", default=None)

    ai: AIBackend | None = _env("WAPIPE_AI", default=None)
    openai_api_key: SecretStr | None = _env("OPENAI_API_KEY", default=None)
    openai_base_url: str | None = _env("OPENAI_BASE_URL", default=None)
    ai_model: str = _env("WAPIPE_AI_MODEL", default="gpt-4o-mini")
    # Per attempt; one model call's attempts share 120 s (shared/ai/openai_parser.py MODEL_BUDGET_SECONDS).
    # At most half the model call's budget (shared/ai/openai_parser.py): an attempt can take twice its
    # timeout (a server that goes quiet just after the whole-answer deadline was last checked).
    ai_timeout_seconds: float = _env("WAPIPE_AI_TIMEOUT", default=20.0, gt=0, le=60)

    @field_validator("api_keys", "opt_out_words", "opt_in_words", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("api_keys")
    @classmethod
    def _header_safe_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        # Callers send a key in the X-API-Key header, which carries visible ASCII only: a key with a space,
        # an accent or a control character could never match, and its caller would just get 401s.
        for key in value:
            text = key.get_secret_value()
            if not all("!" <= char <= "~" for char in text):
                raise ValueError("an API key must be visible ASCII characters only (it travels in a header)")
        return value

    @field_validator("database_url")
    @classmethod
    def _parsable_database_url(cls, value: str | None) -> str | None:
        # Parsed as libpq will at the first connection, where a malformed URL (a password with "%zz" or a
        # space) failed every task with an error that is no outage, each message acked and lost. Neither
        # the value nor the driver's text is shown: that text quotes the part it cannot parse, which can be
        # the password.
        if value:
            try:
                conninfo_to_dict(value)
            except psycopg.Error:
                raise ValueError(
                    "is malformed (not a PostgreSQL URL or key=value string libpq can parse; check that"
                    " special characters in the password are percent-encoded)"
                ) from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _parsable_redis_url(cls, value: str | None) -> str | None:
        # Parsed as redis-py will, where a malformed URL was a ValueError's traceback in every process that
        # needed the broker. A path that is no database number, which redis-py passes over (database 0),
        # is refused too: the broker's own parser would read it otherwise. The value is not shown: it
        # holds the password.
        if value:
            try:
                parse_redis_url(value)
                parts = urlsplit(value)
                database = parts.path.strip("/")
                if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
                    raise ValueError(database)
            except ValueError:
                raise ValueError(
                    "is malformed (not a redis://, rediss:// or unix:// URL, with a database number if"
                    " any; check that special characters in the password are percent-encoded)"
                ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        # The stdlib's and Celery's older names, which deployments may still set.
        level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)} (any case)")
        return level

    @field_validator("media_hosts", mode="before")
    @classmethod
    def _media_hosts(cls, value: Any) -> Any:
        return [_media_host(entry) for entry in _comma_list(value)]

    @field_validator("twilio_content_sids", mode="before")
    @classmethod
    def _content_sids(cls, value: Any) -> Any:
        return _content_sid_map(value) if isinstance(value, str) else value

    @field_validator("twilio_whatsapp_number")
    @classmethod
    def _bare_twilio_number(cls, value: str | None) -> str | None:
        # Twilio's console writes the number as whatsapp:+1...; kept in one form (E.164) for every reader
        # (notify's pacing bucket, the links API, chat), and the Twilio client adds the prefix to send.
        return value.removeprefix("whatsapp:") if value else value

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not an ISO 3166 region phonenumbers knows (e.g. US, CO, ES)")
        return region

    @field_validator("public_url", "app_url", "meta_graph_url", "twilio_api_url", "openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _secondary_secrets_beside_their_primary(self) -> Settings:
        # A secondary alone would go on checking webhooks after the rotation it was set for, unnoticed.
        for secondary, primary in _SECONDARY_SECRETS.items():
            if getattr(self, secondary) and not getattr(self, primary):
                raise ValueError(f"{_variable(secondary)} is only accepted beside {_variable(primary)}")
        return self

    @model_validator(mode="after")
    def _provider_has_credentials(self) -> Settings:
        needs = {
            ProviderName.twilio: ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_WHATSAPP_NUMBER"),
            ProviderName.meta: ("META_ACCESS_TOKEN", "META_PHONE_NUMBER_ID"),
        }.get(self.active_provider, ())
        missing = [name for name in needs if not getattr(self, name.lower())]
        if missing:
            raise ValueError(f"WAPIPE_PROVIDER={self.active_provider} needs {', '.join(missing)}")
        if self.ai == AIBackend.openai and not self.openai_api_key:
            raise ValueError("WAPIPE_AI=openai needs OPENAI_API_KEY")
        return self

    def signing_secrets(self, primary: str) -> list[str]:
        """The secrets a webhook may be signed with, for the field ``primary`` (``meta_app_secret``...): the
        primary, then its secondary when set; none when the primary is unset. An empty value (a variable
        left set to nothing) is no secret: anybody can sign with the empty key."""
        chosen = (getattr(self, primary), getattr(self, _SECONDARY_OF[primary]))
        if not chosen[0]:
            return []
        return [secret.get_secret_value() for secret in chosen if secret]

    @property
    def active_provider(self) -> ProviderName:
        """The outbound provider: the explicit choice, else the one whose credentials are present."""
        if self.provider is not None:
            return self.provider
        if self.twilio_account_sid and self.twilio_auth_token and self.twilio_whatsapp_number:
            return ProviderName.twilio
        if self.meta_access_token and self.meta_phone_number_id:
            return ProviderName.meta
        return ProviderName.console

    @property
    def active_ai(self) -> AIBackend:
        if self.ai is not None:
            return self.ai
        return AIBackend.openai if self.openai_api_key else AIBackend.offline

    @property
    def media_path(self) -> Path:
        """Where inbound media are stored: ``WAPIPE_MEDIA_DIR``, else ``<data_dir>/media``."""
        return self.media_dir or self.data_dir / "media"

    @property
    def links_base_url(self) -> str | None:
        """Base of the host application's pages the bot links to (``WAPIPE_APP_URL``); None when unset.
        Never the public URL: those pages (a proposal's review) are the host application's, not wapipe's."""
        return self.app_url


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus overrides, by field name); raise SettingsError naming the variables."""
    try:
        fields = Settings.model_fields
        aliased = {(fields[key].validation_alias or key): value for key, value in overrides.items()}
        return Settings(**aliased)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "configuration"
            problems.append(f"{where}: {error['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return load_settings()


def _variable(field: str) -> str:
    """The environment variable a field of :class:`Settings` is read from."""
    return str(Settings.model_fields[field].validation_alias)
