"""The data folder of ``wapipe up``: where it is, and the private JSON files the servers keep in it.

``servers.json`` (URLs, ports, pids) and ``secrets.json`` (generated dev passwords and tokens) hold
passwords, so both are written atomically with mode 0600. An exclusive lock per data folder keeps two
commands started at once from starting two servers or generating two different secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.embedded.processes import EmbeddedError

DATA_DIR_VAR = "WAPIPE_DATA_DIR"
DEFAULT_DATA_DIR = "var"
STATE_FILE = "servers.json"
SECRETS_FILE = "secrets.json"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder as an absolute path: the argument, else $WAPIPE_DATA_DIR, else ./var."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_VAR) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def write_private_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON atomically with mode 0600 (it holds passwords)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return content if isinstance(content, dict) else {}


def read_state(data_dir: Path) -> dict[str, Any]:
    return read_json(data_dir / STATE_FILE)


def read_secrets(data_dir: Path) -> dict[str, Any]:
    """The generated dev secrets of a data folder (empty when there are none)."""
    return read_json(data_dir / SECRETS_FILE)


def secret(data_dir: Path, name: str, *, lost: str | None = None) -> str:
    """A dev secret generated once per data folder and kept in ``secrets.json`` (mode 0600).

    ``lost`` says why the secret must already exist (data made with it) and how to recover: then a missing
    secret is an error instead of a new one, which that data would refuse. A ``secrets.json`` that is not
    a JSON object is never overwritten: the secrets in it may be the only key to the data folder.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with locked(data_dir, "secrets"):
        path = data_dir / SECRETS_FILE
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            stored = {}
        except (OSError, ValueError) as exc:
            raise EmbeddedError(
                f"{path} cannot be read ({type(exc).__name__}); restore it from a backup, or remove it "
                "to have new secrets generated (the embedded PostgreSQL data, made with the old password, "
                "must then go too)"
            ) from None
        if not isinstance(stored, dict):
            raise EmbeddedError(f"{path} is not a JSON object; restore it from a backup, or remove it")
        if not isinstance(stored.get(name), str) or not stored[name]:
            if lost is not None:
                raise EmbeddedError(f"{path} holds no {name}, but {lost}")
            stored[name] = secrets.token_hex(16)
            write_private_json(path, stored)
        return str(stored[name])


@contextlib.contextmanager
def locked(data_dir: Path, what: str) -> Iterator[None]:
    """An exclusive lock per data folder, so two commands starting at once don't start two servers."""
    with open(data_dir / f".{what}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
