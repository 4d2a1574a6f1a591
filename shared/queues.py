"""Queues, routes and the Celery configuration, in one place for both sides, plus a lean publisher.

Each queue is named after the stage that consumes it; a task's queue is the part of its name before the
dot (``notify.send`` runs on ``notify``), so routing needs no table to keep in sync.

The ingress publishes with :class:`Publisher` instead of ``celery.send_task``: it writes the very message
Celery's Redis transport would write (task protocol v2, JSON body, base64 envelope) with one Lua call
(EVALSHA of a cached script, on a per-thread connection) that also does the dedupe ``SET NX``. That
keeps the web image free of worker code, costs one round trip per event, and makes "seen before" and
"enqueued" one atomic step: a Redis failure between the two can never mark an event seen that was not
enqueued.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from shared import arrivals
from shared.broker import bell_key

QUEUES: tuple[str, ...] = (
    "inbound",
    "verify",
    "commands",
    "flows",
    "ai",
    "persist",
    "notify",
    "status",
    "maintenance",
)
# Queues whose tasks take long (model calls, downloads); each worker process holds one task at a time.
SLOW_QUEUES = frozenset({"ai", "persist", "maintenance"})
# The handler stages' queues: their tasks (workers.ordering.StageTask) answer an inbound message, in its
# conversation's turn. Named here for what cannot import the workers (``wapipe dlq replay``).
HANDLER_QUEUES = frozenset({"verify", "commands", "flows", "ai", "persist"})

# Longer than any task may run and than any countdown we schedule: a message unacked for this long is
# assumed lost with its worker and redelivered. Longer waits go through the database, not the broker.
VISIBILITY_TIMEOUT_SECONDS = 3600
TASK_TIME_LIMIT_SECONDS = 300
MAX_COUNTDOWN_SECONDS = 1800

# Retries while PostgreSQL or Redis is unreachable (workers/__init__.py OUTAGE_RETRIES): countdowns doubling
# from OUTAGE_BACKOFF_SECONDS up to OUTAGE_BACKOFF_MAX_SECONDS. Here rather than with the tasks because what
# waits for a retrying task must know how long it may retry (shared/db/turns.py HORIZON).
OUTAGE_BACKOFF_SECONDS = 2
OUTAGE_BACKOFF_MAX_SECONDS = 300
OUTAGE_MAX_RETRIES = 20


def outage_retry_span_seconds(
    backoff: int = OUTAGE_BACKOFF_SECONDS,
    backoff_max: int = OUTAGE_BACKOFF_MAX_SECONDS,
    retries: int = OUTAGE_MAX_RETRIES,
) -> float:
    """The longest a task retried through an outage may go on from its first run to its last retry: each
    countdown at its cap (Celery draws it at random below, ``retry_jitter``), 2 + 4 + ... + 256 + 12 x 300
    = 4110 s by default, and each failed run at the task time limit (a run that fails on the database
    usually ends within the pool's timeout, WAPIPE_DB_POOL_TIMEOUT; one that hangs is stopped at the
    limit)."""
    countdowns = sum(min(backoff_max, backoff * 2**retry) for retry in range(retries))
    return countdowns + retries * TASK_TIME_LIMIT_SECONDS


def queue_for(task_name: str) -> str:
    queue = task_name.split(".", 1)[0]
    if queue not in QUEUES:
        raise ValueError(f"task {task_name!r} does not name a known queue ({', '.join(QUEUES)})")
    return queue


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any) -> dict[str, str]:
    """Celery router: every task to the queue its name starts with."""
    return {"queue": queue_for(name)}


def celery_config(broker_url: str) -> dict[str, Any]:
    """The Celery settings both the workers and the beat use."""
    return {
        "broker_url": broker_url,
        # kombu's Redis transport, putting back at once what a worker held when Redis restarted.
        "broker_transport": "shared.broker:Transport" if broker_url.startswith("redis://") else None,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
        "task_routes": (route_task,),
        "task_default_queue": "inbound",
        "task_create_missing_queues": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_time_limit": TASK_TIME_LIMIT_SECONDS,
        "task_soft_time_limit": TASK_TIME_LIMIT_SECONDS - 30,
        "worker_prefetch_multiplier": 4,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "timezone": "UTC",
        "enable_utc": True,
    }


@dataclass(frozen=True)
class Job:
    """One task to enqueue: its name, its JSON-able kwargs, the dedupe key that guards it (if any), and
    the conversation's arrival line its dedupe key joins when it is enqueued (an inbound message's
    ``inbound.route``: shared/arrivals.py)."""

    task: str
    kwargs: Mapping[str, Any]
    dedupe_key: str | None = None
    line: str | None = None


# What a dedupe key holds when its job was forgone (:meth:`Publisher.forgo`) rather than published ("1").
FORGONE = b"forgone"


def handler_key(message_id: int) -> str:
    """The dedupe key of an inbound message's handler job (workers/inbound.py): set, in the publish itself,
    once that job is queued, so it also says whether the router handed the message to a handler
    (:func:`handler_published`); or set by a route that gave the message up, so that no run of it can
    publish that job after (:meth:`Publisher.forgo`, workers/ordering.py ``give_up_turn``)."""
    return f"handle:{message_id}"


def handler_published(client: redis.Redis, message_id: int) -> bool:
    """Whether inbound message ``message_id``'s handler job was published (read by the flows' drain): its
    :func:`handler_key` set by the publish, not forgone by a route that gave the message up."""
    return client.get(handler_key(message_id)) not in (None, FORGONE)


# Sending stored outbound messages (workers/notify.py). One Celery task pull per message costs more CPU
# than sending it, so several messages published together (the notify API's concurrent requests,
# ingress/api/group_store.py; the sweep) go as one notify.send_many, which runs each as its notify.send
# would.
NOTIFY_TASK = "notify.send"
NOTIFY_MANY_TASK = "notify.send_many"
# Messages per notify.send_many job: one notify batch's worth, so a job is one claim.
NOTIFY_MANY_MAX = 100


def notify_jobs(message_ids: Iterable[int]) -> list[Job]:
    """The jobs that send these messages: each id once (concurrent retries of one API call name one
    message), in notify.send_many jobs of up to :data:`NOTIFY_MANY_MAX`; a lone id keeps its own
    notify.send."""
    ids = list(dict.fromkeys(message_ids))
    chunks = [ids[start : start + NOTIFY_MANY_MAX] for start in range(0, len(ids), NOTIFY_MANY_MAX)]
    return [
        Job(NOTIFY_TASK, {"message_id": chunk[0]})
        if len(chunk) == 1
        else Job(NOTIFY_MANY_TASK, {"message_ids": chunk})
        for chunk in chunks
    ]


# KEYS: for each job, its dedupe key ("" for none), its queue, its queue's bell, then its arrival line
# ("" for none); ARGV: the dedupe TTL, the lines' TTL, then each message. Returns, per job, 1 if enqueued
# and 0 if its dedupe key was already set. The ring is shared/broker.py's: one token on the bell wakes a
# worker waiting on the queue. The arrival is recorded only with the message it describes.
_PUBLISH = f"""
local ttl, line_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local now_us
local result = {{}}
for i = 1, #KEYS, 4 do
  local key, queue, bell, line = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3]
  local message = ARGV[(i + 3) / 4 + 2]
  if key == '' or redis.call('SET', key, '1', 'NX', 'EX', ttl) then
    if line ~= '' and key ~= '' then
      if not now_us then
        local now = redis.call('TIME')
        now_us = now[1] * 1000000 + now[2]
      end
      local entry = key
      {arrivals.RECORD_LUA}
    end
    redis.call('LPUSH', queue, message)
    redis.call('LPUSH', bell, '1')
    redis.call('LTRIM', bell, 0, 0)
    result[#result + 1] = 1
  else
    result[#result + 1] = 0
  end
end
return result
"""


# KEYS[1]: a dedupe key; ARGV[1]: FORGONE. Deleted only while it says its job was forgone: a key its publish
# set stays, or that job could be published twice.
_UNFORGO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Publisher:
    """Writes Celery task messages straight to their Redis lists; thread-safe, one per process."""

    DEDUPE_TTL_SECONDS = 7 * 24 * 3600

    def __init__(self, redis_url: str) -> None:
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )
        self._script = self._redis.register_script(_PUBLISH)
        self._unforgo_script = self._redis.register_script(_UNFORGO)
        self._origin = f"{os.getpid()}@{socket.gethostname()}"
        self._templates: dict[str, list[str]] = {}
        self._local = threading.local()

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def publish(self, jobs: Iterable[Job]) -> list[bool]:
        """Enqueue the jobs atomically; return, per job, False where its dedupe key was already set.

        Raises ``redis.RedisError`` when the broker is unreachable: the caller must then answer 503 so
        the provider retries, since nothing was enqueued.
        """
        jobs = list(jobs)
        if not jobs:
            return []
        keys: list[str] = []
        messages: list[bytes] = []
        for job in jobs:
            queue = queue_for(job.task)
            keys += [job.dedupe_key or "", queue, bell_key(queue), job.line or ""]
            messages.append(self.message(job.task, job.kwargs))
        result = self._run_script(keys, [self.DEDUPE_TTL_SECONDS, arrivals.LINE_TTL_SECONDS, *messages])
        return [bool(flag) for flag in result]

    def forgo(self, dedupe_key: str) -> bool:
        """Set ``dedupe_key`` as publishing its job would, without publishing it: from now on that job is
        not published (:meth:`publish` finds the key set) until :meth:`unforgo`. In one step with any
        publish under the key: False when the job was published first (or forgone already)."""
        return bool(self._redis.set(dedupe_key, FORGONE, nx=True, ex=self.DEDUPE_TTL_SECONDS))

    def unforgo(self, dedupe_key: str) -> None:
        """Undo :meth:`forgo`: the job may be published again. A key its publish set is left as it is."""
        self._unforgo_script(keys=[dedupe_key], args=[FORGONE])

    def _run_script(self, keys: list[str], args: list[Any]) -> Any:
        """The publish script's EVALSHA, on a connection of this thread's own.

        What ``self._script(keys=..., args=...)`` sends and answers, but every webhook pays for it, and
        redis-py's per-command pool checkout, retry closure and observability hooks cost about as much
        CPU as the round trip itself. Kept from the pool: a connection Redis has closed meanwhile (a
        restart, an idle timeout) is noticed before sending and replaced, and a connection that failed
        is dropped (redis-py disconnects it on any error), so the next call starts clean. A Redis that
        lost its script cache (restart, SCRIPT FLUSH) gets the script itself, once.
        """
        connection = self._connection()
        try:
            # Data waiting on an idle connection means Redis closed it or a reply was left unread.
            stale = connection.can_read()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            stale = True
        if stale:
            connection.disconnect()
        try:
            connection.send_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
            return connection.read_response()
        except redis.exceptions.NoScriptError:
            connection.send_command("EVAL", self._script.script, len(keys), *keys, *args)
            return connection.read_response()

    def _connection(self) -> redis.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            # First use in this thread, or in a forked child: never share the parent's socket.
            pool = self._redis.connection_pool
            local.connection = pool.connection_class(**pool.connection_kwargs)
            local.pid = os.getpid()
        connection: redis.Connection = local.connection
        return connection

    def message(self, task: str, kwargs: Mapping[str, Any]) -> bytes:
        """The message Celery's Redis transport stores for ``send_task(task, kwargs=kwargs)``.

        Byte for byte ``json.dumps(self.envelope(...))``, but only the body and the ids are serialised
        per message: the rest of the envelope is the same for every message of a task, so it is dumped
        once per task name and the per-message parts are spliced in (they are base64 and UUID text, which
        JSON never escapes). This is the ingress's hot path; tests/unit/shared/test_queues.py holds it
        equal to the plain dump.
        """
        task_id = str(uuid.uuid4())
        body = json.dumps([[], dict(kwargs), _EMBED], separators=(",", ":")).encode()
        template = self._templates.get(task)
        if template is None:
            template = self._templates[task] = self._template(task)
        texts, slots = template
        values = {
            _BODY_SLOT: base64.b64encode(body).decode(),
            _ID_SLOT: task_id,
            _TAG_SLOT: str(uuid.uuid4()),
        }
        parts = [texts[0]]
        for slot, text in zip(slots, texts[1:], strict=True):
            parts += (values[slot], text)
        return "".join(parts).encode()

    def envelope(self, task: str, body_b64: str, task_id: str, delivery_tag: str) -> dict[str, Any]:
        """Celery's task protocol v2 envelope, as kombu's Redis transport stores it."""
        return {
            "body": body_b64,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                # Celery logs these reprs; ours never carry message content or phone numbers.
                "argsrepr": "()",
                "kwargsrepr": "{...}",
                "origin": self._origin,
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue_for(task)},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": delivery_tag,
            },
        }

    def _template(self, task: str) -> tuple[list[str], list[str]]:
        """The dumped envelope cut around its per-message values: the texts between, and which value
        goes in each gap."""
        text = json.dumps(self.envelope(task, _BODY_SLOT, _ID_SLOT, _TAG_SLOT), separators=(",", ":"))
        pieces = re.split(f"({_BODY_SLOT}|{_ID_SLOT}|{_TAG_SLOT})", text)
        return pieces[0::2], pieces[1::2]


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# Stand-ins for the per-message values in a task's envelope template; random, so no task name, host
# name or other envelope text can contain one.
_BODY_SLOT = f"slot-body-{uuid.uuid4().hex}"
_ID_SLOT = f"slot-id-{uuid.uuid4().hex}"
_TAG_SLOT = f"slot-tag-{uuid.uuid4().hex}"

_publisher_lock = threading.Lock()
_publisher: Publisher | None = None
_publisher_pid: int | None = None


def get_publisher() -> Publisher:
    """The process-wide :class:`Publisher` on ``WAPIPE_REDIS_URL``, for workers enqueueing the next stage.

    Keyed by pid: a prefork worker child makes its own instead of sharing the parent's sockets.
    """
    global _publisher, _publisher_pid
    with _publisher_lock:
        if _publisher is None or _publisher_pid != os.getpid():
            from shared.settings import SettingsError, get_settings

            url = get_settings().redis_url
            if not url:
                raise SettingsError("WAPIPE_REDIS_URL is not set: start `wapipe up`, or set WAPIPE_REDIS_URL")
            _publisher = Publisher(url)
            _publisher_pid = os.getpid()
        return _publisher
