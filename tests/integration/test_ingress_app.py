"""The ingress app itself: health and readiness, JSON errors, body limit, API keys, /metrics."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
import structlog
from flask import Flask, jsonify, request
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ingress import create_app, health
from ingress.auth import require_api_key
from shared.logging import configure_logging
from shared.settings import load_settings
from tests.fakes.stalling_postgres import StallingPostgres
from tests.fakes.tcp_proxy import TCPProxy


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app(redis_client: redis.Redis) -> Flask:
    return create_app(load_settings())


def test_healthz(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_readyz_ok_with_both_servers(app: Flask) -> None:
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


def test_readyz_503_names_redis_when_unreachable() -> None:
    port = closed_port()
    app = create_app(load_settings(redis_url=f"redis://127.0.0.1:{port}/0"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    # The error's type only: its text names hosts and ports to anyone (/readyz needs no key).
    assert response.get_json() == {
        "status": "unavailable",
        "checks": {"postgres": "ok", "redis": "unreachable: ConnectionError"},
    }


def test_readyz_stays_ready_but_degraded_while_postgres_is_unreachable(redis_client: redis.Redis) -> None:
    # Webhooks need only Redis (events are queued, workers retry through a PostgreSQL outage): a 503 here
    # took every web replica out of the load balancer for the outage, and providers' webhooks were refused
    # (Twilio does not retry a 5xx: those messages were lost).
    port = closed_port()
    url = f"postgresql://postgres:hunter2@127.0.0.1:{port}/nope"
    response = create_app(load_settings(database_url=url)).test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "degraded",
        "checks": {"postgres": "unreachable: OperationalError", "redis": "ok"},
    }
    for secret in ("hunter2", str(port), "nope"):
        assert secret not in response.get_data(as_text=True)


def test_readyz_503_when_both_are_unreachable() -> None:
    settings = load_settings(
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
        database_url=f"postgresql://postgres@127.0.0.1:{closed_port()}/x",
    )
    response = create_app(settings).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "checks": {"postgres": "unreachable: OperationalError", "redis": "unreachable: ConnectionError"},
    }


def test_readyz_answers_when_postgres_lets_the_login_through_then_never_answers(
    redis_client: redis.Redis,
) -> None:
    # Behind PgBouncer with PostgreSQL down or saturated the login succeeds and the query waits (up to
    # PgBouncer's query_wait_timeout, 120 s): an unbounded check held a request thread that long, and
    # probes piled up until webhooks found no thread. The proxy holds the query for ever.
    database_url = os.environ["WAPIPE_DATABASE_URL"]
    given = conninfo_to_dict(database_url)
    with StallingPostgres(str(given.get("host", "127.0.0.1")), int(given.get("port", 5432))) as proxy:
        app = create_app(load_settings(database_url=proxy.url(database_url)))
        answers: list[tuple[int, dict[str, object]]] = []

        def probe() -> None:
            response = app.test_client().get("/readyz")
            answers.append((response.status_code, response.get_json()))

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        # A guard, not a measure: far above the check's bound, only so a hang fails instead of blocking.
        prober.join(timeout=30)
        assert not prober.is_alive(), "/readyz never answered"
        assert proxy.held > 0  # the query did reach the proxy and was held: the stall was real
    assert answers == [
        (200, {"status": "degraded", "checks": {"postgres": "unreachable: timed out", "redis": "ok"}})
    ]


def _readyz(app: Flask) -> tuple[int, dict[str, object]]:
    response = app.test_client().get("/readyz")
    return response.status_code, response.get_json()


def test_readyz_probes_within_its_window_open_one_postgres_connection(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /readyz needs no key: each probe opened a PostgreSQL connection of its own (a backend process and a
    # login), so anyone looping on it could exhaust max_connections and starve the workers and the API.
    # The window is widened so that a slow machine's probes all fall in it.
    monkeypatch.setattr(health, "READY_MAX_AGE_SECONDS", 60.0)
    database_url = os.environ["WAPIPE_DATABASE_URL"]
    given = conninfo_to_dict(database_url)
    with TCPProxy(str(given.get("host", "127.0.0.1")), int(given.get("port", 5432))) as proxy:
        app = create_app(
            load_settings(database_url=make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port)))
        )
        together = threading.Barrier(8)

        def probe() -> tuple[int, dict[str, object]]:
            together.wait()
            return _readyz(app)

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: probe(), range(8)))
        answers += [_readyz(app) for _ in range(5)]
    ready = (200, {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}})
    assert answers == [ready] * 13
    assert proxy.connections == 1


def test_readyz_sees_redis_gone_once_its_last_answer_is_older_than_the_window(
    test_servers: dict[str, str], redis_client: redis.Redis
) -> None:
    kwargs = redis_client.connection_pool.connection_kwargs
    with TCPProxy(str(kwargs.get("host", "127.0.0.1")), int(kwargs.get("port", 6379))) as proxy:
        app = create_app(load_settings(redis_url=f"redis://127.0.0.1:{proxy.port}/{kwargs.get('db', 0)}"))
        assert _readyz(app) == (200, {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}})
        proxy.close()
        time.sleep(health.READY_MAX_AGE_SECONDS)
        assert _readyz(app) == (
            503,
            {"status": "unavailable", "checks": {"postgres": "ok", "redis": "unreachable: ConnectionError"}},
        )


def test_readyz_logs_a_failed_check_once_not_once_per_probe(
    app_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # During an outage a probe loop wrote one warning per probe, burying the rest of the log.
    monkeypatch.setattr(health, "READY_MAX_AGE_SECONDS", 60.0)  # every probe in one window, however slow
    app = create_app(load_settings(redis_url=f"redis://127.0.0.1:{closed_port()}/0"))
    configure_logging("INFO", "json", stream=app_log)  # the app's own pipeline, into a buffer
    assert {_readyz(app)[0] for _ in range(5)} == {503}
    lines = [json.loads(line) for line in app_log.getvalue().splitlines()]
    assert [line["event"] for line in lines if line["event"].startswith("ingress.")] == ["ingress.not_ready"]


def test_readyz_answers_the_last_result_at_once_while_a_check_is_held(redis_client: redis.Redis) -> None:
    # One check at a time per process; the others must not queue behind it, holding request threads that
    # webhooks need for as long as PostgreSQL (behind PgBouncer) keeps the check waiting.
    database_url = os.environ["WAPIPE_DATABASE_URL"]
    given = conninfo_to_dict(database_url)
    timed_out = (200, {"status": "degraded", "checks": {"postgres": "unreachable: timed out", "redis": "ok"}})
    with StallingPostgres(str(given.get("host", "127.0.0.1")), int(given.get("port", 5432))) as proxy:
        app = create_app(load_settings(database_url=proxy.url(database_url)))
        assert _readyz(app) == timed_out  # the previous result
        held_before = proxy.held
        time.sleep(health.READY_MAX_AGE_SECONDS)
        checked: list[tuple[int, dict[str, object]]] = []
        checking = threading.Thread(target=lambda: checked.append(_readyz(app)), daemon=True)
        checking.start()
        while proxy.held == held_before and checking.is_alive():  # until its query is being held
            time.sleep(0.01)
        assert checking.is_alive()
        assert _readyz(app) == timed_out
        assert checking.is_alive(), "the second probe waited for the running check"
        # A guard, not a measure: far above the check's bound, only so a hang fails instead of blocking.
        checking.join(timeout=30)
    assert checked == [timed_out]


def test_app_creation_connects_to_nothing() -> None:
    # Both servers unreachable: creating the app still works (it only fails requests that need them).
    create_app(
        load_settings(
            redis_url=f"redis://127.0.0.1:{closed_port()}/0",
            database_url=f"postgresql://postgres@127.0.0.1:{closed_port()}/x",
        )
    )


def test_unknown_route_and_wrong_method_are_json(app: Flask) -> None:
    client = app.test_client()
    response = client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    response = client.delete("/healthz")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_body_over_limit_is_413_json(redis_client: redis.Redis) -> None:
    app = create_app(load_settings(max_body_bytes=1024, insecure_skip_signatures=True))
    response = app.test_client().post(
        "/webhooks/twilio", data="Body=" + "x" * 2048, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"
    assert redis_client.dbsize() == 0


def _with_test_routes(app: Flask) -> Flask:
    @app.post("/_test/json")
    def read_json() -> object:
        return jsonify(request.get_json())

    @app.get("/_test/boom")
    def boom() -> object:
        raise RuntimeError("db password is hunter2")

    @app.get("/_test/guarded")
    @require_api_key
    def guarded() -> object:
        return jsonify({"ok": True})

    return app


def test_bad_json_is_400_json_and_crash_is_500_without_internals(app: Flask) -> None:
    client = _with_test_routes(app).test_client()
    response = client.post("/_test/json", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_request"
    response = client.get("/_test/boom")
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    assert "hunter2" not in response.get_data(as_text=True)


def test_api_key_required(redis_client: redis.Redis) -> None:
    client = _with_test_routes(create_app(load_settings(api_keys="first-key, second-key"))).test_client()
    assert client.get("/_test/guarded").status_code == 401
    response = client.get("/_test/guarded", headers={"X-API-Key": "first-key-but-longer"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    for key in ("first-key", "second-key"):
        response = client.get("/_test/guarded", headers={"X-API-Key": key})
        assert (response.status_code, response.get_json()) == (200, {"ok": True})


def test_no_api_keys_configured_refuses_with_a_reason(redis_client: redis.Redis) -> None:
    client = _with_test_routes(create_app(load_settings(api_keys=""))).test_client()
    response = client.get("/_test/guarded", headers={"X-API-Key": "anything"})
    assert response.status_code == 401
    assert "WAPIPE_API_KEYS" in response.get_json()["error"]["message"]


@pytest.fixture
def app_log() -> Iterator[io.StringIO]:
    """What the app logs during the test, as JSON lines; the logging set-up is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_config = structlog.get_config()
    stream = io.StringIO()
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_config)


