"""Benchmark 4: resident memory of ``wapipe up`` (every process it runs, summed), idle and under load.

    .venv/bin/python -m tests.bench.memory [--messages 600] [--idle-seconds 10]

Runs ``wapipe up`` as a user would (its own port; the bench's PostgreSQL database and redis-server given
as WAPIPE_DATABASE_URL / WAPIPE_REDIS_URL, so no embedded servers: their memory is not wapipe's), with
the Twilio provider pointed at the benchmark's fake API. RSS is summed over ``wapipe up`` and all its
descendants (psutil) every 0.2 s: the peak while idle for ``--idle-seconds`` after every worker is
ready, then the peak during benchmark 2's burst of ``--messages`` ``/help`` webhooks from linked users
(with their status callbacks), which must all get their reply.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from pathlib import Path

from tests.bench.harness import PYTHON, Bench, free_port, http_ok, machine, print_header, tree_rss, wait_until
from tests.bench.pipeline import ACCOUNT_SID, BUSINESS_NUMBER, Stack, burst, seed_users

MODULE = "tests.bench.memory"
MB = 1024 * 1024


class PeakRSS:
    """Samples the process tree's summed RSS in a thread; ``peak`` is the highest seen since reset."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.peak_unique = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss([self.pid]))
            self.peak_unique = max(self.peak_unique, tree_rss([self.pid], unique=True))

    def start(self) -> PeakRSS:
        self._thread.start()
        return self

    def reset(self) -> None:
        self.peak = tree_rss([self.pid])
        self.peak_unique = tree_rss([self.pid], unique=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    shown = sys.argv[1:] if argv is None else argv
    print_header("memory: wapipe up, idle and under the pipeline burst", MODULE, shown)

    with Bench("memory", keep_logs=args.keep_logs) as bench:
        bench.database()
        assert bench.database_url is not None
        phones = seed_users(bench.database_url, args.messages)
        token = secrets.token_hex(16)
        fake_port, port = free_port(), free_port()
        fake, url = f"http://127.0.0.1:{fake_port}", f"http://127.0.0.1:{port}"
        env = bench.env(
            {
                "WAPIPE_PROVIDER": "twilio",
                "WAPIPE_TWILIO_API_URL": fake,
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": token,
                "TWILIO_WHATSAPP_NUMBER": BUSINESS_NUMBER,
                "WAPIPE_PUBLIC_URL": url,
                "WAPIPE_MODE": "project",
                "WAPIPE_SEND_RATE": "1000",
            }
        )
        fake_argv = [
            PYTHON, "-m", "tests.bench.fake_provider", "--port", str(fake_port),
            "--account-sid", ACCOUNT_SID, "--token", token, "--status-callbacks",
        ]  # fmt: skip
        bench.start_provider(fake_argv, env)
        wait_until(lambda: http_ok(fake + "/_bench/records"), 20, "the fake provider")

        wapipe = str(Path(PYTHON).parent / "wapipe")
        up = bench.start(
            "wapipe up", [wapipe, "up", "--port", str(port), "--data-dir", str(bench.folder / "up")], env
        )
        wait_until(lambda: http_ok(url + "/healthz"), 60, "wapipe up's ingress")
        # Every Celery worker says "<name> ready." once it consumes (the supervisor passes it through).
        groups = 3
        wait_until(lambda: up.output().count(" ready.") >= groups, 90, "wapipe up's workers")
        processes = len(_tree(up.pid))
        sampler = PeakRSS(up.pid).start()
        time.sleep(args.idle_seconds)
        idle, idle_unique = sampler.peak, sampler.peak_unique
        sampler.reset()
        stack = Stack(url, fake, token, env)
        result = burst(bench, stack, phones)
        loaded, loaded_unique = sampler.peak, sampler.peak_unique
        sampler.stop()
        bench.stop(up)

    print(f"\nwapipe up: {processes} processes (ingress, worker pools, beat)")
    print("  (RSS counts pages prefork children share with their parent once per process; USS does not)")
    print(
        f"  idle ({args.idle_seconds:g} s):      peak RSS {idle / MB:8.1f} MiB"
        f"   peak USS {idle_unique / MB:8.1f} MiB"
    )
    print(
        f"  under the burst:  peak RSS {loaded / MB:8.1f} MiB   peak USS {loaded_unique / MB:8.1f} MiB"
        f"  ({args.messages} /help messages end to end at {result['rate']:.1f} msg/s)"
    )
    print("machine after:", machine())
    return 0


def _tree(pid: int) -> list[int]:
    import psutil

    root = psutil.Process(pid)
    return [root.pid, *(child.pid for child in root.children(recursive=True))]


if __name__ == "__main__":
    sys.exit(main())
