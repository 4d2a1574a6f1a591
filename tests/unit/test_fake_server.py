"""The fake provider servers stay quiet when a client hangs up: printing that traceback from a handler
thread races hypothesis's ``ast.parse`` in the test's thread on Python 3.11 (see ``_QuietServer``)."""

from __future__ import annotations

import pytest

from tests.fakes.media_host import MediaHost


def _error_handled_by(host: MediaHost, error: Exception) -> None:
    try:
        raise error
    except Exception:
        host._server.handle_error(None, ("127.0.0.1", 1))


@pytest.mark.parametrize("error", [BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset")])
def test_a_client_that_hung_up_prints_nothing(capsys: pytest.CaptureFixture[str], error: Exception) -> None:
    host = MediaHost()
    try:
        _error_handled_by(host, error)
    finally:
        host._server.server_close()
    assert capsys.readouterr().err == ""


def test_any_other_error_in_a_handler_is_still_printed(capsys: pytest.CaptureFixture[str]) -> None:
    host = MediaHost()
    try:
        _error_handled_by(host, ValueError("a bug in the fake"))
    finally:
        host._server.server_close()
    assert "a bug in the fake" in capsys.readouterr().err
