"""inbound.fetch_media against fake provider servers: Meta's two-step download with the bearer token, Twilio's
basic auth (never forwarded to another host), the size limit (declared and streamed), the MIME allow-list,
the hosts media may come from (every redirect hop too), the download deadline, idempotency, and a real
inbound worker downloading what inbound.route enqueued."""

from __future__ import annotations

import base64
import hashlib
import json
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from shared.queues import Job, Publisher
from shared.settings import Settings, load_settings
from shared.wire.events import InboundMessage, Media
from tests.fakes.media_host import MediaHost
from tests.fakes.meta_graph import FakeGraph
from tests.fakes.twilio_api import ACCOUNT_SID, AUTH_TOKEN
from tests.integration.test_inbound_routing import queued
from workers import media
from workers import signals as _give_up  # noqa: F401 - connects the task_failure handler, as a worker does
from workers.inbound import route
from workers.media import MediaUnavailable, fetch_media

TOKEN = "graph-media-token"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40  # ~10 kB
BASIC = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(TOKEN) as fake:
        yield fake


@pytest.fixture
def host() -> Iterator[MediaHost]:
    with MediaHost() as fake:
        yield fake


def inbound(provider: str, *media: Media) -> dict:
    return InboundMessage(
        provider=provider,
        provider_message_id=f"wamid.{uuid.uuid4().hex}" if provider == "meta" else f"MM{uuid.uuid4().hex}",
        business_number="+14155238886" if provider == "twilio" else "1234567890",
        sender_phone="+14155550123",
        type="image",
        media=list(media),
    ).model_dump(mode="json")


def stored_message(event: dict) -> int:
    outcome = route(event, load_settings())
    assert outcome.message_id is not None
    return outcome.message_id


def media_column(db: psycopg.Connection, message_id: int) -> list[dict]:
    return db.execute("SELECT media FROM messages WHERE id = %s", (message_id,)).fetchone()["media"]


def meta_settings(graph: FakeGraph, media_dir: Path, **overrides: object) -> Settings:
    defaults = {"meta_access_token": TOKEN, "meta_graph_url": graph.url, "media_dir": media_dir}
    return load_settings(**{**defaults, **overrides})


def twilio_settings(host: MediaHost, media_dir: Path, **overrides: object) -> Settings:
    return load_settings(
        **{
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_auth_token": AUTH_TOKEN,
            "twilio_api_url": host.url,  # the fake stands in for api.twilio.com
            "media_dir": media_dir,
            **overrides,
        }
    )


def files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


def test_route_enqueues_the_download_for_messages_with_media(db, redis_client) -> None:
    message_id = stored_message(inbound("meta", Media(media_id="m-1", mime_type="image/jpeg")))
    text_only = route(
        InboundMessage(
            provider="meta",
            provider_message_id="wamid.text",
            business_number="1",
            sender_phone="+14155550123",
        ).model_dump(mode="json"),
        load_settings(),
    )

    assert text_only.message_id is not None
    assert queued(redis_client, "inbound") == [("inbound.fetch_media", {"message_id": message_id})]


def said(text: str) -> dict:
    """A text from the sender of :func:`inbound`'s Meta messages, to the same number."""
    return InboundMessage(
        provider="meta",
        provider_message_id=f"wamid.{uuid.uuid4().hex}",
        business_number="1234567890",
        sender_phone="+14155550123",
        text=text,
    ).model_dump(mode="json")


def test_media_of_a_rate_limited_message_is_not_downloaded(db, redis_client) -> None:
    # One sender posting file after file would otherwise fill WAPIPE_MEDIA_DIR: the limit gated only the
    # answer, not the download.
    settings = load_settings(rate_limit_per_minute=1)
    assert route(said("hello"), settings).action == "handler"
    photo = inbound("meta", Media(media_id="m-1", mime_type="image/jpeg"))

    outcome = route(photo, settings)
    db.execute("UPDATE messages SET routed_at = NULL WHERE id = %s", (outcome.message_id,))
    route(photo, settings)  # redelivered: decided again, still over the limit

    assert outcome.action == "rate_limited"
    assert queued(redis_client, "inbound") == []
    # What the provider sent is kept: the media id, to fetch from Meta while it keeps the file.
    assert media_column(db, outcome.message_id) == [{"media_id": "m-1", "mime_type": "image/jpeg"}]


