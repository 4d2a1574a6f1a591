"""``inbound.fetch_media``: download an inbound message's media promptly into our own storage.

Provider media links do not last: Meta's download URLs expire minutes after they are issued and need the
bearer token (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media#download-media);
Twilio's ``MediaUrl`` needs HTTP basic auth with the account SID and auth token
(https://www.twilio.com/docs/messaging/api/media-resource); Kapso gives a ``media_url`` it hosts, or a
media id its Meta-compatible proxy resolves with the ``X-API-Key``
(https://docs.kapso.ai/api/meta/whatsapp/media/get-media-url). ``inbound.route`` enqueues this task for
every message that carries media, except one from an opted-out sender or over the sender's rate limit
(workers/inbound.py ``_MEDIA_NOT_FETCHED``): that message keeps only what the provider sent.

Each file is checked before and while it is read: its MIME type against :data:`ALLOWED_MIME_TYPES`
(WhatsApp's own media types), its size against ``WAPIPE_MEDIA_MAX_BYTES`` (the declared length first,
then the bytes as they stream, aborting above the limit; asked for uncompressed, and inflated a piece at a
time when a server compresses it anyway, so the limit holds in the worker's memory too). It is stored
content-addressed under ``WAPIPE_MEDIA_DIR`` (``<sha256[:2]>/<sha256><ext>``, written to a temporary name
then renamed, so a reader never sees half a file), and the message's ``media`` entry gets ``stored: {path,
size, sha256, mime_type}`` or ``fetch_error: {code, message}`` when it was refused. A file is kept
``WAPIPE_MEDIA_RETENTION_DAYS`` after it was last stored, then deleted (maintenance.purge_media; 0 keeps it
for good).

Only the provider's own hosts are asked, over https (:func:`media_hosts`: its API, the media hosts it hands
out or redirects to, the API URLs the settings name, and ``WAPIPE_MEDIA_HOSTS``), so a forged webhook cannot
make a worker fetch an internal address; redirects are followed here, hop by hop, so each hop is checked
too. Credentials go only to the hosts that need them: Meta's bearer token to graph.facebook.com and its
media host, Twilio's basic auth to api.twilio.com, Kapso's ``X-API-Key`` to its API, never along a redirect
elsewhere. A whole download has :data:`DOWNLOAD_SECONDS`, so a server that sends a little now and then
cannot hold a worker; it is tried again later, as is one that refuses our credentials (they may be fixed).

Safe to run twice: entries already stored (file present) or refused are left as they are.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

CONNECT_SECONDS = 5.0
READ_SECONDS = 30.0
# One entry's whole download (lookup, redirects, bytes). The check runs as the bytes arrive, so a stalled
# server holds a worker at most this plus one read's timeout.
DOWNLOAD_SECONDS = 60.0
# All of one task's downloads (Twilio allows 10 media per message): the rest waits for the retry, which
# skips what is stored. With a last read's timeout on top it stays under the task's soft time limit
# (shared/queues.py), so a slow message is retried rather than killed into a dead letter.
TASK_DOWNLOAD_SECONDS = 200.0
MAX_REDIRECTS = 5
# A download's temporary file in WAPIPE_MEDIA_DIR, until it is renamed to its content address or removed; a
# worker killed mid-download leaves it for maintenance.remove_stale_downloads.
PART_PREFIX = ".part-"
# A media lookup's answer (Graph's media object, Kapso's) is a few hundred bytes of JSON: one far longer is
# a broken or hostile endpoint, not read into the worker's memory.
LOOKUP_MAX_BYTES = 64 * 1024
# Media are asked for uncompressed (photos, audio and video are compressed already): httpx inflates each
# chunk the socket gives whole, so 64 kB of gzip would become 64 MB in memory before the size check. A
# server that compresses anyway is inflated here, at most this many bytes at a time.
DECODE_CHUNK_BYTES = 64 * 1024

# Where each provider's media may come from: an https host, "*.domain" for its subdomains, or a host with
# a path prefix. The API hosts (and the API URLs the settings name) get the credentials; the rest do not.
TWILIO_API = "https://api.twilio.com"
META_GRAPH = "https://graph.facebook.com"
META_MEDIA = "https://lookaside.fbsbx.com"  # Meta's media download URLs; they need the bearer token too
KAPSO_API = "https://api.kapso.ai"
# https://www.twilio.com/docs/messaging/api/media-resource: the MediaUrl on api.twilio.com redirects to
# Twilio's media CDN (mms.twiliocdn.com, media.twiliocdn.com; earlier, its S3 bucket of that name).
TWILIO_MEDIA = ("*.twiliocdn.com", "s3-external-1.amazonaws.com/media.twiliocdn.com/")
# Kapso's media_url is on its API host; its Meta-compatible proxy resolves ids to Kapso or WhatsApp CDN
# URLs, which its own SDK fetches without the key (https://docs.kapso.ai/docs/whatsapp/typescript-sdk/media).
KAPSO_MEDIA = ("*.kapso.ai", META_MEDIA)


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
    with httpx.Client(follow_redirects=False) as client:
        until = time.monotonic() + TASK_DOWNLOAD_SECONDS
        fetcher = _Fetcher(client, settings, record.provider, record.business_number, until=until)
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


@dataclass(frozen=True)
class _Place:
    """A scheme, host (``*.domain``: any of its subdomains) and port, and a path the URL must start with."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @classmethod
    def parse(cls, entry: str) -> _Place:
        url = httpx.URL(entry if "://" in entry else f"https://{entry}")
        return cls(url.scheme, url.host, _port(url), url.raw_path.decode() if url.raw_path != b"/" else "")

    def holds(self, url: httpx.URL) -> bool:
        if self.host.startswith("*."):
            host_matches = url.host.endswith(self.host[1:])
        else:
            host_matches = url.host == self.host
        return (
            url.scheme == self.scheme
            and host_matches
            and _port(url) == self.port
            and url.raw_path.decode().startswith(self.path)
        )


