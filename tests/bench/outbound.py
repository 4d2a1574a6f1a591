"""Benchmark 3: a burst of ``POST /api/v1/messages`` to a fake provider that answers after 150 ms.

    .venv/bin/python -m tests.bench.outbound [--messages 20000] [--time-limit 120] [--runs 3]
        [--processes 4] [--pool threads] [--send-rate 1000]

The real ingress (gunicorn) takes the burst (32 concurrent API calls, each a text to its own recipient,
so per-recipient pacing never holds one back; recipients are seeded as contacts who wrote within 24 h,
so WhatsApp's window allows free text); ``notify`` workers (``wapipe worker -Q notify,status`` with
``--processes`` and ``--pool``) send through the Twilio SDK to the fake Twilio API, which answers 201
after ``--delay`` seconds. Bounded by ``--time-limit`` seconds per run: sends not made by then are
counted as not made, not waited for.

Figures per run: API accepts/s; sends/s sustained (sends / (last - first send) at the provider), and
split into sends/s while the API takes the burst and after it; p50/p99
from the API's 202 to the provider call; the highest number of sends the provider saw in any one-second
window, against ``WAPIPE_SEND_RATE``. Reference in the same run: a bare asyncio HTTP client (aiohttp,
256 concurrent) posting the same number of messages to the same fake provider.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import secrets
import sys
import time
from collections import defaultdict
from typing import Any

import aiohttp
import psycopg

from tests.bench.harness import (
    PYTHON,
    Bench,
    Spread,
    cpu_by_role,
    cpu_snapshot,
    free_port,
    http_ok,
    machine,
    percentile,
    print_header,
    wait_until,
)
from tests.bench.pipeline import ACCOUNT_SID, BUSINESS_NUMBER, Stack, fake_records, reset_fake
from tests.fakes.twilio_api import busiest_second

MODULE = "tests.bench.outbound"
API_KEY = "bench-" + secrets.token_hex(8)
TEXT = "Your ticket #4821 was updated: a technician is on the way."


def seed_contacts(database_url: str, count: int) -> list[str]:
    """``count`` contacts who wrote a minute ago (inside WhatsApp's 24-hour window); their phones."""
    # Valid numbers (the API normalises strictly): San Francisco, exchange 200 onwards.
    phones = [f"+1415{2000000 + index:07d}" for index in range(count)]
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy("COPY contacts (phone, last_inbound_at) FROM STDIN") as copy,
    ):
        for phone in phones:
            copy.write_row((phone, "now"))
    return phones


def start(bench: Bench, *, delay: float, send_rate: float) -> Stack:
    token = secrets.token_hex(16)
    fake_port, ingress_port = free_port(), free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    ingress = f"http://127.0.0.1:{ingress_port}"
    env = bench.env(
        {
            "WAPIPE_PROVIDER": "twilio",
            "WAPIPE_TWILIO_API_URL": fake,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": token,
            "TWILIO_WHATSAPP_NUMBER": BUSINESS_NUMBER,
            "WAPIPE_PUBLIC_URL": ingress,
            "WAPIPE_API_KEYS": API_KEY,
            "WAPIPE_SEND_RATE": f"{send_rate:g}",
            "WAPIPE_LOG_LEVEL": "INFO",
        }
    )
    argv = [
        PYTHON, "-m", "tests.bench.fake_provider", "--port", str(fake_port),
        "--account-sid", ACCOUNT_SID, "--token", token, "--delay", f"{delay:g}",
    ]  # fmt: skip
    bench.start_provider(argv, env)
    wait_until(lambda: http_ok(fake + "/_bench/records"), 20, "the fake provider")
    bench.gunicorn("ingress:create_app()", port=ingress_port, env=env)
    return Stack(ingress, fake, token, env)


async def post_messages(stack: Stack, phones: list[str], concurrency: int = 32) -> dict[str, float]:
    """POST one text per phone to the API; when each was accepted (202), by phone."""
    accepted: dict[str, float] = {}
    failures: list[str] = []
    limit = asyncio.Semaphore(concurrency)
    url = stack.ingress + "/api/v1/messages"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(phone: str) -> None:
            async with (
                limit,
                session.post(
                    url, json={"to": phone, "type": "text", "text": TEXT}, headers={"X-API-Key": API_KEY}
                ) as response,
            ):
                if response.status == 202:
                    accepted[phone] = time.time()
                else:
                    failures.append(f"{response.status} {await response.text()}")

        await asyncio.gather(*(one(phone) for phone in phones))
    if failures:
        raise RuntimeError(f"{len(failures)} API calls refused, e.g. {failures[0]}")
    return accepted


async def bare_client(stack: Stack, count: int, concurrency: int = 256) -> float:
    """Sends/s of a plain aiohttp client posting ``count`` Twilio messages to the same fake provider."""
    url = f"{stack.fake}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{stack.env['TWILIO_AUTH_TOKEN']}".encode()).decode()
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(index: int) -> None:
            form = {"To": f"whatsapp:+1777{index:07d}", "From": f"whatsapp:{BUSINESS_NUMBER}", "Body": TEXT}
            async with limit, session.post(url, data=form, headers={"Authorization": auth}) as response:
                if response.status != 201:
                    raise RuntimeError(f"fake provider answered {response.status}")
                await response.read()

        started = time.monotonic()
        await asyncio.gather(*(one(index) for index in range(count)))
        return count / (time.monotonic() - started)


