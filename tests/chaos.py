"""A small asyncio TCP proxy that injects network faults between a client and a server.

Point the client at ``proxy.address`` and switch modes at any time: a mode applies at once to the
connections already open AND to new ones. A FIN is passed on as a half-close; a connection ends
when both of its sides have closed (or on cut()/stop()).

Data modes (one at a time; each call replaces the previous one):

- ``passthrough()`` (default): forward both ways. It also ends ``refuse()``.
- ``stall()``: sockets stay open, nothing moves either way, FIN included. The proxy stops reading
  (senders meet TCP back-pressure); chunks already read are held and delivered, in order, by a later
  ``passthrough()``. New connections are accepted and connected upstream, then stalled likewise.
- ``blackhole_after(n)``: forward ``n`` more bytes per connection, counted over both directions
  together, then keep reading and silently drop everything both ways, FIN included. No FIN, no RST:
  both peers see an open, mute link. Open connections get ``n`` from the call, new ones from their start.

Besides: ``refuse()`` resets new connections right after accepting them (open ones are untouched);
``cut()`` is an action, not a mode: it resets both sides of every open connection and changes no
mode. ``latency()`` and ``bandwidth()`` shape what is forwarded in any data mode, and
``passthrough()`` keeps them; ``latency(0)`` and ``bandwidth(None)`` remove them.
``drop_publish(topic)`` silently drops one chosen PUBLISH on its way from a client to the server,
on an open or a new connection, while everything else keeps flowing: the server never sees it, so
a QoS 1 publish never gets its PUBACK. For that the proxy reads the client->server direction of
each connection that starts with an MQTT CONNECT packet by packet (each packet is forwarded whole;
other connections are forwarded as bytes). ``dropped`` lists ``(topic, payload)`` of what it dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Coroutine
from types import TracebackType

_CHUNK = 65536
_PACE_S = 0.05  # with a bandwidth limit, chunks are cut into slices of this many seconds' worth


class _MqttPackets:
    """Cuts the client->server direction of an MQTT connection into whole control packets."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.mqtt5 = False  # learnt from the CONNECT packet: MQTT 5 PUBLISH packets carry properties

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        packets = []
        while (size := _packet_size(self._buf)) is not None and size <= len(self._buf):
            packet = bytes(self._buf[:size])
            del self._buf[:size]
            if packet[0] >> 4 == 1:  # CONNECT: protocol name, then the protocol level
                body = packet[_header_size(packet):]
                name_len = int.from_bytes(body[:2], "big")
                self.mqtt5 = body[2 + name_len] == 5
            packets.append(packet)
        return packets

    def publish(self, packet: bytes) -> tuple[str, bytes] | None:
        """``(topic, payload)`` of a PUBLISH packet, None for any other packet."""
        if packet[0] >> 4 != 3:
            return None
        pos = _header_size(packet)
        topic_len = int.from_bytes(packet[pos:pos + 2], "big")
        topic = packet[pos + 2:pos + 2 + topic_len].decode("utf-8", errors="replace")
        pos += 2 + topic_len + (2 if (packet[0] >> 1) & 3 else 0)  # the packet id of QoS 1 and 2
        if self.mqtt5:
            props, used = _varint(packet, pos)
            pos += used + props
        return topic, packet[pos:]


