"""The port probe of `wapipe up`: a port is taken only while something listens on it."""

from __future__ import annotations

import socket

import psutil

from shared.embedded.processes import port_is_free


def _listener(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen()
    return sock


def _time_wait_on(port: int) -> bool:
    return any(
        conn.status == psutil.CONN_TIME_WAIT and conn.laddr and conn.laddr.port == port
        for conn in psutil.net_connections(kind="tcp4")
    )


def test_a_port_left_in_time_wait_by_the_last_run_is_free() -> None:
    # As gunicorn leaves its port after a restart: it accepted a keepalive connection and closed it first,
    # so the server side of that connection sits in TIME_WAIT for a minute after the server has gone.
    server = _listener("127.0.0.1")
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server closes first
    assert client.recv(1) == b""
    client.close()
    server.close()
    assert _time_wait_on(port)

    assert port_is_free(port)


def test_a_port_something_listens_on_is_taken() -> None:
    for host in ("127.0.0.1", "0.0.0.0"):  # noqa: S104 - a listener on every address also takes the port
        with _listener(host) as server:
            assert not port_is_free(server.getsockname()[1])


def test_only_port_numbers_are_free() -> None:
    for port in (None, 0, 65536, "8000", True):
        assert not port_is_free(port)
