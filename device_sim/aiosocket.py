"""Drive a paho client's socket from the asyncio event loop (no paho import: it gets the client).

paho's ``loop_start`` thread uses ``select()``, which fails once file descriptors pass 1024 (about
340 clients in one process). Instead each client's socket is registered with the event loop
(``add_reader``/``add_writer``, epoll on Linux) and ``loop_misc`` runs on a 1 s tick for keepalive.
Sockets are opened by ``connect()``/``reconnect()`` in a worker thread; :meth:`SocketDriver.sync`
registers the new socket on the loop thread once that call has returned, with Nagle's algorithm
off (TCP_NODELAY): a device answers a command with its PUBACK and then its response, two small
writes in a row, and with Nagle on the second waits for the broker's delayed ACK (~40 ms on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any, Protocol

MISC_PERIOD_S = 1.0


class ClientLike(Protocol):
    def loop_read(self, max_packets: int = 1) -> Any: ...
    def loop_write(self) -> Any: ...
    def loop_misc(self) -> Any: ...
    def socket(self) -> Any: ...
    def want_write(self) -> bool: ...


class SocketDriver:
    def __init__(self, client: ClientLike, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._thread = threading.get_ident()
        self._sock: Any = None
        self._fd: int | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self.opening = False  # a worker thread is inside connect()/reconnect(): leave paho alone

    def start(self) -> None:
        self._tick_handle = self._loop.call_later(MISC_PERIOD_S, self._tick)

    def stop(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        self._unregister()

    def sync(self) -> None:
        """On the loop thread, after connect()/reconnect(): watch the client's current socket."""
        sock = self._client.socket()
        if sock is self._sock and self._fd is not None:
            return
        self._unregister()
        if sock is None:
            return
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._fd = sock, sock.fileno()
        self._loop.add_reader(self._fd, self._read)
        if self._client.want_write():
            self._loop.add_writer(self._fd, self._client.loop_write)

    def _unregister(self) -> None:
        fd, self._fd, self._sock = self._fd, None, None
        if fd is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _read(self) -> None:
        self._client.loop_read()
        sock = self._client.socket()
        while sock is not None and getattr(sock, "pending", lambda: 0)() > 0:  # bytes buffered by TLS
            self._client.loop_read()
            sock = self._client.socket()

    def _tick(self) -> None:
        if not self.opening and self._client.socket() is not None:
            self._client.loop_misc()  # keepalive pings and their timeout
        self.start()

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread

    # ---- paho socket callbacks (signature: client, userdata, socket) --------------------------
    def on_socket_open(self, _c: Any, _u: Any, _sock: Any) -> None:
        """Opened in a worker thread: :meth:`sync` registers it once connect() returned."""

    def on_socket_close(self, _c: Any, _u: Any, sock: Any) -> None:
        if self._on_loop_thread() and sock is self._sock:
            self._unregister()

    def on_register_write(self, _c: Any, _u: Any, sock: Any) -> None:
        if self._on_loop_thread() and sock is self._sock and self._fd is not None:
            self._loop.add_writer(self._fd, self._client.loop_write)

    def on_unregister_write(self, _c: Any, _u: Any, sock: Any) -> None:
        if self._on_loop_thread() and sock is self._sock and self._fd is not None:
            self._loop.remove_writer(self._fd)
