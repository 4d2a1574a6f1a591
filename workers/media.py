"""``inbound.fetch_media``: download an inbound message's media promptly into our own storage.

Provider media links do not last: Meta's download URLs expire minutes after they are issued and need the
bearer token (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media#download-media);
Twilio's ``MediaUrl`` needs HTTP basic auth with the account SID and auth token
(https://www.twilio.com/docs/messaging/api/media-resource); Kapso gives a ``media_url`` it hosts, or a
media id its Meta-compatible proxy resolves with the ``X-API-Key``
(https://docs.kapso.ai/api/meta/whatsapp/media/get-media-url). ``inbound.route`` enqueues this task for
every message that carries media.

Each file is checked before and while it is read: its MIME type against :data:`ALLOWED_MIME_TYPES`
(WhatsApp's own media types), its size against ``WAPIPE_MEDIA_MAX_BYTES`` (the declared length first,
then the bytes as they stream, aborting above the limit). It is stored content-addressed under
``WAPIPE_MEDIA_DIR`` (``<sha256[:2]>/<sha256><ext>``, written to a temporary name then renamed, so a
reader never sees half a file), and the message's ``media`` entry gets ``stored: {path, size, sha256,
mime_type}`` or ``fetch_error: {code, message}`` when it was refused.

Safe to run twice: entries already stored (file present) or refused are left as they are. Credentials go
only to the provider's own hosts: a URL elsewhere is fetched without them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.db import messages
from shared.db.errors import NotFound
from shared.db.pool import transaction
from shared.logging import get_logger
from shared.settings import Settings, get_settings
from workers import OUTAGE_RETRIES, celery

log = get_logger(__name__)

TASK = "inbound.fetch_media"

# https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media#supported-media-types
EXTENSIONS: dict[str, str] = {
    "audio/aac": ".aac",
    "audio/amr": ".amr",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/ogg": ".ogg",
    "text/plain": ".txt",
    "application/pdf": ".pdf",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.ms-powerpoint": ".ppt",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "video/3gpp": ".3gp",
}
ALLOWED_MIME_TYPES = frozenset(EXTENSIONS)

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
TWILIO_API = "https://api.twilio.com"
CHUNK_BYTES = 64 * 1024


class MediaRefused(Exception):
    """This file will not be stored (too big, a type we do not accept, gone): final, recorded."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class MediaUnavailable(Exception):
    """The provider could not be reached, answered 429/5xx or refused our credentials: try again later."""