def test_each_api_call_logs_which_key_made_it_by_its_position(
    redis_client: redis.Redis, app_log: io.StringIO
) -> None:
    # Short keys: a hash of one would be as good as the key itself to whoever reads the log.
    keys = ("k1-alpha", "k2-bravo", "k3-charlie")
    app = create_app(load_settings(api_keys=",".join(keys), default_region="US"))
    configure_logging("INFO", "json", stream=app_log)  # the app's own pipeline, into a buffer
    client = app.test_client()

    response = client.delete("/api/v1/sessions/+14155550123", headers={"X-API-Key": keys[1]})
    assert response.status_code == 404  # no such session: any answer is a call made
    assert client.get("/api/v1/sessions", headers={"X-API-Key": "k9-wrong"}).status_code == 401

    lines = [json.loads(line) for line in app_log.getvalue().splitlines()]
    calls = [line for line in lines if line["event"] == "api.request"]
    assert len(calls) == 1, lines  # the refused call made no audit line
    assert calls[0]["caller_key"] == 2
    assert calls[0]["method"] == "DELETE"
    assert calls[0]["route"] == "/api/v1/sessions/<string:phone>"  # the rule, not the path with its number
    assert calls[0]["status"] == 404
    text = app_log.getvalue()
    for key in keys:
        assert key not in text
    assert "5550123" not in text
    # Bound for the request only: the next one on this thread (a webhook, a refused call) is not key 2's.
    assert "caller_key" not in structlog.contextvars.get_contextvars()


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if got == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_expose_the_counters(redis_client: redis.Redis) -> None:
    client = create_app(load_settings(twilio_auth_token="t" * 32)).test_client()
    before = client.get("/metrics").get_data(as_text=True)
    for _ in range(3):
        client.post("/webhooks/twilio", data={"MessageSid": "SM1"}, headers={"X-Twilio-Signature": "x"})
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    failures = "wapipe_webhook_signature_failures_total"
    assert _sample(text, failures, provider="twilio") - _sample(before, failures, provider="twilio") == 3
    received = "wapipe_webhooks_received_total"
    labels = {"provider": "twilio", "kind": "unknown", "outcome": "forbidden"}
    assert _sample(text, received, **labels) - _sample(before, received, **labels) == 3
    for name in ("wapipe_webhook_duplicates_total", "wapipe_enqueue_failures_total"):
        assert f"# TYPE {name} counter" in text
    assert re.search(r'wapipe_http_request_duration_seconds_count\{.*endpoint="twilio.receive"', text)


