"""A TCP proxy on 127.0.0.1 in front of a real server (PostgreSQL, Redis) that passes bytes both ways
unchanged and counts the connections made through it, so a test can see how many a client opened.

Closing it refuses new connections and cuts those open: the server, as its clients see it, has gone away.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class TCPProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self.connections = 0  # accepted since start, closed ones included

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
            with self._lock:
                self.connections += 1
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            if not self._keep(server):
                return
            self._join(client, server)

    def _join(self, client: socket.socket, server: socket.socket) -> None:
        """Pass the bytes of a new connection both ways (a subclass may pass them otherwise)."""
        threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
        threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        # One side is done: let the other see the end too, or it waits on a half-open connection.
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
