"""The base class of every wapipe task (``Celery(task_cls=...)`` in workers/__init__.py).

Celery's ``Task.retry`` publishes the retry, and when that publish fails (the broker is unreachable) it
raises ``Reject(requeue=False)``: the worker then rejects the delivery without putting it back, which
drops the message whenever the reject itself reaches Redis (it came back, or the publish failed for
another reason). A task we could not retry must be redelivered instead, so here that reject puts the
message back on its queue. Every task is safe to run twice (ARCHITECTURE.md, "Effects happen once").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry


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

    def again(self, countdown: float, headers: Mapping[str, Any]) -> Retry:
        """The ``Retry`` to raise to run the task again ``countdown`` seconds later, not as a failure: the
        same request republished with ``headers`` added to its own and its retry count kept. Celery's count
        (``retries``) bounds and spaces the task's retries through an outage (``OUTAGE_RETRIES`` in
        workers/__init__.py), so a task that also waits for something of its own (status.apply for a
        receipt's provider id) counts those waits in a header, and they never eat into the outage's
        retries. A publish that fails puts the delivery back on its queue, as :meth:`retry` does.
        In-process (tests, ``.apply()``) this is Celery's retry: there is no queue to come back through."""
        request = self.request
        merged = {**(request.headers or {}), **headers}
        if request.called_directly or request.is_eager:
            return self.retry(countdown=countdown, headers=merged)
        return self.republish(countdown, merged)

    def republish(self, countdown: float, headers: Mapping[str, Any]) -> Retry:
        """Publish the running request again ``countdown`` seconds later with exactly ``headers`` and its
        retry count kept; the ``Retry`` to raise. A publish that fails rejects the delivery back onto its
        queue (Celery's own retry would drop it)."""
        again = self.signature_from_request(self.request, countdown=countdown, headers=dict(headers))
        try:
            again.apply_async()
        except Exception as exc:
            raise Reject(exc, requeue=True) from exc
        return Retry(f"{self.name} again in {countdown:.2f}s", when=countdown, sig=again)