def _varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``pos``: (value, bytes used); bytes used is 0 if incomplete."""
    value = 0
    for i in range(4):
        if pos + i >= len(data):
            return 0, 0
        value |= (data[pos + i] & 0x7F) << (7 * i)
        if not data[pos + i] & 0x80:
            return value, i + 1
    raise ValueError("malformed MQTT remaining length")


def _header_size(packet: bytes | bytearray) -> int:
    return 1 + _varint(packet, 1)[1]


def _packet_size(buf: bytearray) -> int | None:
    """Size of the packet at the start of ``buf``, None while its fixed header is incomplete."""
    if len(buf) < 2:
        return None
    length, used = _varint(buf, 1)
    return None if used == 0 else 1 + used + length


class _Link:
    """One proxied connection: the client side, the upstream side once connected, its budget."""

    def __init__(self, client: asyncio.StreamWriter, budget: int | None) -> None:
        self.writers = [client]
        self.budget = budget  # bytes still allowed through; None means no blackhole
        self.task: asyncio.Task[None] | None = None
        self.mqtt: _MqttPackets | None = None  # client->server packets, when the client speaks MQTT
        self.first_chunk = True

    def spend(self, data: bytes) -> bytes:
        if self.budget is None:
            return data
        data = data[: self.budget]
        self.budget -= len(data)
        return data

    def abort(self, rst: bool = False) -> None:
        """Close every side now, dropping unsent bytes; ``rst``: SO_LINGER on, timeout 0, so a RST goes out."""
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if rst and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class ChaosProxy:
    """TCP proxy on 127.0.0.1 (a free port) to ``target_host:target_port``; see the module doc."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.connections = 0  # accepted in total (refused ones included)
        self.active = 0  # open now
        self.bytes_up = 0  # forwarded client -> server
        self.bytes_down = 0  # forwarded server -> client
        self.resets = 0  # connections reset by cut() or refuse()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._blackhole: int | None = None
        self._latency = 0.0
        self._bandwidth: float | None = None
        self._drop: tuple[str, int] | None = None  # (topic, PUBLISHes to it still to let through)
        self.dropped: list[tuple[str, bytes]] = []  # (topic, payload) of the PUBLISH packets dropped

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ChaosProxy not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    async def stop(self) -> None:
        """Close the listener and every connection (abruptly), and wait for all proxy tasks."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        links, tasks = list(self._links), list(self._tasks)
        for link in links:
            link.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in links:  # a task cancelled before it ran never reached its own clean-up
            self._forget(link)
        await asyncio.sleep(0)  # let the aborted transports close their sockets

    async def __aenter__(self) -> ChaosProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ modes
    def passthrough(self) -> None:
        """Forward both ways (held bytes are released); stop refusing; end any blackhole."""
        self._refusing = False
        self._set_blackhole(None)
        self._flowing.set()

    def stall(self) -> None:
        """Hold everything, both ways, on open and new connections."""
        self._set_blackhole(None)
        self._flowing.clear()

    def blackhole_after(self, n_bytes: int) -> None:
        """Forward ``n_bytes`` more per connection (both directions together), then drop silently."""
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        self._set_blackhole(n_bytes)
        self._flowing.set()

    def refuse(self) -> None:
        """Reset new connections right after accepting them, until :meth:`passthrough`."""
        self._refusing = True

    def cut(self) -> None:
        """Reset (TCP RST) both sides of every open connection; new connections are unaffected."""
        for link in list(self._links):
            self._reset(link)

    def latency(self, seconds: float) -> None:
        """Delay each chunk read from now on by ``seconds``, in each direction, keeping the order."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = seconds

    def bandwidth(self, bytes_per_s: float | None) -> None:
        """Limit each direction of each connection to ``bytes_per_s``; ``None`` removes the limit."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bandwidth must be > 0 or None")
        self._bandwidth = bytes_per_s

    def drop_publish(self, topic: str, *, after: int = 0) -> None:
        """Let ``after`` more PUBLISH packets to ``topic`` through (client -> server), then silently
        drop the next one, once; everything else keeps flowing both ways."""
        if after < 0:
            raise ValueError("after must be >= 0")
        self._drop = (topic, after)

    def _client_bytes(self, link: _Link, chunk: bytes) -> bytes:
        """What of ``chunk`` (read from the client) goes on to the server: all of it, or for an MQTT
        client the whole packets read so far, minus a PUBLISH chosen by :meth:`drop_publish`."""
        if link.first_chunk:
            link.first_chunk = False
            link.mqtt = _MqttPackets() if chunk[:1] == b"\x10" else None
        if link.mqtt is None:
            return chunk
        kept = []
        for packet in link.mqtt.feed(chunk):
            publish = link.mqtt.publish(packet)
            if publish is not None and self._drop is not None and publish[0] == self._drop[0]:
                topic, after = self._drop
                if after == 0:
                    self._drop = None
                    self.dropped.append(publish)
                    continue
                self._drop = (topic, after - 1)
            kept.append(packet)
        return b"".join(kept)

    def _set_blackhole(self, n_bytes: int | None) -> None:
        self._blackhole = n_bytes
        for link in self._links:
            link.budget = n_bytes

    def _reset(self, link: _Link) -> None:
        link.abort(rst=True)
        self.resets += 1
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()

    # ------------------------------------------------------------------ forwarding
    def _spawn(self, coro: Coroutine[None, None, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine, so that we own (cancel and await) the task, not asyncio.
        self.connections += 1
        self.active += 1
        link = _Link(writer, self._blackhole)
        self._links.add(link)
        link.task = self._spawn(self._serve(link, reader))

    async def _serve(self, link: _Link, client: asyncio.StreamReader) -> None:
        try:
            if self._refusing:
                self._reset(link)
                return
            try:
                upstream, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                return  # target down: the client sees its connection closed
            link.writers.append(up_writer)
            pipes = [self._spawn(self._pipe(link, client, up_writer, up=True)),
                     self._spawn(self._pipe(link, upstream, link.writers[0], up=False))]
            await asyncio.gather(*pipes)  # cancelling this cancels both pipes
            for writer in link.writers:  # both ways ended: close once the buffers are flushed
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except asyncio.CancelledError:
            pass  # stop() or cut(): the sockets are already aborted
        finally:
            self._forget(link)

    def _forget(self, link: _Link) -> None:
        if link in self._links:
            link.abort()
            self._links.discard(link)
            self.active -= 1

    async def _pipe(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, up: bool) -> None:
        """One direction: a feeder reads and time-stamps chunks, this loop delays, shapes and writes them."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)
        feeder = self._spawn(self._feed(src, queue))
        next_free = 0.0
        try:
            while True:
                due, chunk = await queue.get()
                await self._flowing.wait()
                if (delay := due - loop.time()) > 0:
                    await asyncio.sleep(delay)
                if not chunk:  # EOF from src: pass it on (half-close), unless blackholed
                    if (link.budget is None or link.budget > 0) and dst.can_write_eof():
                        dst.write_eof()
                    return
                if up and not (chunk := self._client_bytes(link, chunk)):
                    continue  # half a packet so far, or the dropped PUBLISH
                rate = self._bandwidth
                step = max(1, int(rate * _PACE_S)) if rate else len(chunk)
                for i in range(0, len(chunk), step):
                    if rate:
                        start = max(loop.time(), next_free)
                        next_free = start + min(step, len(chunk) - i) / rate
                        if (wait := start - loop.time()) > 0:
                            await asyncio.sleep(wait)
                    await self._flowing.wait()
                    piece = link.spend(chunk[i : i + step])
                    if not piece:
                        continue
                    dst.write(piece)
                    await dst.drain()
                    if up:
                        self.bytes_up += len(piece)
                    else:
                        self.bytes_down += len(piece)
        except OSError:  # the destination vanished: end the whole connection
            link.abort()
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    async def _feed(self, src: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        chunk = b"x"
        while chunk:
            await self._flowing.wait()
            try:
                chunk = await src.read(_CHUNK)
            except OSError:  # reset by the peer: treat like EOF
                chunk = b""
            await queue.put((loop.time() + self._latency, chunk))
