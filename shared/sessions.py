"""Chat sessions in Redis: what a WhatsApp user has selected, and where each of their conversations is in
a menu flow.

A session lives 30 minutes (``WAPIPE_SESSION_TTL``) after the user's last message, so an abandoned form
expires by itself. It is shared by every worker process, which is why it is in Redis and not in memory.
The user's own session (keyed by their phone) holds their selection; the menu flows keep one session per
conversation (``<phone>/conversation/<id>``, shared/flows/service.py), so a person writing to two of our
business numbers has a form going in each, neither overwriting the other.

A session is keyed by phone, but a phone can change hands (unlinked, then linked to another account), so
the workspace and project selection is stored with the id of the user who made it (``user_id``) and read
back only for that user: :meth:`Sessions.selected`. Binding the selection, rather than clearing sessions
wherever a link changes (the verify worker, the links API, a user moving to a new number), holds whatever
path changed the link, and costs a user whose session predates it one ``/project``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import redis

from shared.settings import get_settings

_PREFIX = "session:"
# SET KEYS[1] only while the lock KEYS[2] holds the token ARGV[3]: a check and a write with nothing between.
# With a KEYS[3] (a :class:`Beside`), set it to ARGV[4] for ARGV[5] seconds, or delete it without an ARGV[4].
_SET_WHILE_HELD = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if KEYS[3] then
  if ARGV[4] then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5]) else redis.call('DEL', KEYS[3]) end
end
return 1
"""


def _key(user_key: str) -> str:
    return _PREFIX + user_key


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a Redis SCAN pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


@dataclass(frozen=True)
class Selection:
    """The workspace and project ids (as stored, strings) a user has chosen; None when not chosen."""

    workspace_id: str | None = None
    project_id: str | None = None


@dataclass(frozen=True)
class Beside:
    """A key written in the same step as a session: set to ``value`` for ``ttl_seconds``, or deleted when
    ``value`` is None. It may outlive the session (shared/flows/service.py notes a form under way in one)."""

    key: str
    value: str | None = None
    ttl_seconds: int = 0


class Sessions:
    """Load, save and clear sessions; ``user_key`` is the contact's E.164 phone (or Meta BSUID)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int | None = None) -> None:
        self._redis = client
        self._ttl = ttl_seconds or get_settings().session_ttl_seconds

    def load(self, user_key: str) -> dict[str, Any]:
        """The session's data (empty when none or expired), renewing its TTL."""
        raw = self._redis.get(_key(user_key))
        if raw is None:
            return {}
        self._redis.expire(_key(user_key), self._ttl)
        return json.loads(raw)

    def peek(self, user_key: str) -> dict[str, Any]:
        """The session's data (empty when none or expired), its TTL left as it is."""
        raw = self._redis.get(_key(user_key))
        return {} if raw is None else json.loads(raw)

    def save(
        self,
        user_key: str,
        data: dict[str, Any],
        *,
        while_held: tuple[str, str] | None = None,
        beside: Beside | None = None,
    ) -> bool:
        """Save the session; return whether it was saved.

        ``while_held`` is a lock (its Redis key and its holder's token): the session is then saved only
        if that key still holds the token, checked and set in one step, so a holder whose lease ran out
        cannot overwrite what the next holder saved (shared/flows/service.py saves flow state this way).
        ``beside`` is written (or deleted) in that same step, only with ``while_held``.
        """
        raw = json.dumps(data, separators=(",", ":"))
        if while_held is None:
            if beside is not None:
                raise ValueError("a key beside the session is written only under a lock (while_held)")
            self._redis.set(_key(user_key), raw, ex=self._ttl)
            return True
        lock_key, token = while_held
        keys = [_key(user_key), lock_key]
        args: list[str | int] = [raw, self._ttl, token]
        if beside is not None:
            keys.append(beside.key)
            if beside.value is not None:
                args += [beside.value, beside.ttl_seconds]
        return bool(self._redis.eval(_SET_WHILE_HELD, len(keys), *keys, *args))

    def update(self, user_key: str, **changes: Any) -> dict[str, Any]:
        """Merge changes into the session (a None value removes the key) and save it."""
        data = self.load(user_key)
        for name, value in changes.items():
            if value is None:
                data.pop(name, None)
            else:
                data[name] = value
        self.save(user_key, data)
        return data

    def selected(self, user_key: str, user_id: UUID | None) -> Selection:
        """What ``user_id`` selected on this number: nothing when another user made the selection."""
        data = self.load(user_key)
        if user_id is None or data.get("user_id") != str(user_id):
            return Selection()
        return Selection(data.get("workspace_id"), data.get("project_id"))

    def select(
        self, user_key: str, user_id: UUID, *, workspace_id: str | None, project_id: str | None
    ) -> None:
        """Record ``user_id``'s selection (a None id removes it), replacing whoever's was there."""
        self.update(user_key, user_id=str(user_id), workspace_id=workspace_id, project_id=project_id)

    def forget_project(self, user_key: str, project_id: str | None) -> None:
        """Drop the selected project if it is still ``project_id``: one found unusable, not a newer choice."""
        data = self.load(user_key)
        if project_id is not None and data.get("project_id") == project_id:
            data.pop("project_id")
            self.save(user_key, data)

    def clear(self, user_key: str) -> bool:
        return bool(self._redis.delete(_key(user_key)))

    def clear_all(self, user_key: str, *, beside: Callable[[str], str] | None = None) -> int:
        """Clear the user's session and the menu states of each of their conversations
        (``<user key>/conversation/<id>``, shared/flows/service.py); how many sessions there were.

        ``beside`` names, from a conversation's id, the key kept beside its menu state (a :class:`Beside`),
        cleared in the same step: left there, it would speak of a state no longer there.
        """
        prefix = _key(user_key) + "/conversation/"
        found = [key.decode() for key in self._redis.scan_iter(match=_glob_escaped(prefix) + "*", count=500)]
        steps = self._redis.pipeline(transaction=True)
        steps.delete(_key(user_key), *found)
        if beside is not None and found:
            steps.delete(*(beside(key[len(prefix) :]) for key in found))
        return int(steps.execute()[0])

    def list(self, limit: int = 100, cursor: int = 0) -> tuple[int, list[tuple[str, int]]]:
        """A page of live sessions as (user_key, seconds left), and the cursor for the next page (0: end)."""
        cursor, keys = self._redis.scan(cursor=cursor, match=_PREFIX + "*", count=limit)
        found = [(key.decode()[len(_PREFIX) :], int(self._redis.ttl(key))) for key in keys]
        return int(cursor), found

    def inspect(self, limit: int = 100, cursor: int = 0) -> tuple[int, list[tuple[str, int, dict[str, Any]]]]:
        """Like :meth:`list` with each session's data, in one pipelined round trip, renewing no TTL."""
        cursor, keys = self._redis.scan(cursor=cursor, match=_PREFIX + "*", count=limit)
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        replies = pipe.execute() if keys else []
        found = [
            (key.decode()[len(_PREFIX) :], int(ttl), json.loads(raw))
            for key, raw, ttl in zip(keys, replies[0::2], replies[1::2], strict=True)
            if raw is not None and int(ttl) > 0  # expired between the scan and the read
        ]
        return int(cursor), found
