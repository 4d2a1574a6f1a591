"""Every task's retry that cannot be published puts its message back instead of dropping it."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from celery import Signature
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from workers import STAGE_MODULES, celery
from workers.base import WapipeTask


def _unpublishable(*args: Any, **kwargs: Any) -> None:
    raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def _ours() -> list[str]:
    for module in STAGE_MODULES:
        importlib.import_module(module)
    return [name for name in celery.tasks if not name.startswith("celery.")]


def test_every_task_has_the_requeueing_base() -> None:
    names = _ours()
    assert "inbound.route" in names
    assert "commands.handle" in names
    assert "notify.send" in names
    for name in names:
        assert isinstance(celery.tasks[name], WapipeTask), name


@pytest.mark.parametrize("name", ["status.apply", "commands.handle"])
def test_a_retry_the_broker_refuses_is_a_reject_that_requeues(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ours()
    task = celery.tasks[name]
    monkeypatch.setattr(Signature, "apply_async", _unpublishable)
    task.push_request(id="task-1", retries=0, called_directly=False, args=[1], kwargs={})
    try:
        with pytest.raises(Reject) as caught:
            task.retry(countdown=1, exc=RuntimeError("database away"))
    finally:
        task.pop_request()
    # Celery's own Task.retry raises Reject(requeue=False) here, which drops the message.
    assert caught.value.requeue is True
