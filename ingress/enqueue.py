"""Publish a webhook's canonical events as jobs, all in one atomic publish, and count the outcomes.

Shared by the Meta and Kapso blueprints: each inbound message becomes ``inbound.route`` and each delivery
receipt ``status.apply``, each guarded by its dedupe key (INTERFACES.md), so a provider retry or the same
``wamid`` twice in one delivery has one effect. A broker failure aborts with a 503 (``publish``): the
provider retries and nothing was half-enqueued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from werkzeug.exceptions import HTTPException

from ingress.metrics import DUPLICATES, WEBHOOKS
from ingress.publishing import publish
from shared.arrivals import line_of
from shared.queues import Job
from shared.wire.events import InboundMessage, StatusUpdate


def route_job(message: InboundMessage) -> Job:
    """The job that stores and routes an inbound message; it joins its conversation's arrival line, so the
    router stores the conversation's messages in the order they were accepted here (shared/arrivals.py)."""
    event = message.model_dump(mode="json")
    return Job("inbound.route", {"event": event}, message.dedupe_key, line_of(message))


def status_job(status: StatusUpdate) -> Job:
    return Job("status.apply", {"event": status.model_dump(mode="json")}, status.dedupe_key)


@dataclass(frozen=True)
class Outcome:
    enqueued: int
    duplicates: int


def enqueue_events(
    provider: str, messages: Sequence[InboundMessage], statuses: Sequence[StatusUpdate]
) -> Outcome:
    jobs = [route_job(m) for m in messages]
    jobs += [status_job(s) for s in statuses]
    kinds = ["message"] * len(messages) + ["status"] * len(statuses)
    if not jobs:
        return Outcome(0, 0)
    try:
        flags = publish(jobs)
    except HTTPException:
        for kind in kinds:
            WEBHOOKS.labels(provider, kind, "unavailable").inc()
        raise
    for kind, enqueued in zip(kinds, flags, strict=True):
        WEBHOOKS.labels(provider, kind, "enqueued" if enqueued else "duplicate").inc()
    duplicates = flags.count(False)
    if duplicates:
        DUPLICATES.labels(provider).inc(duplicates)
    return Outcome(len(flags) - duplicates, duplicates)
