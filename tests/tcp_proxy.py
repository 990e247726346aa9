"""A small fault-injecting TCP proxy for tests: put it between the router and Redis.

    with FaultProxy(redis_server.port) as proxy:
        router = RouterProcess(proxy.url)
        proxy.latency = 0.2        # every chunk, both directions, is delivered 200 ms late
        proxy.reset_all()          # every open connection is reset (RST to both ends)

Threads, not asyncio, so it runs next to synchronous test code. Each direction of each connection has a
reader (stamps chunks with their delivery time) and a writer (sends them when due), so added latency
delays every chunk without throttling the stream.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from types import TracebackType

_POLL_SECONDS = 0.1
_CHUNK = 65536


def _abort(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Connection:
    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self._open_directions = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        for src, dst in ((self.client, self.upstream), (self.upstream, self.client)):
            chunks: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
            threading.Thread(target=self._read, args=(src, chunks), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, chunks), daemon=True).start()

    def _read(self, src: socket.socket, chunks: queue.Queue[tuple[float, bytes] | None]) -> None:
        src.settimeout(_POLL_SECONDS)
        try:
            while not self.closed.is_set():
                try:
                    data = src.recv(_CHUNK)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                chunks.put((time.monotonic() + self.proxy.latency, data))
        finally:
            chunks.put(None)

    def _write(self, dst: socket.socket, chunks: queue.Queue[tuple[float, bytes] | None]) -> None:
        while True:
            item = chunks.get()
            if item is None or self.closed.is_set():
                break
            due, data = item
            delay = due - time.monotonic()
            if delay > 0 and self.closed.wait(delay):
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        if not self.closed.is_set():
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        with self._lock:
            self._open_directions -= 1
            finished = self._open_directions == 0
        if finished:
            self.close(reset=False)

    def close(self, reset: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if reset:
                _abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()
        self.proxy._forget(self)


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a target; can delay traffic and reset every connection on demand."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.latency = 0.0  # seconds added to every chunk, each direction
        self.accepted = 0
        self.resets = 0
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(_POLL_SECONDS)
        self.port = int(self._listener.getsockname()[1])
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _abort(client)  # the target is down: the caller sees a reset, as with a dead server
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, client, upstream)
            with self._lock:
                self.accepted += 1
                self._connections.add(connection)
            connection.start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def reset_all(self) -> int:
        """Reset every open connection (both ends get RST); return how many were reset."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close(reset=True)
        self.resets += len(connections)
        return len(connections)

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(2)
        self.reset_all()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
