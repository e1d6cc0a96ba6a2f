"""A hung endpoint for tests: a TCP listener that accepts connections and never answers.

What a Glance API server looks like when its workers are all stuck (a wedged
uWSGI, a blocked database): the kernel completes the handshake, the server takes
the connection, and then nothing comes back. No real server can be told to do
that, so :class:`HungListener` does it on 127.0.0.1 in a thread of the test
process (the daemon under test is another process): it accepts, never reads a
byte, never writes one, and keeps every socket open until it is stopped.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self

__all__ = ["HungListener"]

#: How often the accept loop looks whether it was stopped (s).
_POLL = 0.1


class HungListener:
    """Accepts on 127.0.0.1 and holds each connection open, silent (see the module)."""

    def __init__(self) -> None:
        self._server: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """How many connections it has taken so far."""
        with self._lock:
            return len(self._held)

    def _accept(self, server: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed under us
            with self._lock:
                self._held.append(conn)  # never read, never answered, kept open

    def start(self) -> Self:
        server = socket.create_server(("127.0.0.1", 0), backlog=64)
        server.settimeout(_POLL)
        self._server = server
        self.port = int(server.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, args=(server,),
                                        name="hung-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            for conn in self._held:
                conn.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
