"""The chaos proxy (tests/chaos.py) on real sockets: an asyncio echo server and a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Literal

import pytest

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import ConnectionLost
from bridge.mqtt.types import ClientSettings, Message
from tests.chaos import ChaosProxy
from tests.support import Mosquitto, eventually, free_port

pytestmark = pytest.mark.timeout(30)

QUIET_S = 0.3  # how long "nothing arrives" is watched for


class Echo:
    """An asyncio echo server that records how each of its connections ended."""

    def __init__(self) -> None:
        self.connections = 0
        self.ends: list[str] = []
        self.ended = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        task = asyncio.get_running_loop().create_task(self._echo(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            self.ends.append("eof")
        except ConnectionResetError:
            self.ends.append("reset")
        finally:
            writer.transport.abort()
            self.ended.set()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[ChaosProxy]:
    assert echo._server is not None
    async with ChaosProxy("127.0.0.1", int(echo._server.sockets[0].getsockname()[1])) as chaos:
        yield chaos


async def dial(proxy: ChaosProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*proxy.address)


async def roundtrip(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes) -> bytes:
    reader, writer = stream
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 10)


async def quiet(reader: asyncio.StreamReader) -> None:
    """Nothing (not even EOF) arrives within QUIET_S."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), QUIET_S)


async def expect_reset(reader: asyncio.StreamReader) -> None:
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 10)


def close(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    stream[1].transport.abort()


# ---------------------------------------------------------------------------------- echo server
async def test_passthrough_forwards_both_ways_and_counts(proxy: ChaosProxy, echo: Echo) -> None:
    stream = await dial(proxy)
    assert await roundtrip(stream, b"hello") == b"hello"
    assert await roundtrip(stream, b"world!") == b"world!"
    assert (proxy.connections, proxy.active, proxy.bytes_up, proxy.bytes_down) == (1, 1, 11, 11)
    stream[1].close()  # FIN travels through: the server sees a clean EOF
    await eventually(lambda: echo.ends == ["eof"] and proxy.active == 0)
    assert proxy.resets == 0


async def test_cut_resets_both_sides_and_later_connections_work(proxy: ChaosProxy, echo: Echo) -> None:
    first, second = await dial(proxy), await dial(proxy)
    assert await roundtrip(first, b"a") == b"a"
    assert await roundtrip(second, b"b") == b"b"
    proxy.cut()
    await expect_reset(first[0])
    await expect_reset(second[0])
    await eventually(lambda: echo.ends == ["reset", "reset"] and proxy.active == 0)
    assert proxy.resets == 2
    again = await dial(proxy)
    assert await roundtrip(again, b"still works") == b"still works"
    assert (proxy.connections, proxy.active, proxy.resets) == (3, 1, 2)
    close(again)


async def test_refuse_resets_new_connections_only_until_passthrough(proxy: ChaosProxy, echo: Echo) -> None:
    old = await dial(proxy)
    assert await roundtrip(old, b"x") == b"x"
    proxy.refuse()
    refused = await dial(proxy)
    await expect_reset(refused[0])
    assert await roundtrip(old, b"open ones keep working") == b"open ones keep working"
    assert echo.connections == 1  # the refused one never reached the server
    assert (proxy.connections, proxy.resets) == (2, 1)
    proxy.passthrough()
    fresh = await dial(proxy)
    assert await roundtrip(fresh, b"y") == b"y"
    close(old)
    close(fresh)


async def test_stall_holds_bytes_both_ways_until_passthrough(proxy: ChaosProxy, echo: Echo) -> None:
    old = await dial(proxy)
    assert await roundtrip(old, b"1") == b"1"
    proxy.stall()
    old[1].write(b"held")
    new = await dial(proxy)
    new[1].write(b"new")
    await eventually(lambda: echo.connections == 2)  # a new connection still reaches the server
    await quiet(old[0])
    await quiet(new[0])
    assert (proxy.bytes_up, proxy.bytes_down, proxy.active) == (1, 1, 2)
    proxy.passthrough()
    assert await asyncio.wait_for(old[0].readexactly(4), 10) == b"held"
    assert await asyncio.wait_for(new[0].readexactly(3), 10) == b"new"
    assert (proxy.bytes_up, proxy.bytes_down) == (8, 8)
    close(old)
    close(new)


async def test_blackhole_forwards_a_shared_budget_then_drops_silently(proxy: ChaosProxy, echo: Echo) -> None:
    stream = await dial(proxy)
    assert await roundtrip(stream, b"pre") == b"pre"
    proxy.blackhole_after(6)  # 4 bytes up + the first 2 of their echo down
    stream[1].write(b"abcd")
    assert await asyncio.wait_for(stream[0].readexactly(2), 10) == b"ab"
    await quiet(stream[0])
    stream[1].write(b"more")
    await quiet(stream[0])
    assert (proxy.bytes_up, proxy.bytes_down) == (3 + 4, 3 + 2)
    stream[1].close()  # half-open: the server is told nothing, the proxy keeps its side open
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(echo.ended.wait(), QUIET_S)
    assert echo.ends == []
    assert proxy.active == 1
    assert proxy.resets == 0


async def test_blackhole_applies_to_new_connections(proxy: ChaosProxy, echo: Echo) -> None:
    proxy.blackhole_after(0)
    stream = await dial(proxy)
    stream[1].write(b"lost")
    await eventually(lambda: echo.connections == 1)
    await quiet(stream[0])
    assert (proxy.bytes_up, proxy.bytes_down, proxy.active) == (0, 0, 1)
    proxy.passthrough()
    assert await roundtrip(stream, b"back") == b"back"
    close(stream)


async def test_latency_delays_each_direction_and_keeps_order(proxy: ChaosProxy) -> None:
    stream = await dial(proxy)
    proxy.latency(0.2)
    started = time.monotonic()
    for part in (b"one,", b"two,", b"three"):
        stream[1].write(part)
        await stream[1].drain()
    assert await asyncio.wait_for(stream[0].readexactly(13), 10) == b"one,two,three"
    assert time.monotonic() - started >= 0.4  # 0.2 s up + 0.2 s down, as a lower bound
    proxy.latency(0)
    assert await roundtrip(stream, b"fast") == b"fast"
    close(stream)


async def test_bandwidth_limits_each_direction_until_removed(proxy: ChaosProxy) -> None:
    stream = await dial(proxy)
    proxy.bandwidth(50_000)
    payload = bytes(range(256)) * 80  # 20 480 bytes: at least 0.35 s at 50 kB/s
    started = time.monotonic()
    assert await roundtrip(stream, payload) == payload
    assert time.monotonic() - started >= 0.35
    proxy.bandwidth(None)
    assert await roundtrip(stream, payload) == payload
    assert proxy.bytes_up == proxy.bytes_down == 2 * len(payload)
    close(stream)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _proxy_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "").startswith("ChaosProxy.")]


