"""Worker and web processes freeze the heap they start with, so full garbage collections stop walking it
(workers/signals.py freeze_startup_heap, ingress/gunicorn_conf.py post_worker_init)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import signals

import workers.signals  # noqa: F401 - connects the receivers


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("signal", [signals.worker_process_init, signals.worker_ready])
def test_a_ready_worker_process_freezes_its_heap(signal: object) -> None:
    assert gc.get_freeze_count() == 0
    signal.send(sender=None)  # type: ignore[attr-defined]
    assert gc.get_freeze_count() > 1000


def test_a_gunicorn_worker_freezes_its_heap_once_the_app_is_loaded(tmp_path: Path) -> None:
    # In a child: importing the config module sets the metrics directory of its process.
    code = "import gc, ingress.gunicorn_conf as c; c.post_worker_init(None); print(gc.get_freeze_count())"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert int(child.stdout) > 1000
