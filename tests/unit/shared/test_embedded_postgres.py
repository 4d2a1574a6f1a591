"""The embedded PostgreSQL's data folder made reachable by its account: what changes is said."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.embedded.postgres import _let_account_reach


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/home/user/data``, each folder 0700 like /root; the modes of the folders above
    ``tmp_path`` (pytest's, outside the test) are put back afterwards."""
    above = {folder: stat.S_IMODE(folder.stat().st_mode) for folder in tmp_path.parents}
    data = tmp_path / "home" / "user" / "data"
    data.mkdir(parents=True)
    for folder in (tmp_path, tmp_path / "home", tmp_path / "home" / "user", data):
        folder.chmod(0o700)
    yield data
    for folder, mode in above.items():
        if stat.S_IMODE(folder.stat().st_mode) != mode:
            folder.chmod(mode)


def _mode(folder: Path) -> int:
    return stat.S_IMODE(folder.stat().st_mode)


def test_folders_opened_to_the_postgres_account_are_named_on_stderr(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _let_account_reach(tree)

    captured = capsys.readouterr()
    # Before: /root went from 0700 to 0701 and nothing said so.
    assert captured.out == ""
    [line] = captured.err.splitlines()
    named = line.rsplit(" on: ", 1)[1].split(", ")
    opened = [tree, tree.parent, tree.parent.parent, tree.parent.parent.parent]
    assert named[: len(opened)] == [str(folder) for folder in opened]
    assert [_mode(folder) for folder in opened] == [0o701] * len(opened)
    assert "o+x" in line

    _let_account_reach(tree)  # already reachable: nothing changes, nothing is said

    assert capsys.readouterr().err == ""
    assert _mode(tree) == 0o701


def test_a_reachable_path_is_left_alone_and_unmentioned(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in (tree, *tree.parents):
        if not _mode(folder) & stat.S_IXOTH:
            folder.chmod(_mode(folder) | stat.S_IXOTH)

    _let_account_reach(tree)

    assert capsys.readouterr().err == ""
    assert _mode(tree) == 0o701


# `wapipe up` with this module's account name replaced by one no machine has, so that the account is
# created (or not) under a name of the test's own, and the folders useradd is looked for in when PATH
# lacks it replaced by the test's (none: the machine's own useradd must not run).
UP_AS = (
    "import os, sys; from shared.embedded import postgres; postgres.POSTGRES_SYSTEM_USER = sys.argv[1];"
    " postgres.USERADD_FOLDERS = tuple(filter(None, sys.argv[2].split(os.pathsep)));"
    " from shared.cli import main; sys.exit(main(sys.argv[3:]))"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _up_as_root(
    account: str, data_dir: Path, path: str, *, useradd_folders: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("WAPIPE_")}
    env["PATH"] = path
    return subprocess.run(
        [
            sys.executable,
            "-c",
            UP_AS,
            account,
            os.pathsep.join(map(str, useradd_folders)),
            "up",
            "--data-dir",
            str(data_dir),
            "--port",
            str(_free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _path_without_useradd(*first: Path) -> str:
    kept = [
        folder for folder in os.environ["PATH"].split(os.pathsep) if not (Path(folder) / "useradd").exists()
    ]
    return os.pathsep.join([*map(str, first), *kept])


@pytest.fixture
def missing_account() -> str:
    """A system account name nobody has; the tests that use it are about what root does without it."""
    if os.geteuid() != 0:
        pytest.skip("the PostgreSQL account is made only when wapipe runs as root")
    name = f"wapipe-test-{uuid.uuid4().hex[:8]}"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    return name


def test_up_as_root_without_useradd_says_what_to_do_in_one_line(tmp_path: Path, missing_account: str) -> None:
    # Alpine, distroless and other slim images have no useradd: `wapipe up` as root ended in
    # "No such file or directory: /usr/sbin/useradd", which said nothing of why or what to do.
    result = _up_as_root(missing_account, tmp_path / "var", _path_without_useradd())

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [said] = result.stderr.strip().splitlines()
    assert said.startswith("wapipe up: PostgreSQL will not run as root"), said
    assert f"create the system user {missing_account}" in said, said
    assert "no useradd" in said, said
    assert "WAPIPE_DATABASE_URL" in said, said
    with pytest.raises(KeyError):
        pwd.getpwnam(missing_account)


def test_up_as_root_whose_useradd_fails_says_why_in_one_line(tmp_path: Path, missing_account: str) -> None:
    # A useradd that cannot write /etc/passwd (a read-only root filesystem, a locked file) ended the
    # command in a CalledProcessError's traceback.
    tools = tmp_path / "bin"
    tools.mkdir()
    useradd = tools / "useradd"
    useradd.write_text("#!/bin/sh\necho 'useradd: cannot lock /etc/passwd; try again later.' >&2\nexit 1\n")
    useradd.chmod(0o755)

    result = _up_as_root(missing_account, tmp_path / "var", _path_without_useradd(tools))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [said] = result.stderr.strip().splitlines()
    assert said.startswith("wapipe up: PostgreSQL will not run as root"), said
    assert "useradd: cannot lock /etc/passwd" in said, said
    assert f"create the system user {missing_account}" in said, said


def test_up_as_root_finds_useradd_in_sbin_when_path_lacks_it(tmp_path: Path, missing_account: str) -> None:
    # Root's cron (PATH=/usr/bin:/bin) and `su` without `-` have no sbin on PATH: the account was
    # created all the same before useradd was looked up on PATH only, then it was "no useradd on PATH".
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    useradd = sbin / "useradd"
    useradd.write_text("#!/bin/sh\necho 'useradd from sbin ran' >&2\nexit 1\n")  # creates no one
    useradd.chmod(0o755)

    result = _up_as_root(missing_account, tmp_path / "var", _path_without_useradd(), useradd_folders=(sbin,))

    assert result.returncode == 1, result.stdout + result.stderr
    [said] = result.stderr.strip().splitlines()
    assert "useradd from sbin ran" in said, said
