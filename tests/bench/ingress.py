"""Benchmark 1: signed webhooks through the real ingress vs a bare "return 200" Flask app, same gunicorn.

    .venv/bin/python -m tests.bench.ingress [--runs 3] [--slices 3] [--duration 2] [--connections 8]

Both servers run side by side (gunicorn with ``ingress.gunicorn_conf``, ``--workers`` sync workers):
the bare app and the real ingress. Each run interleaves short slices, in turn: the bare app, Twilio
webhooks (form-encoded, ``X-Twilio-Signature``) and Meta webhooks (JSON, ``X-Hub-Signature-256``), each
at fixed concurrency with wrk, so a change in the machine's load affects all three alike. Every
request carries a valid signature and a message id no other request has (pre-generated and signed in
Python; wrk replays them), so each one costs the ingress its full path: signature, parse, dedupe SET NX
and LPUSH of a real Celery message in one Lua call on Redis. No worker runs: the queues grow and are
flushed between runs (the bench has its own redis-server). Prints req/s, p50/p99 and the ratio
ingress / bare of the same run, then medians with min-max over the runs.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from shared.providers.meta import signature as meta_signature
from shared.providers.twilio import signature as twilio_signature
from tests.bench.harness import REPO_ROOT, Bench, Spread, free_port, machine, print_header

MODULE = "tests.bench.ingress"
LUA = REPO_ROOT / "tests" / "bench" / "signed_requests.lua"
DATA = REPO_ROOT / "tests" / "data"
TWILIO_PATH = "/webhooks/twilio"
META_PATH = "/webhooks/meta"
WARMUP_SECONDS = 1.0
SENDERS = 1000  # distinct senders cycled through (phone parsing is cached per sender, as in production)


def twilio_requests(path: Path, count: int, token: str, public_url: str) -> None:
    """``count`` signed Twilio inbound-text webhooks, each with its own MessageSid, as wrk's TSV."""
    template = dict(
        pair.split("=", 1) for pair in (DATA / "twilio" / "inbound_text.txt").read_text().strip().split("&")
    )
    from urllib.parse import unquote_plus

    base = {key: unquote_plus(value) for key, value in template.items()}
    with path.open("w") as out:
        for index in range(count):
            sid = "SM" + uuid.uuid4().hex
            phone = f"+1555{index % SENDERS:07d}"
            params = {
                **base,
                "MessageSid": sid,
                "SmsSid": sid,
                "SmsMessageSid": sid,
                "From": f"whatsapp:{phone}",
                "WaId": phone[1:],
            }
            sig = twilio_signature.sign(token, public_url + TWILIO_PATH, params)
            body = urlencode(params)
            out.write(
                f"{TWILIO_PATH}\tapplication/x-www-form-urlencoded\t{twilio_signature.HEADER}\t{sig}\t{body}\n"
            )


def meta_requests(path: Path, count: int, secret: str) -> None:
    """``count`` signed Meta text-message webhooks, each with its own wamid, as wrk's TSV."""
    template = json.loads((DATA / "meta" / "text.json").read_text())
    with path.open("w") as out:
        for index in range(count):
            value = template["entry"][0]["changes"][0]["value"]
            value["messages"][0]["id"] = f"wamid.{uuid.uuid4().hex}"
            wa_id = f"1555{index % SENDERS:07d}"
            value["messages"][0]["from"] = wa_id
            value["contacts"][0]["wa_id"] = wa_id
            # Meta sends ASCII-escaped JSON (ensure_ascii), which also keeps tabs/newlines out of the line.
            body = json.dumps(template, separators=(",", ":")).encode()
            sig = meta_signature.sign(secret, body)
            out.write(f"{META_PATH}\tapplication/json\t{meta_signature.HEADER}\t{sig}\t{body.decode()}\n")


