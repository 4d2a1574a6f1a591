"""Where one webhook's CPU goes in the ingress: the request path in-process, no HTTP server in between.

    .venv/bin/python -m tests.bench.profile_ingress [--requests 5000] [--provider twilio|meta] [--top 25]

Builds the real app (``create_app``) against the bench's own redis-server and drives it through werkzeug's
WSGI test client with the same signed requests the ingress benchmark sends: first timed (CPU microseconds
per request, ingress and the bare app side by side; the difference is what wapipe adds), then under
cProfile, printing the functions with the most cumulative and own time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import sys
import time
from pathlib import Path

from tests.bench.harness import Bench, print_header
from tests.bench.ingress import meta_requests, twilio_requests

MODULE = "tests.bench.profile_ingress"
PUBLIC_URL = "http://bench.invalid"


def load_requests(path: Path) -> list[tuple[str, dict[str, str], bytes]]:
    out = []
    for line in path.read_text().splitlines():
        url_path, content_type, header, signature, body = line.split("\t", 4)
        out.append((url_path, {"Content-Type": content_type, header: signature}, body.encode()))
    return out


def drive(app, requests: list[tuple[str, dict[str, str], bytes]]) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds per request through the WSGI app (every answer must be 200)."""
    client = app.test_client()
    started = time.process_time()
    for path, headers, body in requests:
        response = client.post(path, headers=headers, data=body)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.get_data(as_text=True)}")
    return (time.process_time() - started) / len(requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--provider", choices=["twilio", "meta"], default="twilio")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    shown = sys.argv[1:] if argv is None else argv
    print_header("ingress request path, in-process CPU profile", MODULE, shown)

    with Bench("profile") as bench:
        token, secret = secrets.token_hex(16), secrets.token_hex(16)
        os.environ.update(
            bench.env(
                {
                    "TWILIO_AUTH_TOKEN": token,
                    "META_APP_SECRET": secret,
                    "WAPIPE_PUBLIC_URL": PUBLIC_URL,
                    "WAPIPE_LOG_LEVEL": "INFO",
                }
            )
        )
        from shared.settings import get_settings

        get_settings.cache_clear()
        from ingress import create_app
        from tests.bench.bare_app import create_app as create_bare

        app, bare = create_app(), create_bare()
        files = [bench.folder / f"{name}.tsv" for name in ("warm", "timed", "profiled")]
        for path in files:
            if args.provider == "twilio":
                twilio_requests(path, args.requests, token, PUBLIC_URL)
            else:
                meta_requests(path, args.requests, secret)
        warm, timed, profiled = (load_requests(path) for path in files)
        # Log lines go to stderr like in gunicorn; keep them off the terminal.
        devnull = open(os.devnull, "w")  # noqa: SIM115
        saved, sys.stderr = sys.stderr, devnull
        try:
            drive(app, warm)
            drive(bare, warm)
            per_request = drive(app, timed)
            per_bare = drive(bare, timed)
            profiler = cProfile.Profile()
            profiler.enable()
            drive(app, profiled)
            profiler.disable()
        finally:
            sys.stderr = saved
            devnull.close()
        bench.redis().flushall()

    print(
        f"{args.provider}: {per_request * 1e6:,.0f} us CPU per request through the ingress app,"
        f" {per_bare * 1e6:,.0f} us through the bare app (test client included in both);"
        f" wapipe adds {(per_request - per_bare) * 1e6:,.0f} us"
    )
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