@pytest.mark.parametrize("text", ["STOP", ""], ids=["the opt-out itself", "after opting out"])
def test_media_from_an_opted_out_sender_is_not_downloaded(db, redis_client, text: str) -> None:
    if not text:
        assert route(said("STOP"), load_settings()).action == "opted_out"
    photo = InboundMessage.model_validate(inbound("meta", Media(media_id="m-1", mime_type="image/jpeg")))
    if text:
        photo = photo.model_copy(update={"text": text})  # a photo captioned STOP

    outcome = route(photo.model_dump(mode="json"), load_settings())

    assert outcome.action in ("opted_out", "from_opted_out")
    assert queued(redis_client, "inbound") == []
    assert media_column(db, outcome.message_id) == [{"media_id": "m-1", "mime_type": "image/jpeg"}]


def test_media_sent_to_a_person_handling_the_conversation_is_downloaded(db, redis_client) -> None:
    route(said("hello"), load_settings())
    db.execute("UPDATE conversations SET status = 'handoff'")

    outcome = route(inbound("meta", Media(media_id="m-1", mime_type="image/jpeg")), load_settings())

    assert outcome.action == "handoff"
    assert queued(redis_client, "inbound") == [("inbound.fetch_media", {"message_id": outcome.message_id})]


def test_meta_media_is_resolved_then_downloaded_with_the_bearer_token(
    db, redis_client, graph: FakeGraph, tmp_path: Path
) -> None:
    graph.add_media("m-1", JPEG, "image/jpeg")
    message_id = stored_message(
        inbound("meta", Media(media_id="m-1", mime_type="image/jpeg", caption="the part"))
    )

    fetch_media(message_id, settings=meta_settings(graph, tmp_path))

    [entry] = media_column(db, message_id)
    sha256 = hashlib.sha256(JPEG).hexdigest()
    assert entry["media_id"] == "m-1"
    assert entry["caption"] == "the part"
    assert entry["stored"] == {
        "path": str((tmp_path / sha256[:2] / f"{sha256}.jpg").resolve()),
        "size": len(JPEG),
        "sha256": sha256,
        "mime_type": "image/jpeg",
    }
    assert Path(entry["stored"]["path"]).read_bytes() == JPEG
    assert [(r.method, r.path.split("?")[0]) for r in graph.received] == [
        ("GET", "/v21.0/m-1"),
        ("GET", "/media-download/m-1"),
    ]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in graph.received)

    # Safe to run twice: stored entries are not fetched again.
    fetch_media(message_id, settings=meta_settings(graph, tmp_path))
    assert len(graph.received) == 2


def test_a_declared_size_over_the_limit_is_refused_before_downloading(
    db, redis_client, graph: FakeGraph, tmp_path: Path
) -> None:
    graph.add_media("big", JPEG, "image/jpeg", declared_size=50 * 1024 * 1024)
    message_id = stored_message(inbound("meta", Media(media_id="big")))

    fetch_media(message_id, settings=meta_settings(graph, tmp_path))

    [entry] = media_column(db, message_id)
    assert entry["fetch_error"]["code"] == "too_large"
    assert "stored" not in entry
    assert [r.path for r in graph.received] == ["/v21.0/big"]  # the bytes were never asked for
    assert files(tmp_path) == []


