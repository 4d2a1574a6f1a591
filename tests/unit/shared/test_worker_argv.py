"""``wapipe worker``'s Celery command line."""

from __future__ import annotations

import subprocess
import sys

NODE_NAME = (
    "from shared.commands.worker import celery_argv;"
    "argv = celery_argv(['inbound'], None, 'prefork', 'INFO');"
    "print(argv[argv.index('-n') + 1])"
)


def _node_name() -> str:
    done = subprocess.run([sys.executable, "-c", NODE_NAME], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_two_workers_of_the_same_queues_on_one_host_have_distinct_node_names() -> None:
    # Ops run several processes of one pool on a host (honcho -c worker_inbound=2): with one node name
    # Celery warns of a duplicate, and a control command (ping, inspect, shutdown) reaches only one of them.
    first, second = _node_name(), _node_name()
    assert first != second
    assert first.startswith("inbound.")
    assert first.endswith("@%h")
