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
from typing import Self

from psycopg.conninfo import make_conninfo

# ReadyForQuery: 'Z', length 5 (https://www.postgresql.org/docs/current/protocol-message-formats.html).
READY_FOR_QUERY = b"Z\x00\x00\x00\x05"


class StallingPostgres:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self.held = 0  # bytes held back after login, over every connection

    def url(self, database_url: str) -> str:
        """``database_url`` pointed at this proxy, without encryption (see the module docstring)."""
        return make_conninfo(
            database_url, host="127.0.0.1", port=str(self.port), sslmode="disable", gssencmode="disable"
        )

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _keep(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._keep(client):
                return
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            if not self._keep(server):
                return
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