def _port(url: httpx.URL) -> int:
    return url.port or {"https": 443, "http": 80}.get(url.scheme, 0)


class MediaHosts:
    """Where one provider's media may be downloaded from, and which of those places get its credentials."""

    def __init__(self, allowed: list[str], credentialed: list[str], credentials: dict[str, str]) -> None:
        self._allowed = [_Place.parse(entry) for entry in allowed + credentialed]
        self._credentialed = [_Place.parse(entry) for entry in credentialed]
        self._credentials = credentials

    def allows(self, url: str) -> bool:
        parsed = _parse(url)
        return parsed is not None and not parsed.userinfo and any(p.holds(parsed) for p in self._allowed)

    def is_credentialed(self, url: str) -> bool:
        """Whether the provider's credentials go to ``url`` (set or not): its 401/403 speaks of them."""
        parsed = _parse(url)
        return parsed is not None and any(place.holds(parsed) for place in self._credentialed)

    def credentials_for(self, url: str) -> dict[str, str]:
        return dict(self._credentials) if self.allows(url) and self.is_credentialed(url) else {}


def _parse(url: str) -> httpx.URL | None:
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - an IDNA host (xn--...) that does not decode fails only when read
    except (httpx.InvalidURL, ValueError):  # idna's errors are ValueErrors
        return None
    return parsed


def media_hosts(provider: str, settings: Settings) -> MediaHosts:
    """The places ``provider``'s media may come from, with the credentials its API hosts get."""
    extra = list(settings.media_hosts)
    if provider == "twilio":
        api = [TWILIO_API, *_origins(settings.twilio_api_url)]
        sid, token = settings.twilio_account_sid, settings.twilio_auth_token
        basic = {"Authorization": _basic_auth(sid, token.get_secret_value())} if sid and token else {}
        return MediaHosts([*TWILIO_MEDIA, *extra], api, basic)
    if provider == "meta":
        api = [META_GRAPH, META_MEDIA, *_origins(settings.meta_graph_url)]
        token = settings.meta_access_token
        bearer = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        return MediaHosts(extra, api, bearer)
    if provider == "kapso":
        api = [KAPSO_API, *_origins(settings.kapso_api_url)]
        key = settings.kapso_api_key
        return MediaHosts([*KAPSO_MEDIA, *extra], api, {"X-API-Key": key.get_secret_value()} if key else {})
    return MediaHosts([], [], {})


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _where(url: str) -> str:
    """A URL's scheme and host, to say which was refused without its path's ids and signatures."""
    parsed = _parse(url)
    return f"{parsed.scheme}://{parsed.host}" if parsed is not None else "an unreadable URL"


def _origins(url: str | None) -> list[str]:
    """The scheme, host and port of an API URL from the settings (a local fake's http:// in tests)."""
    parsed = _parse(url) if url else None
    if parsed is None or not parsed.host:
        return []
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host  # an IPv6 address
    return [f"{parsed.scheme}://{host}:{_port(parsed)}"]