async def test_stop_leaves_no_tasks_or_sockets(echo: Echo) -> None:
    assert echo._server is not None
    gc.collect()  # sockets earlier tests left to the garbage collector must not close during this one
    baseline = _open_fds()
    chaos = ChaosProxy("127.0.0.1", int(echo._server.sockets[0].getsockname()[1]))
    await chaos.start()
    streams = [await dial(chaos) for _ in range(3)]
    assert await roundtrip(streams[0], b"x") == b"x"
    chaos.stall()
    for stream in streams:
        stream[1].write(b"held" * 1000)
    await eventually(lambda: echo.connections == 3)
    for stream in streams:
        close(stream)
    assert chaos.active == 3  # a held FIN keeps the links open until stop()
    assert len(_proxy_tasks()) > 0
    await chaos.stop()
    assert _proxy_tasks() == []
    assert chaos.active == 0
    await eventually(lambda: _open_fds() <= baseline, message=lambda: f"{_open_fds()} fds, baseline {baseline}")


async def test_vanishing_peers_and_a_dead_target_log_nothing(
    proxy: ChaosProxy, echo: Echo, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    client_gone = await dial(proxy)
    assert await roundtrip(client_gone, b"x") == b"x"
    sock = client_gone[1].get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    close(client_gone)  # the client resets its connection
    await eventually(lambda: proxy.active == 0)

    server_gone = await dial(proxy)
    assert await roundtrip(server_gone, b"y") == b"y"
    echo.writers[-1].transport.abort()  # the server drops its side
    assert await asyncio.wait_for(server_gone[0].read(), 10) == b""  # passed on as a half-close
    close(server_gone)
    await eventually(lambda: proxy.active == 0)

    async with ChaosProxy("127.0.0.1", free_port()) as dead:  # nothing listens there
        stream = await dial(dead)
        assert await asyncio.wait_for(stream[0].read(), 10) == b""  # closed, not reset
        await eventually(lambda: dead.active == 0)
        assert (dead.connections, dead.resets) == (1, 0)
        close(stream)
    gc.collect()  # surfaces "Task exception was never retrieved", if any
    await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records] == []


