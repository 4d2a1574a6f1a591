"""The embedded default: PostgreSQL and Valkey under a data folder, detached, reused, stoppable."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from shared import embedded


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "var"
    yield folder
    embedded.stop(folder)


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def decoy() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts harmless processes that look like a server (its name and folder in their argv and cwd)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, cwd: Path) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv], cwd=cwd)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def _write_postmaster_pid(pgdata: Path, pid: int, start: float, port: int) -> None:
    # The documented layout: pid, data directory, start time (epoch seconds), port, socket dir, ...
    (pgdata / "postmaster.pid").write_text(
        f"{pid}\n{pgdata}\n{int(start)}\n{port}\n\n127.0.0.1\n  1 2\nready   \n"
    )


def test_a_recycled_pid_in_stale_pid_files_is_never_signalled(data_dir: Path, tmp_path: Path, decoy) -> None:
    # After a crash or a reboot the pid files name pids now used by other processes that look the part.
    pgdata = data_dir / "postgres"
    valkey = data_dir / "valkey"
    pgdata.mkdir(parents=True)
    valkey.mkdir()
    psql = decoy("psql", f"postgresql://postgres@127.0.0.1:5999/{pgdata}", "-D", str(pgdata), cwd=pgdata)
    tail = decoy("valkey-server", str(valkey / "valkey.log"), cwd=valkey)
    _write_postmaster_pid(pgdata, psql.pid, 1_700_000_000, 5999)
    (valkey / "valkey.pid").write_text(f"{tail.pid}\n")
    state = {
        "postgres": {"pid": psql.pid, "port": 5999, "url": "postgresql://postgres:x@127.0.0.1:5999/wapipe"},
        "valkey": {
            "pid": tail.pid,
            "port": 6999,
            "started": 1_700_000_000.0,
            "url": "redis://:x@127.0.0.1:6999/0",
        },
    }
    (data_dir / "servers.json").write_text(json.dumps(state))

    assert embedded.discover(data_dir) == embedded.Servers()
    assert embedded.stop(data_dir) == []
    assert psql.poll() is None
    assert tail.poll() is None

    # Another data folder's postmaster: the right start time, but it serves another folder.
    other = tmp_path / "other"
    other.mkdir()
    postmaster = decoy("postgres", "-D", str(other), cwd=other)
    _write_postmaster_pid(pgdata, postmaster.pid, psutil.Process(postmaster.pid).create_time(), 5999)
    state["postgres"]["pid"] = postmaster.pid
    (data_dir / "servers.json").write_text(json.dumps(state))

    assert embedded.discover(data_dir) == embedded.Servers()
    assert embedded.stop(data_dir) == []
    assert postmaster.poll() is None


def test_up_starts_fresh_servers_when_pid_files_name_recycled_pids(data_dir: Path, decoy) -> None:
    embedded.start(data_dir)
    state = embedded.read_state(data_dir)
    embedded.stop(data_dir)
    pgdata = data_dir / "postgres"
    valkey = data_dir / "valkey"
    # Same user, alive, named like the server: PostgreSQL itself refuses a pid file naming such a process.
    psql = decoy("postgres", "-D", str(pgdata), cwd=pgdata)
    tail = decoy("valkey-server", cwd=valkey)
    _write_postmaster_pid(pgdata, psql.pid, 1_700_000_000, state["postgres"]["port"])
    (valkey / "valkey.pid").write_text(f"{tail.pid}\n")
    state["postgres"]["pid"] = psql.pid
    # The crashed server was started long before its pid was recycled.
    state["valkey"].update(pid=tail.pid, started=1_700_000_000.0)
    (data_dir / "servers.json").write_text(json.dumps(state))

    servers = embedded.start(data_dir)

    with psycopg.connect(servers.database_url or "") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert redis.Redis.from_url(servers.redis_url or "").ping()
    assert embedded.discover(data_dir) == servers
    fresh = embedded.read_state(data_dir)
    assert {fresh["postgres"]["pid"], fresh["valkey"]["pid"]}.isdisjoint({psql.pid, tail.pid})
    assert embedded.stop(data_dir) == ["postgres", "valkey"]
    assert psql.poll() is None
    assert tail.poll() is None


def test_start_connect_reuse_stop_and_keep_data(data_dir: Path) -> None:
    servers = embedded.start(data_dir)
    assert servers.database_url
    assert servers.redis_url
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    broker = redis.Redis.from_url(servers.redis_url)
    # The append-only file is the broker's durability (deploy/README.md).
    assert broker.config_get("appendonly") == {"appendonly": "yes"}
    broker.set("queued", "task")

    # Listening on loopback only, on ports chosen free, under a password.
    state = embedded.read_state(data_dir)
    for name in ("postgres", "valkey"):
        listening = {
            conn.laddr.ip
            for conn in psutil.Process(state[name]["pid"]).net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=state["valkey"]["port"]).set("x", "y")
    assert (data_dir / "servers.json").stat().st_mode & 0o077 == 0

    # A second start reuses the running servers (same processes), as a second `wapipe up` does.
    assert embedded.start(data_dir) == servers
    assert embedded.read_state(data_dir) == state
    assert embedded.discover(data_dir) == servers

    assert embedded.stop(data_dir) == ["postgres", "valkey"]
    assert embedded.discover(data_dir) == embedded.Servers()
    for name in ("postgres", "valkey"):
        assert not psutil.pid_exists(state[name]["pid"])

    # Started again, both have kept their data: the table, and the key through the append-only file.
    again = embedded.start(data_dir)
    with psycopg.connect(again.database_url or "") as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("still here",)]
    assert redis.Redis.from_url(again.redis_url or "").get("queued") == b"task"


def test_stale_pid_state_is_cleared_on_start(data_dir: Path) -> None:
    embedded.start(data_dir)
    state = embedded.read_state(data_dir)
    embedded.stop(data_dir)
    # As after a crash or a reboot: pid files and state naming processes that are gone.
    gone = _dead_pid()
    pgdata = data_dir / "postgres"
    (pgdata / "postmaster.pid").write_text(
        f"{gone}\n{pgdata}\n1700000000\n{state['postgres']['port']}\n\n127.0.0.1\n  1 2\nready   \n"
    )
    (data_dir / "valkey" / "valkey.pid").write_text(f"{gone}\n")
    for name in ("postgres", "valkey"):
        state[name]["pid"] = gone
    (data_dir / "servers.json").write_text(json.dumps(state))

    assert embedded.discover(data_dir) == embedded.Servers()
    servers = embedded.start(data_dir)
    with psycopg.connect(servers.database_url or "") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert redis.Redis.from_url(servers.redis_url or "").ping()
    assert embedded.read_state(data_dir)["postgres"]["pid"] != gone


def test_commands_find_the_servers_through_the_data_folder(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_explicit_urls", None)
    servers = embedded.start(data_dir, postgres=False)
    assert servers.database_url is None
    monkeypatch.setenv("WAPIPE_DATABASE_URL", "postgresql://explicit@127.0.0.1:1/x")
    monkeypatch.delenv("WAPIPE_REDIS_URL")
    monkeypatch.setenv("WAPIPE_DATA_DIR", "/nonexistent")

    found = embedded.use_data_dir_servers(data_dir)

    # The unset URL is filled in; the one set explicitly wins.
    assert found == {"WAPIPE_REDIS_URL": servers.redis_url}
    assert os.environ["WAPIPE_REDIS_URL"] == servers.redis_url
    assert os.environ["WAPIPE_DATABASE_URL"] == "postgresql://explicit@127.0.0.1:1/x"
    assert os.environ["WAPIPE_DATA_DIR"] == str(data_dir)
    assert embedded.explicit_urls() == {"WAPIPE_DATABASE_URL"}

    # `wapipe down` stops them.
    env = {**os.environ}
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "down", "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valkey" in result.stdout
    assert embedded.discover(data_dir) == embedded.Servers()


def test_servers_stay_known_after_the_wall_clock_is_stepped(data_dir: Path) -> None:
    # NTP or a VM resume steps the clock: the start time derived from it for a running process moves by as
    # much, so the start times recorded when the servers started no longer match. Simulated by shifting
    # the recorded times instead of the clock.
    servers = embedded.start(data_dir)
    state = embedded.read_state(data_dir)
    state["valkey"]["started"] += 3600
    (data_dir / "servers.json").write_text(json.dumps(state))
    pid_file = data_dir / "postgres" / "postmaster.pid"
    lines = pid_file.read_text().splitlines(keepends=True)
    lines[2] = f"{int(lines[2]) + 3600}\n"
    pid_file.write_text("".join(lines))

    # Still running: found, reused (no second valkey-server on the same append-only file), and stopped.
    assert embedded.discover(data_dir) == servers
    assert embedded.start(data_dir) == servers
    again = embedded.read_state(data_dir)
    assert (again["postgres"]["pid"], again["valkey"]["pid"]) == (
        state["postgres"]["pid"],
        state["valkey"]["pid"],
    )
    assert pid_file.exists()
    assert embedded.stop(data_dir) == ["postgres", "valkey"]
    for name in ("postgres", "valkey"):
        assert not psutil.pid_exists(state[name]["pid"])


def test_a_lost_or_broken_secrets_file_never_replaces_the_postgres_password(data_dir: Path) -> None:
    # PGDATA keeps the password it was created with; a new one in secrets.json could never log in.
    embedded.start(data_dir, redis=False)
    secrets_file = data_dir / "secrets.json"
    kept = secrets_file.read_text()
    password = json.loads(kept)["postgres_password"]
    pgdata = data_dir / "postgres"

    secrets_file.unlink()
    with pytest.raises(embedded.EmbeddedError) as lost:
        embedded.start(data_dir, redis=False)
    assert "secrets.json" in str(lost.value)
    assert str(pgdata) in str(lost.value)  # remove it to start afresh
    assert "postgres_password" not in embedded.read_secrets(data_dir)

    secrets_file.write_text(kept[: len(kept) // 2])  # cut short, as by a full disk
    with pytest.raises(embedded.EmbeddedError) as broken:
        embedded.start(data_dir, redis=False)
    assert "secrets.json" in str(broken.value)
    assert secrets_file.read_text() == kept[: len(kept) // 2]  # left for the user to repair

    # Another data folder's secrets.json: the server refuses the password, said without a traceback or it.
    wrong = "0" * len(password)
    secrets_file.write_text(json.dumps({"postgres_password": wrong}))
    with pytest.raises(embedded.EmbeddedError) as refused:
        embedded.start(data_dir, redis=False)
    assert "secrets.json" in str(refused.value)
    assert wrong not in str(refused.value)
    assert refused.value.__cause__ is None

    secrets_file.write_text(kept)
    servers = embedded.start(data_dir, redis=False)
    with psycopg.connect(servers.database_url or "") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_embedded_server_that_dies_under_up_is_started_again(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.commands.up import watch_embedded
    from shared.supervisor import Supervisor

    servers = embedded.start(data_dir, postgres=False)
    redis.Redis.from_url(servers.redis_url or "").rpush("celery", "an acknowledged task")
    valkey = psutil.Process(embedded.read_state(data_dir)["valkey"]["pid"])
    supervisor = Supervisor([], {}, watch=watch_embedded(data_dir, postgres=False, redis=True))

    supervisor.watch_servers()  # all well: nothing said or done
    assert capsys.readouterr().err == ""
    assert embedded.read_state(data_dir)["valkey"]["pid"] == valkey.pid

    valkey.kill()
    valkey.wait(10)
    assert embedded.discover(data_dir) == embedded.Servers()
    supervisor.watch_servers()

    said = capsys.readouterr().err
    assert f"the embedded valkey (pid {valkey.pid}) has stopped; starting it again" in said
    assert embedded.discover(data_dir) == servers  # same port and password: the workers' URL still holds
    assert redis.Redis.from_url(servers.redis_url or "").lrange("celery", 0, -1) == [b"an acknowledged task"]

    # Stopped on purpose by `wapipe down --force`: left stopped.
    embedded.stop(data_dir)
    supervisor.watch_servers()
    assert embedded.discover(data_dir) == embedded.Servers()


def test_a_running_valkey_is_reused_when_servers_json_missed_its_start(data_dir: Path) -> None:
    # A command killed between starting Valkey and recording it: servers.json still names the server
    # before it. A second valkey-server on the same append-only file would corrupt the broker.
    servers = embedded.start(data_dir, postgres=False)
    state = embedded.read_state(data_dir)
    running = state["valkey"]["pid"]
    state["valkey"].update(pid=_dead_pid(), started=1_700_000_000.0, start_ticks=1, boot_id="an earlier boot")
    (data_dir / "servers.json").write_text(json.dumps(state))

    assert embedded.start(data_dir, postgres=False) == servers
    assert embedded.read_state(data_dir)["valkey"]["pid"] == running
    assert [
        p.pid
        for p in psutil.process_iter()
        if p.name().startswith("valkey-server") and p.cwd() == str(data_dir / "valkey")
    ] == [running]


def test_an_embedded_postgres_killed_under_up_is_started_again_with_its_data(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.commands.up import watch_embedded
    from shared.supervisor import Supervisor

    servers = embedded.start(data_dir, redis=False)
    with psycopg.connect(servers.database_url or "", autocommit=True) as conn:
        conn.execute("CREATE TABLE acknowledged (note text)")
        conn.execute("INSERT INTO acknowledged VALUES ('committed')")
    postmaster = psutil.Process(embedded.read_state(data_dir)["postgres"]["pid"])
    supervisor = Supervisor([], {}, watch=watch_embedded(data_dir, postgres=True, redis=False))

    postmaster.kill()
    postmaster.wait(10)
    # Its backends may still hold the shared memory for a moment: then it is retried at the next look.
    for _ in range(100):
        supervisor.watch_servers()
        if embedded.discover(data_dir) == servers:
            break
    said = capsys.readouterr().err
    assert f"the embedded postgres (pid {postmaster.pid}) has stopped; starting it again" in said
    assert embedded.discover(data_dir) == servers
    with psycopg.connect(servers.database_url or "") as conn:
        assert conn.execute("SELECT note FROM acknowledged").fetchall() == [("committed",)]


_START_POSTGRES = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from shared import embedded\n"
    "embedded.start(sys.argv[1], redis=False)\n"
)


def _runs_initdb(pid: int) -> bool:
    """Whether ``pid`` has an initdb among its descendants (initdb's own children come and go meanwhile)."""
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == "initdb":
                return True
    return False


def test_a_first_start_interrupted_during_initdb_leaves_nothing_the_next_start_trips_on(
    data_dir: Path,
) -> None:
    # Ctrl-C during the first `wapipe up` kills initdb part way (subprocess.run kills its child on
    # KeyboardInterrupt). Its half-made PGDATA had PG_VERSION, so every later start took it for a made
    # one, started it, and could not connect: "database "postgres" does not exist", for good.
    first = subprocess.Popen([sys.executable, "-c", _START_POSTGRES, str(data_dir)], start_new_session=True)
    try:
        interrupted = False
        for _ in range(3000):
            if _runs_initdb(first.pid) and list(data_dir.glob("**/PG_VERSION")):
                first.send_signal(signal.SIGINT)
                interrupted = True
                break
            if first.poll() is not None:
                break
            time.sleep(0.01)
        assert interrupted, "initdb was never seen running with PG_VERSION written"
        assert first.wait(30) != 0
    finally:
        first.kill()
        first.wait()

    servers = embedded.start(data_dir, redis=False)
    with psycopg.connect(servers.database_url or "") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert sorted(path.name for path in data_dir.iterdir() if "postgres" in path.name) == ["postgres"]


def test_every_command_reaches_the_servers_of_the_data_folder_it_is_given(
    data_dir: Path, tmp_path: Path
) -> None:
    # Only up, down and chat took --data-dir: the others refused it, so the servers of a
    # `wapipe up --data-dir X` were reached only through $WAPIPE_DATA_DIR, and with it pointing at another
    # folder (or unset: ./var) they talked to nothing, or to another `wapipe up`'s servers.
    servers = embedded.start(data_dir)
    assert servers.database_url
    assert servers.redis_url
    env = {key: value for key, value in os.environ.items() if not key.startswith("WAPIPE_")}
    env["WAPIPE_DATA_DIR"] = str(tmp_path / "another")

    def wapipe(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    given = str(data_dir)
    assert wapipe("migrate", "--data-dir", given).stdout.startswith("applied ")
    wapipe("seed-demo", "--data-dir", given)
    with psycopg.connect(servers.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM workspaces").fetchone() == (1,)
        conn.execute(
            "INSERT INTO dead_letters (task_name, payload, error, attempts)"
            " VALUES ('maintenance.retention', '{}', 'x', 1)"
        )
    # Before or after the action.
    assert "maintenance.retention" in wapipe("dlq", "--data-dir", given, "list").stdout
    assert "maintenance.retention" in wapipe("dlq", "list", "--data-dir", given).stdout
    wapipe("dlq", "replay", "--all", "--data-dir", given)
    assert redis.Redis.from_url(servers.redis_url).llen("maintenance") == 1
