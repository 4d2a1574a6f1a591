"""Benchmark 2: inbound ``/help`` from linked users through the whole pipeline, end to end.

    .venv/bin/python -m tests.bench.pipeline [--messages 600] [--runs 3] [--pools 1,2] [--pool prefork]

webhook (signed Twilio, real gunicorn ingress) -> ``inbound.route`` -> ``commands.handle`` ->
``notify.send`` -> fake Twilio API 201 -> signed ``delivered`` status callback posted back to the
ingress -> ``status.apply``. Users and their links are seeded in the bench's own database; every message
comes from a different linked user (so the per-user rate limit and per-recipient pacing never hold one
back, and the reply's recipient identifies the message). Worker pools as ``wapipe up`` groups them
(``inbound,verify,commands,flows`` and ``notify,status``), each with 1 then 2 prefork processes
(``--pool threads``: that many threads in one process per group, as ``wapipe worker --pool threads``).
``WAPIPE_SEND_RATE`` is raised to 1000/s (the default 80/s would be the limit measured).

Per pool size and run:

- burst: ``--messages`` webhooks posted as fast as the ingress takes them (16 concurrent); messages/s =
  messages / (first webhook -> last provider call); then how long until every receipt is applied;
- paced: the same count again, offered at half the burst's rate; p50/p99 latency from webhook sent to
  the provider call for it;
- reference, same run: the same number of bare 3-task Celery chains of no-op tasks on the same broker
  and the same pool sizes (tests/bench/noop_app.py), chains/s.

Then where the time goes: each stage's mean task run time from the workers' own "succeeded in" lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import statistics
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import aiohttp
import psycopg

from shared.providers.twilio.signature import HEADER, sign
from tests.bench.harness import (
    PYTHON,
    Bench,
    Proc,
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

MODULE = "tests.bench.pipeline"
ACCOUNT_SID = "AC" + "b" * 32
BUSINESS_NUMBER = "+14155238886"
WORKER_GROUPS = (["inbound", "verify", "commands", "flows"], ["notify", "status"])
NOOP_GROUPS = (["inbound", "commands"], ["notify"])
TASK_LINE = re.compile(r"Task (\S+?)\[[^\]]+\] succeeded in ([0-9.]+)s")


@dataclass
class Stack:
    """The running pipeline: ingress URL, fake provider URL, and the signing token."""

    ingress: str
    fake: str
    token: str
    env: dict[str, str]


def seed_users(database_url: str, count: int) -> list[str]:
    """``count`` users, each linked to their own phone; returns the phones."""
    phones = [f"+1555{index:07d}" for index in range(count)]
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        users = [(uuid.uuid4(), f"bench user {index}") for index in range(count)]
        with cur.copy("COPY users (id, display_name) FROM STDIN") as copy:
            for row in users:
                copy.write_row(row)
        with cur.copy("COPY user_links (user_id, phone) FROM STDIN") as copy:
            for (user_id, _), phone in zip(users, phones, strict=True):
                copy.write_row((user_id, phone))
    return phones


def start_stack(bench: Bench, *, send_rate: float = 1000.0, web_workers: int = 2) -> Stack:
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
            "WAPIPE_MODE": "project",
            "WAPIPE_SEND_RATE": f"{send_rate:g}",
            "WAPIPE_LOG_LEVEL": "INFO",
        }
    )
    fake_argv = [
        PYTHON, "-m", "tests.bench.fake_provider", "--port", str(fake_port),
        "--account-sid", ACCOUNT_SID, "--token", token, "--status-callbacks",
    ]  # fmt: skip
    bench.start_provider(fake_argv, env)
    wait_until(lambda: http_ok(fake + "/_bench/records"), 20, "the fake provider")
    bench.gunicorn("ingress:create_app()", port=ingress_port, workers=web_workers, env=env)
    return Stack(ingress, fake, token, env)


def fake_records(stack: Stack) -> dict[str, Any]:
    with urllib.request.urlopen(stack.fake + "/_bench/records", timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def reset_fake(stack: Stack) -> None:
    request = urllib.request.Request(stack.fake + "/_bench/reset", method="POST")  # noqa: S310
    urllib.request.urlopen(request, timeout=10).close()  # noqa: S310


def webhook(stack: Stack, phone: str, text: str) -> tuple[dict[str, str], dict[str, str]]:
    """A signed Twilio inbound-message webhook from ``phone``: (form, headers)."""
    sid = "SM" + uuid.uuid4().hex
    params = {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": f"whatsapp:{phone}",
        "To": f"whatsapp:{BUSINESS_NUMBER}",
        "Body": text,
        "NumMedia": "0",
        "MessageType": "text",
        "ProfileName": "Bench",
        "WaId": phone[1:],
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    return params, {HEADER: sign(stack.token, stack.ingress + "/webhooks/twilio", params)}


async def post_all(
    stack: Stack, phones: list[str], *, concurrency: int = 16, rate: float | None = None
) -> dict[str, float]:
    """POST one ``/help`` per phone; returns when each was sent (time.time()). Open loop at ``rate``."""
    prepared = [(phone, *webhook(stack, phone, "/help")) for phone in phones]
    sent: dict[str, float] = {}
    failures: list[str] = []
    limit = asyncio.Semaphore(concurrency if rate is None else 512)
    url = stack.ingress + "/webhooks/twilio"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(phone: str, form: dict[str, str], headers: dict[str, str]) -> None:
            async with limit:
                sent[phone] = time.time()
                async with session.post(url, data=form, headers=headers) as response:
                    if response.status != 200:
                        failures.append(f"{response.status} {await response.text()}")

        tasks = []
        start = time.monotonic()
        for index, item in enumerate(prepared):
            if rate is not None:
                delay = start + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(*item)))
        await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"{len(failures)} webhooks refused, e.g. {failures[0]}")
    return sent


def provider_times(stack: Stack, phones: list[str], timeout: float) -> dict[str, float]:
    """Wait until the fake provider got one send per phone; when each arrived."""
    wanted = {f"whatsapp:{phone}" for phone in phones}

    def arrived() -> dict[str, float]:
        return {to: at for at, to, _ in fake_records(stack)["records"] if to in wanted}

    try:
        wait_until(lambda: len(arrived()) == len(wanted), timeout, "sends", interval=0.05)
    except TimeoutError:
        raise Stuck(
            f"{len(arrived())} of {len(phones)} sends reached the provider in {timeout:g} s"
        ) from None
    return {to.removeprefix("whatsapp:"): at for to, at in arrived().items()}


class Stuck(Exception):
    """Not every message reached the provider in time; the bench reports where they are."""


def where_are_they(database_url: str) -> str:
    """Inbound and outbound messages by state, to show where unfinished ones wait."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT direction, status, routed_at IS NOT NULL AS routed, count(*) FROM messages"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
    return "; ".join(f"{d} {st} routed={r}: {n}" for d, st, r, n in rows)