class _Fetcher:
    """Resolves and downloads one provider's media with that provider's credentials."""

    def __init__(
        self,
        client: httpx.Client,
        settings: Settings,
        provider: str,
        business_number: str | None,
        *,
        until: float = float("inf"),
    ) -> None:
        self._client = client
        self._settings = settings
        self._provider = provider
        self._business_number = business_number
        self._hosts = media_hosts(provider, settings)
        self._until = until  # the task's own deadline (time.monotonic()), over all its entries
        self._deadline = 0.0

    def fetch(self, entry: dict[str, Any]) -> dict[str, Any]:
        self._deadline = min(time.monotonic() + DOWNLOAD_SECONDS, self._until)
        if self._provider == "meta":
            return self._meta(entry)
        if self._provider == "kapso":
            return self._kapso(entry)
        if self._provider == "twilio":
            return self._twilio(entry)
        raise MediaRefused("unsupported_provider", f"no media download for provider {self._provider}")

    def _meta(self, entry: dict[str, Any]) -> dict[str, Any]:
        if self._settings.meta_access_token is None:
            raise MediaRefused("not_configured", "META_ACCESS_TOKEN is needed to download Meta media")
        url = entry.get("url")
        if entry.get("media_id"):
            # Step 1: the media id -> a short-lived URL (and its declared type and size).
            info = self._json(f"{self._settings.meta_graph_url}/{entry['media_id']}")
            _check_mime(info.get("mime_type") or entry.get("mime_type"))
            _check_declared_size(info.get("file_size"), self._settings.media_max_bytes)
            url = info.get("url")
        if not url:
            raise MediaRefused("no_url", "the media has neither a media id nor a URL")
        # Step 2: the bytes, with the same bearer token (Meta's media host, lookaside.fbsbx.com).
        return self._download(str(url))

    def _kapso(self, entry: dict[str, Any]) -> dict[str, Any]:
        url = entry.get("url")
        if not url and entry.get("media_id"):
            if self._settings.kapso_api_key is None:
                raise MediaRefused("not_configured", "KAPSO_API_KEY is needed to resolve Kapso media ids")
            params = {"phone_number_id": self._business_number} if self._business_number else None
            info = self._json(f"{self._settings.kapso_api_url}/{entry['media_id']}", params)
            _check_mime(info.get("mime_type") or entry.get("mime_type"))
            _check_declared_size(info.get("file_size"), self._settings.media_max_bytes)
            url = info.get("download_url") or info.get("url")
        if not url:
            raise MediaRefused("no_url", "the media has neither a media id nor a URL")
        return self._download(str(url))

    def _twilio(self, entry: dict[str, Any]) -> dict[str, Any]:
        url = entry.get("url")
        if not url:
            raise MediaRefused("no_url", "the media has no URL")
        return self._download(str(url))

    def _json(self, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            with self._open(url, params) as response:
                raw = self._read_lookup(response)
        except httpx.HTTPError as exc:
            raise MediaUnavailable(f"media lookup failed: {type(exc).__name__}") from None
        try:
            body = json.loads(raw)
        except ValueError:  # UnicodeDecodeError included
            raise MediaUnavailable("media lookup answered something that is not JSON") from None
        if not isinstance(body, dict):
            raise MediaUnavailable("media lookup answered something that is not an object")
        return body

    def _read_lookup(self, response: httpx.Response) -> bytes:
        """The lookup's answer, read as the bytes arrive (so the deadline holds while a server trickles
        them) and refused past :data:`LOOKUP_MAX_BYTES`."""
        chunks: list[bytes] = []
        size = 0
        for chunk in _decoded(response):
            self._check_deadline()
            size += len(chunk)
            if size > LOOKUP_MAX_BYTES:
                raise MediaUnavailable(f"media lookup answered more than {LOOKUP_MAX_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @contextlib.contextmanager
    def _open(self, url: str, params: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """GET ``url``, following redirects here so each hop is checked against the provider's hosts and
        gets only its own credentials (httpx would carry ``X-API-Key`` to any host); refuse what is gone."""
        for _ in range(MAX_REDIRECTS + 1):
            if not self._hosts.allows(url):
                raise MediaRefused("host_not_allowed", f"{_where(url)} is not a {self._provider} media host")
            headers = {"Accept-Encoding": "identity", **self._hosts.credentials_for(url)}
            request = self._client.build_request(
                "GET", url, params=params, headers=headers, timeout=self._timeout()
            )
            response = self._client.send(request, stream=True)
            if response.next_request is None:
                break
            response.close()
            url, params = str(response.next_request.url), None
        else:
            raise MediaRefused("too_many_redirects", f"more than {MAX_REDIRECTS} redirects")
        try:
            _raise_for_status(response, credentialed=self._hosts.is_credentialed(url))
            yield response
        finally:
            response.close()

    def _timeout(self) -> httpx.Timeout:
        left = self._check_deadline()
        return httpx.Timeout(min(READ_SECONDS, left), connect=min(CONNECT_SECONDS, left))

    def _check_deadline(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise MediaUnavailable(f"not downloaded within {DOWNLOAD_SECONDS:g} s")
        return left

    def _download(self, url: str) -> dict[str, Any]:
        limit = self._settings.media_max_bytes
        folder = self._settings.media_path
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with self._open(url) as response:
                mime = _check_mime(response.headers.get("Content-Type"))
                _check_declared_size(response.headers.get("Content-Length"), limit)
                digest = hashlib.sha256()
                size = 0
                handle, temporary = tempfile.mkstemp(dir=folder, prefix=PART_PREFIX)
                try:
                    with os.fdopen(handle, "wb") as out:
                        # As the bytes arrive (not in fixed chunks), so the deadline is checked while a
                        # slow server trickles them.
                        for chunk in _decoded(response):
                            self._check_deadline()
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
                    # Replaced even when present (another message sent the same bytes): the file just
                    # written has a fresh mtime, which maintenance.purge_media judges retention by, so a
                    # recent message never loses a file an older one stored first.
                    os.replace(temporary, target)
                except BaseException:
                    Path(temporary).unlink(missing_ok=True)
                    raise
        except httpx.HTTPError as exc:
            raise MediaUnavailable(f"media download failed: {type(exc).__name__}") from None
        return {"path": str(target.resolve()), "size": size, "sha256": sha256, "mime_type": mime}


def _decoded(response: httpx.Response) -> Iterator[bytes]:
    """The body as the sender's file has it, read as the bytes arrive: inflated here when a server
    compressed it though we asked it not to, at most :data:`DECODE_CHUNK_BYTES` at a time, so the caller's
    size limit holds in memory too. Empty pieces are yielded as well, so the caller checks its deadline
    while a stream inflates to nothing."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        yield from response.iter_raw()
        return
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise MediaRefused("encoding_not_accepted", f"sent with Content-Encoding {encoding!r}")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header, told apart by zlib
    try:
        for raw in response.iter_raw():
            yield from _inflate(inflater, raw)
            if inflater.eof:
                return  # what follows the compressed stream is not part of the file
        yield from _inflate(inflater, b"")  # what zlib still holds of the last bytes
    except zlib.error:
        raise MediaRefused("bad_encoding", f"its {encoding} encoding is broken") from None
    if not inflater.eof:
        raise MediaRefused("bad_encoding", f"its {encoding} encoding ends early")


def _inflate(inflater: Any, raw: bytes) -> Iterator[bytes]:
    """``raw`` inflated, :data:`DECODE_CHUNK_BYTES` at most at a time."""
    while True:
        piece = inflater.decompress(raw, DECODE_CHUNK_BYTES)
        yield piece
        raw = inflater.unconsumed_tail
        # A full piece may leave output inside zlib though no input is left: ask again until one is short.
        if inflater.eof or (not raw and len(piece) < DECODE_CHUNK_BYTES):
            return


def _raise_for_status(response: httpx.Response, *, credentialed: bool) -> None:
    """Let only a 2xx through; refuse what is gone for good; leave for a retry what an outage or our
    credentials could explain.

    A 3xx reaching here is one with nowhere to follow (no ``Location``, or a 300 or 304, which httpx does
    not take for redirects; :meth:`_Fetcher._open` follows the others): its body is not the sender's file,
    so it is refused like a 4xx. A 401/403 from the host our credentials went to means the credentials (an
    expired Meta token, a rotated Twilio auth token), not the media: Meta keeps media 30 days and Twilio
    until it is deleted, so it waits for the fix, and the task keeps it as a dead letter if retries run out
    first.
    """
    status = response.status_code
    if response.is_success:
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
