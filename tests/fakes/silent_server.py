"""A TCP server on 127.0.0.1 that takes connections and whatever they send, and never answers: a broker
hung or behind a black-holed route, as a client sees it (its request sent, its read timing out).

``wait_for_request(timeout)`` returns once a client has sent something, so a test can act while that
client is blocked waiting for the answer. Closing it closes every connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class SilentServer:
    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._received = threading.Event()

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def wait_for_request(self, timeout: float) -> bool:
        return self._received.wait(timeout)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._sockets.append(client)
            threading.Thread(target=self._swallow, args=(client,), daemon=True).start()

    def _swallow(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while client.recv(65536):
                self._received.set()