def run_once(stack: Stack, phones: list[str], time_limit: float) -> dict[str, Any]:
    reset_fake(stack)
    cpu_before = cpu_snapshot()
    started = time.time()
    accepted = asyncio.run(post_messages(stack, phones))
    accept_rate = len(phones) / (time.time() - started)
    wanted = {f"whatsapp:{phone}" for phone in phones}
    deadline = started + time_limit

    def arrivals() -> list[tuple[str, float]]:
        return [(to, at) for at, to, _ in fake_records(stack)["records"] if to in wanted]

    while time.time() < deadline and len({to for to, _ in arrivals()}) < len(phones):
        time.sleep(0.5)
    cpu = cpu_by_role(cpu_before, cpu_snapshot())
    every = arrivals()
    arrived = dict(every)  # one message per recipient: a recipient seen twice was sent twice
    times = sorted(arrived.values())
    latencies = [at - accepted[to.removeprefix("whatsapp:")] for to, at in arrived.items()]
    span = (times[-1] - times[0]) if len(times) > 1 else float("nan")
    # While the API takes the burst the senders share the CPU with it; after it, they have the machine.
    burst_end = max(accepted.values())
    during = bisect.bisect_right(times, burst_end)
    after_span = times[-1] - burst_end if times and times[-1] > burst_end else float("nan")
    return {
        **{f"cpu_ms {role}": seconds * 1000 / max(1, len(every)) for role, seconds in cpu.items()},
        "during_burst": during / (burst_end - started),
        "after_burst": (len(times) - during) / after_span,
        "accept_rate": accept_rate,
        "sent": len(times),
        "send_rate": len(times) / span if span and span > 0 else float("nan"),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_per_second": busiest_second(at for _, at in every),
        "complete": len(times) == len(phones),
        "sent_twice": len(every) - len(arrived),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per run (default 120)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=4, help="notify worker pool size (default 4)")
    # As the Procfile runs notify.
    parser.add_argument("--pool", choices=["prefork", "threads"], default="threads")
    parser.add_argument("--send-rate", type=float, default=1000.0, help="WAPIPE_SEND_RATE (default 1000)")
    parser.add_argument("--delay", type=float, default=0.15, help="fake provider answer time (default 0.15)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    shown = sys.argv[1:] if argv is None else argv
    print_header("outbound: POST /api/v1/messages burst to a slow fake provider", MODULE, shown)

    runs: dict[str, list[float]] = defaultdict(list)
    with Bench("outbound", keep_logs=args.keep_logs) as bench:
        bench.database()
        assert bench.database_url is not None
        phones = seed_contacts(bench.database_url, args.messages * args.runs)
        stack = start(bench, delay=args.delay, send_rate=args.send_rate)
        workers = [
            bench.worker(["notify", "status"], concurrency=args.processes, env=stack.env, pool=args.pool)
        ]
        for run in range(args.runs):
            batch = phones[run * args.messages : (run + 1) * args.messages]
            result = run_once(stack, batch, args.time_limit)
            bench.redis().delete("notify")  # what the time limit cut off is not carried into the next run
            reference = asyncio.run(bare_client(stack, min(args.messages, 10000)))
            for key, value in result.items():
                runs[key].append(float(value))
            runs["reference"].append(reference)
            runs["ratio"].append(result["send_rate"] / reference)
            print(
                f"run {run + 1}: accepted {result['accept_rate']:7.1f}/s;"
                f" sent {result['sent']:,}/{len(batch):,}"
                f" in the limit at {result['send_rate']:7.1f}/s; p50 {result['p50_ms']:8.0f} ms"
                f" p99 {result['p99_ms']:8.0f} ms; busiest second {result['max_per_second']}"
                f" (pacing {args.send_rate:g}/s) | bare aiohttp client {reference:7.1f}/s",
                flush=True,
            )
        for worker in workers:
            bench.stop(worker)

    print(
        f"\nmedian (min-max) over {args.runs} runs of {args.messages:,} messages (limit {args.time_limit:g} s"
        f" each); notify pool: {args.pool} x{args.processes}; provider answers after {args.delay * 1000:g} ms"
    )
    spreads = {key: Spread.of(values) for key, values in runs.items()}
    print(f"  API accepts/s              {spreads['accept_rate'].fmt(1)}")
    print(f"  sends/s sustained          {spreads['send_rate'].fmt(1)}")
    print(f"  sends/s while API accepts  {spreads['during_burst'].fmt(1)}")
    print(f"  sends/s after the burst    {spreads['after_burst'].fmt(1)}")
    print(f"  bare aiohttp client/s      {spreads['reference'].fmt(1)}")
    print(f"  ratio wapipe / bare        {spreads['ratio'].fmt(3)}")
    print(f"  p50 accept->provider ms    {spreads['p50_ms'].fmt()}")
    print(f"  p99 accept->provider ms    {spreads['p99_ms'].fmt()}")
    busiest = spreads["max_per_second"].fmt()
    print(f"  busiest second (sends)     {busiest}  vs WAPIPE_SEND_RATE {args.send_rate:g}")
    print(f"  sent within the limit      {spreads['sent'].fmt()} of {args.messages:,}")
    print(f"  sent twice                 {spreads['sent_twice'].fmt()}")
    print("  CPU per message sent, by process (ms; the burst and its sends):")
    for key in sorted(key for key in spreads if key.startswith("cpu_ms ")):
        print(f"    {key.removeprefix('cpu_ms '):28s} {spreads[key].fmt(2)}")
    print("machine after:", machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
