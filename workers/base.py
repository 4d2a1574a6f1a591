"""The base class of every wapipe task (``Celery(task_cls=...)`` in workers/__init__.py).

Celery's ``Task.retry`` publishes the retry, and when that publish fails (the broker is unreachable) it
raises ``Reject(requeue=False)``: the worker then rejects the delivery without putting it back, which
drops the message whenever the reject itself reaches Redis (it came back, or the publish failed for
another reason). A task we could not retry must be redelivered instead, so here that reject puts the
message back on its queue. Every task is safe to run twice (ARCHITECTURE.md, "Effects happen once").
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject


class WapipeTask(Task):
    #: Kept as a dead letter (``wapipe dlq``) when it fails for good: an unexpected error, or retries
    #: exhausted. The webhook events' tasks set it (workers/__init__.py); the handler stages' tasks
    #: (workers.ordering.StageTask) always are, and their sender is told too (workers/signals.py).
    dead_letter_on_failure: bool = False

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().retry(*args, **kwargs)
        except Reject as reject:
            if reject.requeue:
                raise
            raise Reject(reject.reason, requeue=True) from reject