def delivered_count(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM messages WHERE direction = 'out' AND status = 'delivered'"
        ).fetchone()
    return int(row[0]) if row else 0


def start_workers(bench: Bench, stack: Stack, processes: int, pool: str = "prefork") -> list[Proc]:
    return [bench.worker(queues, concurrency=processes, env=stack.env, pool=pool) for queues in WORKER_GROUPS]


def burst(bench: Bench, stack: Stack, phones: list[str]) -> dict[str, float]:
    assert bench.database_url is not None
    before = delivered_count(bench.database_url)
    cpu_before = cpu_snapshot()
    started = time.time()
    sent = asyncio.run(post_all(stack, phones))
    accepted = time.time()
    arrived = provider_times(stack, phones, timeout=60 + len(phones) / 2)
    last = max(arrived.values())
    wait_until(
        lambda: delivered_count(bench.database_url or "") >= before + len(phones),
        60 + len(phones) / 2,
        "every delivery receipt applied",
        interval=0.1,
    )
    receipts = time.time()
    cpu = cpu_by_role(cpu_before, cpu_snapshot())
    latencies = [arrived[phone] - sent[phone] for phone in phones]
    return {
        **{f"cpu_ms {role}": seconds * 1000 / len(phones) for role, seconds in cpu.items()},
        "rate": len(phones) / (last - started),
        "ingress_rate": len(phones) / (accepted - started),
        "receipts_rate": len(phones) / (receipts - started),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def paced(stack: Stack, phones: list[str], rate: float) -> dict[str, float]:
    sent = asyncio.run(post_all(stack, phones, rate=rate))
    arrived = provider_times(stack, phones, timeout=60 + len(phones) / 2)
    latencies = [arrived[phone] - sent[phone] for phone in phones]
    return {
        "offered": rate,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def noop_chains(bench: Bench, processes: int, count: int, pool: str = "prefork") -> float:
    """Chains/s of ``count`` bare 3-task chains through worker pools of ``processes`` each."""
    from tests.bench import noop_app

    env = bench.env()
    workers = [
        bench.worker(queues, concurrency=processes, env=env, app="tests.bench.noop_app", pool=pool)
        for queues in NOOP_GROUPS
    ]
    client = bench.redis()
    client.delete(noop_app.DONE_KEY)
    noop_app.app.conf.broker_url = bench.redis_url
    started = time.time()
    noop_app.send_chains(count)
    wait_until(
        lambda: int(client.get(noop_app.DONE_KEY) or 0) >= count, 30 + count / 10, "chains", interval=0.01
    )
    rate = count / (time.time() - started)
    for worker in workers:
        bench.stop(worker)
    return rate


def stage_times(workers: list[Proc]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = defaultdict(list)
    for worker in workers:
        for match in TASK_LINE.finditer(worker.output()):
            times[match.group(1)].append(float(match.group(2)))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=600, help="messages per burst (default 600)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pools", default="1,2", help="worker processes per pool to try (default 1,2)")
    parser.add_argument(
        "--pool", choices=["prefork", "threads"], default="prefork", help="Celery pool (default prefork)"
    )
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    pools = [int(part) for part in args.pools.split(",")]
    print_header("pipeline: /help end to end", MODULE, sys.argv[1:] if argv is None else argv)

    table: list[tuple[int, dict[str, Spread]]] = []
    with Bench("pipeline", keep_logs=args.keep_logs) as bench:
        bench.database()
        assert bench.database_url is not None
        phones = iter(seed_users(bench.database_url, args.messages * 2 * args.runs * len(pools) + 50))
        stack = start_stack(bench)
        # Warm-up through a throwaway pool: imports, connections, prepared statements.
        workers = start_workers(bench, stack, 1)
        burst(bench, stack, [next(phones) for _ in range(50)])
        for worker in workers:
            bench.stop(worker)
        for processes in pools:
            runs: dict[str, list[float]] = defaultdict(list)
            workers = start_workers(bench, stack, processes, args.pool)
            for run in range(args.runs):
                reset_fake(stack)
                try:
                    b = burst(bench, stack, [next(phones) for _ in range(args.messages)])
                    p = paced(stack, [next(phones) for _ in range(args.messages)], b["rate"] / 2)
                except Stuck as stuck:
                    print(
                        f"pools x{processes} run {run + 1}: STUCK: {stuck}; messages by state:"
                        f" {where_are_they(bench.database_url)}",
                        flush=True,
                    )
                    raise
                print(
                    f"pools x{processes} run {run + 1}: burst {b['rate']:6.1f} msg/s (ingress accepted"
                    f" {b['ingress_rate']:6.1f}/s, receipts applied {b['receipts_rate']:6.1f}/s)"
                    f" | at {p['offered']:5.1f} msg/s offered: p50 {p['p50_ms']:6.0f} ms"
                    f" p99 {p['p99_ms']:6.0f} ms",
                    flush=True,
                )
                for key, value in b.items():
                    runs[f"burst_{key}"].append(value)
                for key, value in p.items():
                    runs[f"paced_{key}"].append(value)
            stages = stage_times(workers)
            for worker in workers:
                bench.stop(worker)
            for run in range(args.runs):
                rate = noop_chains(bench, processes, args.messages, args.pool)
                runs["chains"].append(rate)
                print(
                    f"pools x{processes} run {run + 1}: bare 3-task chains {rate:6.1f} chains/s", flush=True
                )
            runs["ratio"] = [mine / ref for mine, ref in zip(runs["burst_rate"], runs["chains"], strict=True)]
            table.append((processes, {key: Spread.of(values) for key, values in runs.items()}))
            print(f"pools x{processes}: CPU per message during the bursts, by process (ms, median of runs):")
            for key in sorted(key for key in runs if key.startswith("burst_cpu_ms ")):
                print(f"    {key.removeprefix('burst_cpu_ms '):32s} {statistics.median(runs[key]):7.2f}")
            print(f"pools x{processes}: mean task run time per stage (from the workers' logs):")
            for task, values in sorted(stages.items()):
                print(f"    {task:18s} {statistics.mean(values) * 1000:7.2f} ms  over {len(values)} tasks")

    print(
        f"\nmedian (min-max) over {args.runs} runs, {args.messages} messages per burst; WAPIPE_SEND_RATE=1000"
    )
    print(
        f"{'processes/pool':>14s} {'msg/s end to end':>22s} {'bare chains/s':>22s} {'ratio':>18s}"
        f" {'receipts/s':>22s} {'p50 ms @half':>20s} {'p99 ms @half':>20s}"
    )
    for processes, spreads in table:
        print(
            f"{processes:>14d} {spreads['burst_rate'].fmt(1):>22s} {spreads['chains'].fmt(1):>22s}"
            f" {spreads['ratio'].fmt(2):>18s} {spreads['burst_receipts_rate'].fmt(1):>22s}"
            f" {spreads['paced_p50_ms'].fmt():>20s} {spreads['paced_p99_ms'].fmt():>20s}"
        )
    print("machine after:", machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