def wrk(
    url: str,
    requests_file: Path,
    *,
    duration: float,
    connections: int,
    threads: int,
) -> dict[str, Any]:
    argv = [
        "wrk",
        f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s",
        "-s", str(LUA), url, "--", str(requests_file), str(threads),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            result = json.loads(line.removeprefix("WRK_RESULT "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=3, help="interleaved measurements per run (default 3)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per slice (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2, as wapipe web)")
    parser.add_argument("--max-rate", type=int, default=6000, help="req/s the fresh ids suffice for")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(f"{MODULE}: needs wrk, the HTTP load generator (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    shown = sys.argv[1:] if argv is None else argv
    print_header("ingress: signed webhooks vs bare Flask, same gunicorn", MODULE, shown)

    # Fresh signed requests for every slice (generated between slices, never while measuring), enough
    # for --max-rate; a slice that sends more replays ids, which the output flags (a duplicate is
    # cheaper for the ingress and would flatter it).
    per_slice = int(args.max_rate * args.duration)
    kinds = ("bare", "twilio", "meta")
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    replayed = 0
    with Bench("ingress", keep_logs=args.keep_logs) as bench:
        token, secret = secrets.token_hex(16), secrets.token_hex(16)
        port = free_port()
        public_url = f"http://127.0.0.1:{port}"
        env = bench.env(
            {
                "TWILIO_AUTH_TOKEN": token,
                "META_APP_SECRET": secret,
                "WAPIPE_PUBLIC_URL": public_url,
                "WAPIPE_LOG_LEVEL": "INFO",
            }
        )
        bare_proc, bare_url = bench.gunicorn(
            "tests.bench.bare_app:create_app()", workers=args.workers, env=env
        )
        _, ingress_url = bench.gunicorn("ingress:create_app()", port=port, workers=args.workers, env=env)
        urls = {"bare": bare_url, "twilio": ingress_url, "meta": ingress_url}
        client = bench.redis()
        files = {"twilio": bench.folder / "twilio.tsv", "meta": bench.folder / "meta.tsv"}

        def measure(kind: str, duration: float) -> dict[str, Any]:
            nonlocal replayed
            # The bare app gets the same Twilio requests (it ignores them).
            if kind in ("bare", "twilio"):
                twilio_requests(files["twilio"], per_slice, token, public_url)
            else:
                meta_requests(files["meta"], per_slice, secret)
            path = files["meta" if kind == "meta" else "twilio"]
            client.flushall()
            result = wrk(
                urls[kind], path, duration=duration, connections=args.connections, threads=args.threads
            )
            result["enqueued"] = client.llen("inbound")
            if kind != "bare" and result["requests"] > per_slice:
                replayed += 1
            return result

        for kind in kinds:  # warm-up: imports, caches, connections
            measure(kind, WARMUP_SECONDS)
        for run in range(args.runs):
            # Short slices, interleaved, so a change in the machine's load hits all three alike.
            slices: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
            for _ in range(args.slices):
                for kind in kinds:
                    slices[kind].append(measure(kind, args.duration))
            for kind in kinds:
                merged = _merge(slices[kind])
                results[kind].append(merged)
                print(
                    f"run {run + 1} {kind:6s}: {merged['rps']:8,.0f} req/s  p50 {merged['p50_ms']:6.2f} ms"
                    f"  p99 {merged['p99_ms']:6.2f} ms  non-2xx {merged['non2xx']}  errors {merged['errors']}"
                    + ("" if kind == "bare" else f"  enqueued {merged['enqueued']:,}/{merged['requests']:,}"),
                    flush=True,
                )
        client.flushall()
        # What gunicorn_conf chose (worker class, threads), as gunicorn itself reports it.
        worker_class = next(
            (
                line.split("Using worker: ", 1)[1]
                for line in bare_proc.output().splitlines()
                if "Using worker: " in line
            ),
            "?",
        )

    print(
        f"\nmedian (min-max) over {args.runs} runs of {args.slices} interleaved {args.duration:g} s slices;"
        f" wrk -t{args.threads} -c{args.connections}; gunicorn {args.workers} workers (ingress.gunicorn_conf,"
        f" worker class {worker_class}); p50/p99: median over slices"
    )
    print(f"{'':8s} {'req/s':>26s} {'p50 ms':>22s} {'p99 ms':>22s} {'ratio vs bare':>22s}")
    for kind in kinds:
        rps = Spread.of([r["rps"] for r in results[kind]])
        p50 = Spread.of([r["p50_ms"] for r in results[kind]])
        p99 = Spread.of([r["p99_ms"] for r in results[kind]])
        ratio = Spread.of(
            [r["rps"] / bare["rps"] for r, bare in zip(results[kind], results["bare"], strict=True)]
        )
        print(f"{kind:8s} {rps.fmt():>26s} {p50.fmt(2):>22s} {p99.fmt(2):>22s} {ratio.fmt(2):>22s}")
    if replayed:
        print(f"WARNING: {replayed} slices ran out of fresh ids and replayed some; raise --max-rate")
    print("machine after:", machine())
    return 0


def _merge(slices: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(s["requests"] for s in slices)
    seconds = sum(s["duration_us"] for s in slices) / 1e6
    return {
        "requests": requests,
        "rps": requests / seconds,
        "p50_ms": statistics.median(s["p50_us"] for s in slices) / 1000,
        "p99_ms": statistics.median(s["p99_us"] for s in slices) / 1000,
        "non2xx": sum(s["non2xx"] for s in slices),
        "errors": sum(s["connect_errors"] + s["read_errors"] + s["timeouts"] for s in slices),
        "enqueued": sum(s["enqueued"] for s in slices),
    }


if __name__ == "__main__":
    sys.exit(main())
