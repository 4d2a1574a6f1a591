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
from shared.queues import Job
from shared.wire.events import InboundMessage, StatusUpdate


@dataclass(frozen=True)
class Outcome:
    enqueued: int
    duplicates: int


def enqueue_events(
    provider: str, messages: Sequence[InboundMessage], statuses: Sequence[StatusUpdate]
) -> Outcome:
    jobs = [Job("inbound.route", {"event": m.model_dump(mode="json")}, m.dedupe_key) for m in messages]
    jobs += [Job("status.apply", {"event": s.model_dump(mode="json")}, s.dedupe_key) for s in statuses]
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