# ---------------------------------------------------------------------------------- mosquitto
@contextlib.asynccontextmanager
async def mqtt_through(mosquitto: Mosquitto) -> AsyncIterator[tuple[ChaosProxy, MqttConnection]]:
    async with ChaosProxy(mosquitto.host, mosquitto.port) as chaos:
        conn = await MqttConnection.open(
            f"mqtt://127.0.0.1:{chaos.port}", ClientSettings(client_id="via-chaos", connect_timeout_s=5.0))
        try:
            yield chaos, conn
        finally:
            await conn.close()


async def test_mqtt_publish_passes_through(mosquitto: Mosquitto) -> None:
    received: list[Message] = []
    observer = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="obs", connect_timeout_s=5.0),
                                         on_message=received.append)
    try:
        await observer.subscribe([("chaos/#", 1)])
        async with mqtt_through(mosquitto) as (chaos, conn):
            await asyncio.wait_for(conn.publish("chaos/t", b"through the proxy"), 10)
            await eventually(lambda: [m.payload for m in received] == [b"through the proxy"])
            assert chaos.bytes_up > len(b"through the proxy")
            assert chaos.bytes_down > 0  # CONNACK and PUBACK
            assert (chaos.connections, chaos.active) == (1, 1)
    finally:
        await observer.close()


async def test_mqtt_cut_ends_the_session(mosquitto: Mosquitto) -> None:
    async with mqtt_through(mosquitto) as (chaos, conn):
        await asyncio.wait_for(conn.publish("chaos/t", b"before"), 10)
        chaos.cut()
        reason = await asyncio.wait_for(conn.wait_closed(), 10)
        assert reason != "closed by client"
        assert chaos.resets == 1
        with pytest.raises(ConnectionLost):
            conn.publish("chaos/t", b"after")


async def test_mqtt_blackhole_leaves_publishes_unanswered_on_an_open_link(mosquitto: Mosquitto) -> None:
    async with mqtt_through(mosquitto) as (chaos, conn):
        await asyncio.wait_for(conn.publish("chaos/t", b"before"), 10)
        chaos.blackhole_after(0)
        future = conn.publish("chaos/t", b"into the void")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), 1.0)
        assert not future.done()
        assert not conn.closed
        assert chaos.active == 1
        assert chaos.resets == 0
    with pytest.raises(ConnectionLost):  # closing the session fails what is still pending
        await future


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_mqtt_drop_publish_drops_one_chosen_publish_on_a_live_link(mosquitto: Mosquitto,
                                                                        protocol: Literal["3.1.1", "5"]) -> None:
    received: list[Message] = []
    observer = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="obs", connect_timeout_s=5.0),
                                         on_message=received.append)
    try:
        await observer.subscribe([("chaos/#", 1)])
        async with ChaosProxy(mosquitto.host, mosquitto.port) as chaos:
            conn = await MqttConnection.open(f"mqtt://127.0.0.1:{chaos.port}", ClientSettings(
                client_id="via-chaos", protocol=protocol, connect_timeout_s=5.0))
            try:
                await asyncio.wait_for(conn.publish("chaos/other", b"first", qos=1), 10)
                chaos.drop_publish("chaos/t", after=1)  # armed on the open connection
                sent = [conn.publish("chaos/t", b"one", qos=1), conn.publish("chaos/t", b"two", qos=1),
                        conn.publish("chaos/other", b"three", qos=1), conn.publish("chaos/t", b"four", qos=1)]
                await asyncio.wait_for(asyncio.gather(sent[0], sent[2], sent[3]), 10)
                await eventually(lambda: len(received) == 4)
                assert [m.payload for m in received] == [b"first", b"one", b"three", b"four"]
                assert chaos.dropped == [("chaos/t", b"two")]
                assert not sent[1].done()  # never reached the broker: no PUBACK
                assert not conn.closed
            finally:
                await conn.close()
            with pytest.raises(ConnectionLost):  # closing the session fails what is still pending
                await sent[1]
    finally:
        await observer.close()