def _latency_series(text: str) -> set[tuple[str, str]]:
    """The (endpoint, method) pairs /metrics has a request-latency histogram for."""
    series = r'wapipe_http_request_duration_seconds_count\{endpoint="([^"]*)",method="([^"]*)"\}'
    return set(re.findall(series, text))


def test_invented_methods_and_paths_do_not_become_new_metric_series(redis_client: redis.Redis) -> None:
    # gunicorn hands on any method token, and every label value is a series kept for the process's
    # life: a client inventing methods or URLs must not grow /metrics (or memory) without bound.
    client = create_app(load_settings()).test_client()
    for i in range(20):
        client.open(f"/webhooks/meta/nothing-{i}", method=f"ZZ{i}")
        client.open("/healthz", method=f"QQ{i}")
        client.get(f"/no-such-page-{i}")
    series = _latency_series(client.get("/metrics").get_data(as_text=True))
    methods = {method for _endpoint, method in series}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert ("unmatched", "other") in series
    assert ("unmatched", "GET") in series
    assert not any("nothing" in endpoint or "no-such" in endpoint for endpoint, _method in series)


@pytest.fixture
def gunicorn_server(tmp_path: Path) -> Iterator[str]:
    """The ingress under real gunicorn with 2 workers and this repo's gunicorn_conf."""
    port = closed_port()
    env = os.environ | {
        "TWILIO_AUTH_TOKEN": "t" * 32,
        "WAPIPE_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        # A sync worker leaves queued connections to the others when --max-requests retires it.
        "WAPIPE_WEB_WORKER_CLASS": "sync",
    }
    # Each worker is replaced after 12 requests, so the counts are spread over many processes, most
    # of them gone by the time /metrics is scraped.
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:ingress.gunicorn_conf", "--workers", "2"]
    # A worker forked by --max-requests just as the test ends can miss the stop signal; the arbiter then
    # waits out the graceful timeout (20 s, seen in a full run) before killing it. Nothing here drains.
    argv += ["--graceful-timeout", "2"]
    proc = subprocess.Popen(
        [*argv, "--bind", f"127.0.0.1:{port}", "--max-requests", "12", "ingress:create_app()"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            raise RuntimeError("gunicorn did not start")
        yield base
    finally:
        proc.send_signal(signal.SIGINT)  # quick shutdown; nothing here needs draining
        proc.wait(timeout=30)


def _post_forged(base: str) -> int:
    response = httpx.post(
        base + "/webhooks/twilio",
        content=b"MessageSid=SM1&From=x&To=y",
        headers={"X-Twilio-Signature": "forged", "Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    return response.status_code


@pytest.mark.slow
def test_metrics_sum_across_gunicorn_workers(gunicorn_server: str, tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(_post_forged, [gunicorn_server] * 48))
    assert codes == [403] * 48
    # Many worker processes served them (each keeps its own counter file)...
    assert len(list(tmp_path.glob("counter_*.db"))) >= 3
    for _ in range(6):
        text = httpx.get(gunicorn_server + "/metrics", timeout=5).text
        # ...and whichever worker answers the scrape reports every worker's requests.
        assert _sample(text, "wapipe_webhook_signature_failures_total", provider="twilio") == 48
