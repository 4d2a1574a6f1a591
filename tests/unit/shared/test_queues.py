"""The lean publisher's Celery message: byte for byte the plain dump of Celery's envelope."""

from __future__ import annotations

import base64
import json

import pytest

from shared.queues import BATCH_ITEMS_MAX, BATCHED, Job, Publisher, merge_batched, queue_for
from workers import celery


@pytest.fixture
def publisher() -> Publisher:
    # redis-py connects on first command: building messages needs no server.
    return Publisher("redis://127.0.0.1:1/0")


@pytest.mark.parametrize(
    ("task", "kwargs"),
    [
        ("inbound.route", {"event": {"text": "Café ¿sí? 😀", "raw": {"Body": 'a "quoted" \\ line\n'}}}),
        ("notify.send", {"message_id": 42}),
        ("status.apply", {}),
        ('commands.odd"name\\', {"message_id": 1}),
    ],
)
def test_message_is_exactly_the_dumped_envelope(publisher: Publisher, task: str, kwargs: dict) -> None:
    for _ in range(2):  # the first call builds the task's template, the second reuses it
        message = publisher.message(task, kwargs)
        decoded = json.loads(message)
        headers, properties = decoded["headers"], decoded["properties"]
        expected = publisher.envelope(task, decoded["body"], headers["id"], properties["delivery_tag"])
        assert message == json.dumps(expected, separators=(",", ":")).encode()
        assert json.loads(base64.b64decode(decoded["body"]))[1] == kwargs
        assert headers["task"] == task
        assert headers["root_id"] == properties["correlation_id"] == headers["id"]


def test_every_message_has_its_own_ids(publisher: Publisher) -> None:
    first, second = (json.loads(publisher.message("notify.send", {"message_id": 1})) for _ in range(2))
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]


def test_jobs_of_a_batched_task_merge_and_each_keeps_its_carrier() -> None:
    jobs = [
        Job("notify.send", {"message_id": 1}),
        Job("inbound.route", {"event": {}}, dedupe_key="seen:1"),
        Job("notify.send", {"message_id": 2}),
        Job("notify.send", {"message_id": 3}, dedupe_key="guarded"),  # a key guards one job: not merged
        Job("notify.send", {"message_id": 4}),
        Job("notify.send", {"message_id": 2}),  # named twice (concurrent retries of one call): carried once
    ]

    merged, carrier = merge_batched(jobs)

    assert merged == [jobs[1], jobs[3], Job("notify.send_many", {"message_ids": [1, 2, 4]})]
    assert carrier == [2, 0, 2, 1, 2, 2]
    twice = [Job("notify.send", {"message_id": 7}), Job("notify.send", {"message_id": 7})]
    assert merge_batched(twice) == ([twice[0]], [0, 0])


def test_a_lone_job_of_a_batched_task_stays_as_it_is_and_big_batches_split() -> None:
    lone = Job("notify.send", {"message_id": 1})
    assert merge_batched([lone]) == ([lone], [0])

    many = [Job("notify.send", {"message_id": i}) for i in range(BATCH_ITEMS_MAX + 1)]
    merged, carrier = merge_batched(many)

    assert merged == [
        Job("notify.send_many", {"message_ids": list(range(BATCH_ITEMS_MAX))}),
        Job("notify.send", {"message_id": BATCH_ITEMS_MAX}),
    ]
    assert carrier == [0] * BATCH_ITEMS_MAX + [1]


def test_every_batched_task_is_a_worker_task_of_the_same_queue() -> None:
    celery.loader.import_default_modules()  # the task modules, as a worker loads them
    for task, spec in BATCHED.items():
        assert queue_for(spec.together) == queue_for(task)
        assert {task, spec.together} <= set(celery.tasks)
