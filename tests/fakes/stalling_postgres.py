"""A TCP proxy on 127.0.0.1 in front of the real PostgreSQL that lets a client log in, then holds back every
byte the client sends after that: what a client sees behind PgBouncer when PostgreSQL is down or saturated
(the login to the pooler succeeds, the query waits for a server connection that never comes).

The login is let through until the server's first ReadyForQuery message; connections must not negotiate
TLS or GSS encryption (``sslmode=disable``, ``gssencmode=disable``: see :meth:`StallingPostgres.url`), or
that message could not be seen. Closing the proxy closes every connection, so a client still waiting gets
an error instead of waiting for ever.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from psycopg.conninfo import make_conninfo

from tests.fakes.tcp_proxy import TCPProxy

# ReadyForQuery: 'Z', length 5 (https://www.postgresql.org/docs/current/protocol-message-formats.html).
READY_FOR_QUERY = b"Z\x00\x00\x00\x05"


class StallingPostgres(TCPProxy):
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self.held = 0  # bytes held back after login, over every connection

    def url(self, database_url: str) -> str:
        """``database_url`` pointed at this proxy, without encryption (see the module docstring)."""
        return make_conninfo(
            database_url, host="127.0.0.1", port=str(self.port), sslmode="disable", gssencmode="disable"
        )

    def _join(self, client: socket.socket, server: socket.socket) -> None:
        logged_in = threading.Event()
        threading.Thread(target=self._to_client, args=(server, client, logged_in), daemon=True).start()
        threading.Thread(target=self._to_server, args=(client, server, logged_in), daemon=True).start()

    def _to_client(self, server: socket.socket, client: socket.socket, logged_in: threading.Event) -> None:
        seen = b""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if not logged_in.is_set():
                    seen = (seen + data)[-4096:]
                    if READY_FOR_QUERY in seen:
                        logged_in.set()
                client.sendall(data)

    def _to_server(self, client: socket.socket, server: socket.socket, logged_in: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                # The login's last message and the server's ReadyForQuery can cross: a client sends nothing
                # more before it has read ReadyForQuery, so whatever arrives after it is the query.
                if logged_in.is_set():
                    with self._lock:
                        self.held += len(data)
                    continue
                server.sendall(data)