def fetch_media(message_id: int, *, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Download every media entry of the inbound message not handled yet; return the updated entries."""
    settings = settings or get_settings()
    try:
        with transaction() as conn:
            record = messages.get_inbound_media(conn, message_id)
    except NotFound:
        log.warning("media for an unknown message", message_id=message_id)
        return []
    updated: list[dict[str, Any]] = []
    changed = False
    with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
        fetcher = _Fetcher(client, settings, record.provider, record.business_number)
        for entry in record.media:
            if _done(entry):
                updated.append(entry)
                continue
            try:
                stored = fetcher.fetch(entry)
            except MediaRefused as refused:
                log.warning("inbound media refused", message_id=message_id, error_code=refused.code)
                entry = {**entry, "fetch_error": {"code": refused.code, "message": refused.message}}
            else:
                log.info("inbound media stored", message_id=message_id, size=stored["size"])
                entry = {**entry, "stored": stored}
            updated.append(entry)
            changed = True
            # Record each file as soon as it is stored, so a retry after a later failure skips it.
            with transaction() as conn:
                messages.set_inbound_media(conn, message_id, updated + record.media[len(updated) :])
    return updated if changed else record.media


def _done(entry: dict[str, Any]) -> bool:
    if entry.get("fetch_error"):
        return True
    stored = entry.get("stored")
    return isinstance(stored, dict) and Path(str(stored.get("path", ""))).is_file()


class _Fetcher:
    """Resolves and downloads one provider's media with that provider's credentials."""

    def __init__(
        self, client: httpx.Client, settings: Settings, provider: str, business_number: str | None
    ) -> None:
        self._client = client
        self._settings = settings
        self._provider = provider
        self._business_number = business_number

    def fetch(self, entry: dict[str, Any]) -> dict[str, Any]:
        if self._provider == "meta":
            return self._meta(entry)
        if self._provider == "kapso":
            return self._kapso(entry)
        if self._provider == "twilio":
            return self._twilio(entry)
        raise MediaRefused("unsupported_provider", f"no media download for provider {self._provider}")

    def _meta(self, entry: dict[str, Any]) -> dict[str, Any]:
        token = self._settings.meta_access_token
        if token is None:
            raise MediaRefused("not_configured", "META_ACCESS_TOKEN is needed to download Meta media")
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
        base = self._settings.meta_graph_url
        url = entry.get("url")
        if entry.get("media_id"):
            # Step 1: the media id -> a short-lived URL (and its declared type and size).
            info = self._json(f"{base}/{entry['media_id']}", headers)
            _check_mime(info.get("mime_type") or entry.get("mime_type"))
            _check_declared_size(info.get("file_size"), self._settings.media_max_bytes)
            url = info.get("url")
        if not url:
            raise MediaRefused("no_url", "the media has neither a media id nor a URL")
        # Step 2: the bytes, with the same bearer token (Meta's media host, lookaside.fbsbx.com).
        return self._download(str(url), headers)

    def _kapso(self, entry: dict[str, Any]) -> dict[str, Any]:
        key = self._settings.kapso_api_key
        api = self._settings.kapso_api_url
        headers = {"X-API-Key": key.get_secret_value()} if key is not None else {}
        url = entry.get("url")
        if not url and entry.get("media_id"):
            if not headers:
                raise MediaRefused("not_configured", "KAPSO_API_KEY is needed to resolve Kapso media ids")
            params = {"phone_number_id": self._business_number} if self._business_number else None
            info = self._json(f"{api}/{entry['media_id']}", headers, params)
            _check_mime(info.get("mime_type") or entry.get("mime_type"))
            _check_declared_size(info.get("file_size"), self._settings.media_max_bytes)
            url = info.get("download_url") or info.get("url")
        if not url:
            raise MediaRefused("no_url", "the media has neither a media id nor a URL")
        return self._download(str(url), headers if _same_host(str(url), api) else {})

    def _twilio(self, entry: dict[str, Any]) -> dict[str, Any]:
        url = entry.get("url")
        if not url:
            raise MediaRefused("no_url", "the media has no URL")
        sid, token = self._settings.twilio_account_sid, self._settings.twilio_auth_token
        hosts = [TWILIO_API, self._settings.twilio_api_url or TWILIO_API]
        headers: dict[str, str] = {}
        if sid and token and any(_same_host(str(url), host) for host in hosts):
            # httpx drops Authorization when Twilio redirects to its CDN (another origin).
            credentials = base64.b64encode(f"{sid}:{token.get_secret_value()}".encode()).decode()
            headers["Authorization"] = f"Basic {credentials}"
        return self._download(str(url), headers)

    def _json(
        self, url: str, headers: dict[str, str], params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        try:
            response = self._client.get(url, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise MediaUnavailable(f"media lookup failed: {type(exc).__name__}") from None
        _raise_for_status(response, credentialed=True)
        try:
            body = response.json()
        except ValueError:
            raise MediaUnavailable("media lookup answered something that is not JSON") from None
        if not isinstance(body, dict):
            raise MediaUnavailable("media lookup answered something that is not an object")
        return body

    def _download(self, url: str, headers: dict[str, str]) -> dict[str, Any]:
        limit = self._settings.media_max_bytes
        folder = self._settings.media_path
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                _raise_for_status(response, credentialed=bool(headers) and _same_host(str(response.url), url))
                mime = _check_mime(response.headers.get("Content-Type"))
                _check_declared_size(response.headers.get("Content-Length"), limit)
                digest = hashlib.sha256()
                size = 0
                handle, temporary = tempfile.mkstemp(dir=folder, prefix=".part-")
                try:
                    with os.fdopen(handle, "wb") as out:
                        for chunk in response.iter_bytes(CHUNK_BYTES):
                            size += len(chunk)
                            if size > limit:
                                raise MediaRefused(
                                    "too_large", f"larger than WAPIPE_MEDIA_MAX_BYTES ({limit} bytes)"
                                )
                            digest.update(chunk)
                            out.write(chunk)
                    sha256 = digest.hexdigest()
                    target = folder / sha256[:2] / f"{sha256}{EXTENSIONS[mime]}"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(temporary, target)
                except BaseException:
                    Path(temporary).unlink(missing_ok=True)
                    raise
        except httpx.HTTPError as exc:
            raise MediaUnavailable(f"media download failed: {type(exc).__name__}") from None
        return {"path": str(target.resolve()), "size": size, "sha256": sha256, "mime_type": mime}


def _raise_for_status(response: httpx.Response, *, credentialed: bool) -> None:
    """Refuse what is gone for good; leave for a retry what an outage or our credentials could explain.

    A 401/403 from the host our credentials went to means the credentials (an expired Meta token, a
    rotated Twilio auth token), not the media: Meta keeps media 30 days and Twilio until it is deleted, so
    it waits for the fix, and the task keeps it as a dead letter if retries run out first.
    """
    status = response.status_code
    if status < 400:
        return
    if status == 429 or status >= 500:
        raise MediaUnavailable(f"the provider answered HTTP {status}")
    if status in (401, 403) and credentialed:
        raise MediaUnavailable(f"the provider refused our credentials (HTTP {status})")
    raise MediaRefused(f"http_{status}", f"the provider answered HTTP {status} (gone, or not ours to read)")


def _check_mime(value: Any) -> str:
    mime = str(value or "").split(";", 1)[0].strip().lower()
    if mime not in ALLOWED_MIME_TYPES:
        raise MediaRefused("mime_not_allowed", f"media type {mime or 'unknown'!r} is not accepted")
    return mime


def _check_declared_size(value: Any, limit: int) -> None:
    try:
        declared = int(value) if value is not None else None
    except (TypeError, ValueError):
        declared = None
    if declared is not None and declared > limit:
        raise MediaRefused("too_large", f"{declared} bytes, over WAPIPE_MEDIA_MAX_BYTES ({limit})")


def _same_host(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


@celery.task(
    name=TASK,
    bind=True,
    acks_late=True,
    ignore_result=True,
    # The provider's media service, PostgreSQL or Redis unavailable: retried as long as an outage is for
    # the other tasks (Meta's media ids last 30 days, Twilio's media until deleted; only the resolved URLs
    # are short-lived, and they are resolved anew), then kept as a dead letter to replay, as is a file
    # that failed in a way nobody foresaw: the provider had its 200, so the media must not just vanish.
    **{**OUTAGE_RETRIES, "autoretry_for": (MediaUnavailable, *OUTAGE_RETRIES["autoretry_for"])},
    dead_letter_on_failure=True,
)
def fetch_media_task(self: Any, message_id: int) -> None:
    fetch_media(message_id)
