"""The embedded PostgreSQL's data folder made reachable by its account: what changes is said."""

from __future__ import annotations

import stat
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