def test_a_stream_over_the_limit_is_aborted_and_leaves_no_file(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    # No Content-Length: only counting the bytes as they arrive can catch it.
    url = host.serve("/media/huge", JPEG * 4, "image/jpeg", declare_length=False, auth=BASIC)
    message_id = stored_message(inbound("twilio", Media(url=url, mime_type="image/jpeg")))

    fetch_media(message_id, settings=twilio_settings(host, tmp_path, media_max_bytes=len(JPEG)))

    [entry] = media_column(db, message_id)
    assert entry["fetch_error"]["code"] == "too_large"
    assert files(tmp_path) == []  # the partial download was removed


def test_a_type_outside_the_allow_list_is_refused(db, redis_client, host: MediaHost, tmp_path: Path) -> None:
    url = host.serve("/media/tool.exe", b"MZ\x90\x00", "application/x-msdownload", auth=BASIC)
    message_id = stored_message(inbound("twilio", Media(url=url, mime_type="application/x-msdownload")))

    fetch_media(message_id, settings=twilio_settings(host, tmp_path))

    [entry] = media_column(db, message_id)
    assert entry["fetch_error"]["code"] == "mime_not_allowed"
    assert "application/x-msdownload" in entry["fetch_error"]["message"]
    assert files(tmp_path) == []


def test_twilio_media_uses_basic_auth_which_never_follows_a_redirect_elsewhere(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    with MediaHost() as cdn:
        cdn_url = cdn.serve("/cdn/photo.png", b"\x89PNG\r\n\x1a\nfake", "image/png")
        url = host.serve("/2010-04-01/Accounts/AC/Messages/MM/Media/ME1", redirect_to=cdn_url, auth=BASIC)
        message_id = stored_message(inbound("twilio", Media(url=url, mime_type="image/png")))

        fetch_media(message_id, settings=twilio_settings(host, tmp_path, media_hosts=[cdn.origin]))

        [entry] = media_column(db, message_id)
        assert entry["stored"]["mime_type"] == "image/png"
        assert entry["stored"]["path"].endswith(".png")
        assert host.requests[0].headers["Authorization"] == BASIC
        assert "Authorization" not in cdn.requests[0].headers


def test_a_real_inbound_worker_downloads_what_route_enqueued(
    db, redis_client, graph: FakeGraph, tmp_path: Path, test_servers, start_worker, wait_for
) -> None:
    graph.add_media("m-9", JPEG, "image/jpeg")
    start_worker(
        ["inbound"],
        env={"META_ACCESS_TOKEN": TOKEN, "META_GRAPH_URL": graph.url, "WAPIPE_MEDIA_DIR": str(tmp_path)},
    )
    event = inbound("meta", Media(media_id="m-9", mime_type="image/jpeg"))
    key = InboundMessage.model_validate(event).dedupe_key
    Publisher(test_servers["WAPIPE_REDIS_URL"]).publish([Job("inbound.route", {"event": event}, key)])

    row = wait_for(
        lambda: db.execute("SELECT media FROM messages WHERE media->0 ? 'stored'").fetchone(),
        what="the media to be stored",
    )
    assert Path(row["media"][0]["stored"]["path"]).read_bytes() == JPEG


def test_kapso_media_ids_resolve_through_the_proxy_and_its_key_stays_on_kapso_hosts(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    with FakeGraph(TOKEN, version="v24.0", api_key=True) as kapso:
        kapso.add_media("k-1", JPEG, "image/jpeg")
        settings = load_settings(
            kapso_api_key=TOKEN, kapso_api_url=kapso.url, media_dir=tmp_path, media_hosts=[host.origin]
        )
        by_id = stored_message(inbound("kapso", Media(media_id="k-1", mime_type="image/jpeg")))
        elsewhere = host.serve("/kapso-cdn/a.png", b"\x89PNG\r\n\x1a\nfake", "image/png")
        by_url = stored_message(inbound("kapso", Media(url=elsewhere, mime_type="image/png")))

        fetch_media(by_id, settings=settings)
        fetch_media(by_url, settings=settings)

        assert media_column(db, by_id)[0]["stored"]["sha256"] == hashlib.sha256(JPEG).hexdigest()
        assert [r.path.split("?")[0] for r in kapso.received] == ["/v24.0/k-1", "/media-download/k-1"]
        assert "phone_number_id=1234567890" in kapso.received[0].path
        assert all(r.headers["X-API-Key"] == TOKEN for r in kapso.received)
        assert media_column(db, by_url)[0]["stored"]["mime_type"] == "image/png"
        assert "X-API-Key" not in host.requests[0].headers  # not a Kapso host: no key


@pytest.mark.parametrize(
    "failure",
    [MediaUnavailable("the provider answered HTTP 503"), OSError(28, "No space left on device")],
    ids=["provider down past every retry", "unforeseen"],
)
def test_a_download_that_gives_up_is_kept_as_a_dead_letter(
    db, redis_client, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    # The provider had its 200 for the message: its media must not just vanish when the task gives up.
    message_id = stored_message(inbound("meta", Media(media_id="m1")))
    attempts: list[int] = []

    def fails(_: int) -> None:
        attempts.append(1)
        raise failure

    monkeypatch.setattr(media, "fetch_media", fails)

    assert media.fetch_media_task.apply(kwargs={"message_id": message_id}).state == "FAILURE"

    expected = 1 + media.fetch_media_task.max_retries if isinstance(failure, MediaUnavailable) else 1
    assert len(attempts) == expected
    [letter] = db.execute("SELECT task_name, message_id, payload FROM dead_letters").fetchall()
    assert letter == {
        "task_name": "inbound.fetch_media",
        "message_id": message_id,
        "payload": {"message_id": message_id},
    }


def test_an_expired_meta_token_keeps_the_media_for_a_retry(
    db, redis_client, graph: FakeGraph, tmp_path: Path
) -> None:
    # Graph answers 401 to an expired token; Meta keeps the media 30 days, so it must wait for a new token.
    graph.add_media("m-1", JPEG, "image/jpeg")
    message_id = stored_message(inbound("meta", Media(media_id="m-1", mime_type="image/jpeg")))

    with pytest.raises(MediaUnavailable):
        fetch_media(message_id, settings=meta_settings(graph, tmp_path, meta_access_token="expired"))

    [entry] = media_column(db, message_id)
    assert "fetch_error" not in entry
    fetch_media(message_id, settings=meta_settings(graph, tmp_path))
    assert Path(media_column(db, message_id)[0]["stored"]["path"]).read_bytes() == JPEG


def test_twilio_refusing_the_credentials_keeps_the_media_for_a_retry(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    url = host.serve("/2010-04-01/Accounts/AC/Messages/MM/Media/ME1", JPEG, "image/jpeg", auth=BASIC)
    message_id = stored_message(inbound("twilio", Media(url=url, mime_type="image/jpeg")))

    with pytest.raises(MediaUnavailable):
        fetch_media(message_id, settings=twilio_settings(host, tmp_path, twilio_auth_token="rotated"))

    [entry] = media_column(db, message_id)
    assert "fetch_error" not in entry
    fetch_media(message_id, settings=twilio_settings(host, tmp_path))
    assert Path(media_column(db, message_id)[0]["stored"]["path"]).read_bytes() == JPEG


def test_twilio_media_urls_off_twilio_hosts_are_refused_unfetched(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    # A forged webhook's MediaUrl could name an internal service; nothing is requested from it.
    with MediaHost() as internal:
        url = internal.serve("/admin/export.jpg", JPEG, "image/jpeg")
        message_id = stored_message(inbound("twilio", Media(url=url, mime_type="image/jpeg")))

        fetch_media(message_id, settings=twilio_settings(host, tmp_path))

        [entry] = media_column(db, message_id)
        assert entry["fetch_error"]["code"] == "host_not_allowed"
        assert internal.requests == []
        assert files(tmp_path) == []


def test_a_meta_url_off_meta_hosts_never_gets_the_bearer_token(
    db, redis_client, graph: FakeGraph, tmp_path: Path
) -> None:
    with MediaHost() as elsewhere:
        url = elsewhere.serve("/collect.jpg", JPEG, "image/jpeg")
        message_id = stored_message(inbound("meta", Media(url=url, mime_type="image/jpeg")))

        fetch_media(message_id, settings=meta_settings(graph, tmp_path))

        assert media_column(db, message_id)[0]["fetch_error"]["code"] == "host_not_allowed"
        assert elsewhere.requests == []


def test_a_redirect_off_the_provider_hosts_is_not_followed(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    with MediaHost() as internal:
        target = internal.serve("/metadata", JPEG, "image/jpeg")
        url = host.serve("/2010-04-01/Accounts/AC/Messages/MM/Media/ME1", redirect_to=target, auth=BASIC)
        message_id = stored_message(inbound("twilio", Media(url=url, mime_type="image/jpeg")))

        fetch_media(message_id, settings=twilio_settings(host, tmp_path))

        assert media_column(db, message_id)[0]["fetch_error"]["code"] == "host_not_allowed"
        assert len(host.requests) == 1
        assert internal.requests == []


@pytest.mark.parametrize("status", [302, 304, 300])
def test_a_redirect_with_nowhere_to_go_is_not_stored_as_the_media(
    db, redis_client, host: MediaHost, tmp_path: Path, status: int
) -> None:
    # A 3xx without a Location has no next hop: its body (an error page, or anything) is not the file.
    url = host.serve(
        "/2010-04-01/Accounts/AC/Messages/MM/Media/ME1", JPEG, "image/jpeg", auth=BASIC, status=status
    )
    message_id = stored_message(inbound("twilio", Media(url=url, mime_type="image/jpeg")))

    fetch_media(message_id, settings=twilio_settings(host, tmp_path))

    [entry] = media_column(db, message_id)
    assert "stored" not in entry
    assert entry["fetch_error"]["code"] == f"http_{status}"
    assert files(tmp_path) == []


def peak_memory(call: Callable[[], object]) -> int:
    """The most memory Python held at once, in bytes, while ``call`` ran (its exceptions are let through)."""
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("gzip", ["accepted", "always"])
def test_media_is_asked_for_uncompressed_and_stored_as_the_sender_sent_it(
    db, redis_client, host: MediaHost, tmp_path: Path, gzip: str
) -> None:
    url = host.serve("/media/photo", JPEG, "image/jpeg", auth=BASIC, gzip=gzip)
    message_id = stored_message(inbound("twilio", Media(url=url, mime_type="image/jpeg")))

    fetch_media(message_id, settings=twilio_settings(host, tmp_path))

    # Before: httpx asked for gzip, so a server compressed whatever it sent.
    assert host.requests[0].headers["Accept-Encoding"] == "identity"
    # One that compresses anyway is decoded: the file is the photo, not its gzip.
    [entry] = media_column(db, message_id)
    assert Path(entry["stored"]["path"]).read_bytes() == JPEG


def test_a_compressed_answer_is_not_inflated_in_memory_past_the_size_limit(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    # 64 MiB of zeros gzip to 64 kB: httpx inflated each chunk the socket gave whole, so the worker held
    # tens of megabytes before the limit was even checked. A server that ignores Accept-Encoding sends it.
    url = host.serve("/media/bomb", bytes(64 * 1024 * 1024), "image/jpeg", auth=BASIC, gzip="always")
    message_id = stored_message(inbound("twilio", Media(url=url, mime_type="image/jpeg")))
    settings = twilio_settings(host, tmp_path, media_max_bytes=1024 * 1024)

    peak = peak_memory(lambda: fetch_media(message_id, settings=settings))

    assert media_column(db, message_id)[0]["fetch_error"]["code"] == "too_large"
    assert files(tmp_path) == []
    assert peak < 8 * 1024 * 1024


def test_a_compressed_media_lookup_is_not_inflated_in_memory_past_its_limit(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    lookup = json.dumps({"url": host.url + "/files/a.jpg", "mime_type": "image/jpeg"}).encode()
    padded = lookup + b" " * (64 * 1024 * 1024)
    host.serve("/m-bomb", padded, "application/json", auth=f"Bearer {TOKEN}", gzip="always")
    message_id = stored_message(inbound("meta", Media(media_id="m-bomb", mime_type="image/jpeg")))
    settings = load_settings(meta_access_token=TOKEN, meta_graph_url=host.url, media_dir=tmp_path)

    def fetch() -> None:
        with pytest.raises(MediaUnavailable):
            fetch_media(message_id, settings=settings)

    assert peak_memory(fetch) < 8 * 1024 * 1024
    assert "stored" not in media_column(db, message_id)[0]


def test_the_kapso_key_stays_behind_when_a_redirect_leaves_the_kapso_api(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    # httpx drops Authorization on a redirect to another origin, but not X-API-Key.
    with MediaHost() as storage:
        stored_at = storage.serve("/bucket/a.png", b"\x89PNG\r\n\x1a\nfake", "image/png")
        url = host.serve("/media/1479537139650973", redirect_to=stored_at)
        message_id = stored_message(inbound("kapso", Media(url=url, mime_type="image/png")))
        settings = load_settings(
            kapso_api_key=TOKEN,
            kapso_api_url=f"{host.origin}/meta/whatsapp/v24.0",
            media_dir=tmp_path,
            media_hosts=[storage.origin],
        )

        fetch_media(message_id, settings=settings)

        assert media_column(db, message_id)[0]["stored"]["mime_type"] == "image/png"
        assert host.requests[0].headers["X-API-Key"] == TOKEN
        assert "X-API-Key" not in storage.requests[0].headers


def test_a_download_past_its_deadline_is_left_for_a_retry(
    db, redis_client, host: MediaHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server sending a kilobyte now and then never trips the per-read timeout; the deadline stops it,
    # and the media waits for the task's next attempt instead of holding the worker.
    monkeypatch.setattr(media, "DOWNLOAD_SECONDS", 0.5)
    url = host.serve("/media/slow", JPEG, "image/jpeg", auth=BASIC, trickle=0.1)
    message_id = stored_message(inbound("twilio", Media(url=url, mime_type="image/jpeg")))

    with pytest.raises(MediaUnavailable):
        fetch_media(message_id, settings=twilio_settings(host, tmp_path))

    [entry] = media_column(db, message_id)
    assert "stored" not in entry
    assert "fetch_error" not in entry
    assert files(tmp_path) == []


def test_a_media_lookup_answer_far_longer_than_a_media_object_is_not_read_whole(
    db, redis_client, host: MediaHost, tmp_path: Path
) -> None:
    # Graph's media object is a few hundred bytes of JSON. An answer megabytes long is a broken or hostile
    # endpoint: it was read whole into the worker's memory (and one without end, until memory ran out).
    image = host.serve("/files/a.jpg", JPEG, "image/jpeg", auth=f"Bearer {TOKEN}")
    lookup = {"url": image, "mime_type": "image/jpeg", "file_size": len(JPEG)}
    padded = json.dumps(lookup).encode() + b" " * (2 * 1024 * 1024)
    host.serve("/m-huge", padded, "application/json", auth=f"Bearer {TOKEN}")
    message_id = stored_message(inbound("meta", Media(media_id="m-huge", mime_type="image/jpeg")))
    settings = load_settings(meta_access_token=TOKEN, meta_graph_url=host.url, media_dir=tmp_path)

    with pytest.raises(MediaUnavailable):
        fetch_media(message_id, settings=settings)

    [entry] = media_column(db, message_id)
    assert "stored" not in entry
    assert [request.path for request in host.requests] == ["/m-huge"]


def test_a_message_of_many_slow_media_stops_at_the_tasks_own_deadline(
    db, redis_client, host: MediaHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each entry has its own deadline, but a message of ten slow media (as Twilio allows) would add them up
    # past the task's soft time limit, and a task killed there is a dead letter, not a retry. The task's
    # deadline stops it after the first: that one is kept, the rest wait for the retry.
    monkeypatch.setattr(media, "TASK_DOWNLOAD_SECONDS", 0.8)
    fast = host.serve("/media/fast", JPEG, "image/jpeg", auth=BASIC)
    slow = [host.serve(f"/media/slow{n}", JPEG, "image/jpeg", auth=BASIC, trickle=0.1) for n in range(3)]
    entries = [Media(url=url, mime_type="image/jpeg") for url in (fast, *slow)]
    message_id = stored_message(inbound("twilio", *entries))

    with pytest.raises(MediaUnavailable):
        fetch_media(message_id, settings=twilio_settings(host, tmp_path))

    stored = media_column(db, message_id)
    assert "stored" in stored[0]
    assert all("stored" not in entry and "fetch_error" not in entry for entry in stored[1:])
