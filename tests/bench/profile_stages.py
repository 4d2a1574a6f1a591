"""Where a pipeline message's time goes: each stage's plain function, in-process, timed and profiled.

    .venv/bin/python -m tests.bench.profile_stages [--messages 300] [--top 12]

Seeds linked users in the bench's own database, then calls what the workers' task bodies call, stage by
stage, for ``--messages`` ``/help`` events: ``workers.inbound.route`` (store + decide + enqueue the
handler), ``workers.commands.handle`` (answer + store the reply + enqueue notify) and
``workers.notify.dispatch`` (claim a batch, pace, send on the event loop to the bench's fake provider,
record; the later messages' calls find theirs sent by an earlier batch, as their tasks would).
Prints wall and CPU milliseconds per call and the SQL statements each stage runs per message, then the
functions with the most cumulative time per stage. Celery's own per-hop cost is not in these figures:
compare with the bare chain reference of tests/bench/pipeline.py.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.bench.harness import PYTHON, Bench, free_port, http_ok, print_header, wait_until
from tests.bench.pipeline import ACCOUNT_SID, BUSINESS_NUMBER, seed_users

MODULE = "tests.bench.profile_stages"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    print_header("pipeline stages in-process", MODULE, sys.argv[1:] if argv is None else argv)

    with Bench("stages") as bench:
        bench.database()
        assert bench.database_url is not None
        phones = seed_users(bench.database_url, args.messages)
        token = secrets.token_hex(16)
        fake_port = free_port()
        fake = f"http://127.0.0.1:{fake_port}"
        env = bench.env(
            {
                "WAPIPE_PROVIDER": "twilio",
                "WAPIPE_TWILIO_API_URL": fake,
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": token,
                "TWILIO_WHATSAPP_NUMBER": BUSINESS_NUMBER,
                "WAPIPE_PUBLIC_URL": "http://127.0.0.1:9",
                "WAPIPE_MODE": "project",
                "WAPIPE_SEND_RATE": "1000",
                "WAPIPE_LOG_LEVEL": "WARNING",
            }
        )
        fake_argv = [
            PYTHON, "-m", "tests.bench.fake_provider", "--port", str(fake_port),
            "--account-sid", ACCOUNT_SID, "--token", token,
        ]  # fmt: skip
        bench.start_provider(fake_argv, env)
        wait_until(lambda: http_ok(fake + "/_bench/records"), 20, "the fake provider")
        os.environ.update(env)
        from shared.settings import get_settings

        get_settings.cache_clear()
        from shared.logging import configure_logging

        configure_logging("WARNING", "json")
        from shared.wire.events import InboundMessage
        from workers import commands, inbound, notify

        statements = _count_statements()
        events = [
            InboundMessage(
                provider="twilio",
                provider_message_id="SM" + uuid.uuid4().hex,
                business_number=BUSINESS_NUMBER,
                sender_phone=phone,
                type="text",
                text="/help",
            ).model_dump(mode="json")
            for phone in phones
        ]
        inbound_ids: list[int] = []
        reply_ids: list[int] = []
        stages: list[tuple[str, Callable[[], Any]]] = [
            ("inbound.route", lambda: [inbound_ids.append(inbound.route(e).message_id) for e in events]),
            ("commands.handle", lambda: [reply_ids.append(commands.handle(i)) for i in inbound_ids]),
            ("notify.send", lambda: [notify.dispatch(i) for i in reply_ids]),
        ]
        results = []
        for name, run in stages:
            statements.clear()
            profiler = cProfile.Profile()
            wall, cpu = time.perf_counter(), time.process_time()
            profiler.enable()
            run()
            profiler.disable()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            results.append((name, wall, cpu, len(statements), profiler))
        bench.redis().flushall()

    n = args.messages
    print(f"\nper message, in-process (profiler on, so slower than in a worker), {n} messages:")
    for name, wall, cpu, count, _ in results:
        print(
            f"  {name:16s} wall {wall / n * 1000:6.2f} ms  CPU {cpu / n * 1000:6.2f} ms"
            f"  SQL statements {count / n:4.1f}"
        )
    for name, *_, profiler in results:
        print(f"\n--- {name}: top {args.top} by cumulative time")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)
    return 0


def _count_statements() -> list[str]:
    """Record every SQL statement psycopg sends from now on (cursor execute calls)."""
    import psycopg

    seen: list[str] = []
    original = psycopg.Cursor.execute

    def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(query)[:60])
        return original(self, query, *args, **kwargs)

    psycopg.Cursor.execute = execute  # type: ignore[method-assign]
    return seen


if __name__ == "__main__":
    sys.exit(main())
