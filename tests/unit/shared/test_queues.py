"""The lean publisher's Celery message: byte for byte the plain dump of Celery's envelope."""

from __future__ import annotations

import base64
import json

import pytest

from shared.queues import (
    HANDLER_QUEUES,
    NOTIFY_MANY_MAX,
    NOTIFY_MANY_TASK,
    NOTIFY_TASK,
    Job,
    Publisher,
    notify_jobs,
    queue_for,
)
from workers import celery
from workers.ordering import StageTask


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


def test_messages_published_together_go_as_one_notify_send_many_each_once() -> None:
    # 2 named twice (concurrent retries of one API call): carried once.
    assert notify_jobs([1, 2, 4, 2]) == [Job("notify.send_many", {"message_ids": [1, 2, 4]})]
    assert notify_jobs([7, 7]) == [Job("notify.send", {"message_id": 7})]
    assert notify_jobs([]) == []


def test_a_lone_message_keeps_its_notify_send_and_big_batches_split() -> None:
    assert notify_jobs([1]) == [Job("notify.send", {"message_id": 1})]

    assert notify_jobs(range(NOTIFY_MANY_MAX + 1)) == [
        Job("notify.send_many", {"message_ids": list(range(NOTIFY_MANY_MAX))}),
        Job("notify.send", {"message_id": NOTIFY_MANY_MAX}),
    ]


def test_both_notify_tasks_are_worker_tasks_of_the_notify_queue() -> None:
    celery.loader.import_default_modules()  # the task modules, as a worker loads them
    assert queue_for(NOTIFY_TASK) == queue_for(NOTIFY_MANY_TASK) == "notify"
    assert {NOTIFY_TASK, NOTIFY_MANY_TASK} <= set(celery.tasks)


def test_the_handler_queues_are_exactly_the_queues_of_the_stage_tasks() -> None:
    celery.loader.import_default_modules()  # the task modules, as a worker loads them
    stages = {queue_for(name) for name, task in celery.tasks.items() if isinstance(task, StageTask)}
    assert stages == HANDLER_QUEUES
