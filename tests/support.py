"""Shared test helpers: polling with a deadline, free ports, a fake clock, a recording MQTT client and a
managed mosquitto process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

DEFAULT_TIMEOUT_S = 20.0


_HANDED_OUT: set[int] = set()

N = TypeVar("N", int, float)


class FakeClock(Generic[N]):
    """A clock that moves only when the test moves it: call it for the time; set ``now`` or
    :meth:`advance` it. Seconds as a float (``FakeClock(100.0)``) or whole milliseconds as an int
    (``FakeClock(1_700_000_000_000)``), whichever the code under test reads."""

    def __init__(self, now: N) -> None:
        self.now: N = now

    def __call__(self) -> N:
        return self.now

    def advance(self, by: N) -> N:
        """Move forward by ``by`` and return the new time."""
        self.now += by
        return self.now


def free_port() -> int:
    """A free loopback port never handed out before in this run (a stopped broker's port stays its own)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition not met",
) -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s: {text}")
        await asyncio.sleep(interval)


def wait_until(predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT_S, interval: float = 0.02,
               message: str | Callable[[], str] = "condition not met") -> None:
    """Blocking twin of :func:`eventually` for synchronous tests."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s: {text}")
        time.sleep(interval)


def require_tool(name: str) -> str:
    """Path of an external tool the test needs; under CI a missing tool fails instead of skipping."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found (CI must install it: see .ci/run)")
        pytest.skip(f"{name} not installed")
    return path


def mosquitto_binary() -> str:
    """Path of the mosquitto binary; under CI a missing binary fails instead of skipping."""
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto binary not found (CI must install Debian's mosquitto package)")
        pytest.skip("mosquitto binary not installed")
    return path


def mosquitto_password_line(username: str, password: str, iterations: int = 101) -> str:
    """A password file line in mosquitto_passwd's format: ``name:$7$iterations$salt$hash``
    (PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash, standard base64)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    b64 = base64.b64encode
    return f"{username}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


class Mosquitto:
    """A mosquitto broker process on a fixed free port that tests can stop, kill and restart."""

    def __init__(self, port: int | None = None, extra_conf: str = "", persistent: bool = False,
                 config: str | None = None) -> None:
        """``config``: a whole configuration to use instead of the generated one (it must listen on
        ``port`` on 127.0.0.1); ``{dir}`` in it stands for :attr:`dir`, a folder the broker may write."""
        self.binary = mosquitto_binary()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="mosq-"))
        os.chmod(self._dir, 0o777)
        self.dir = self._dir
        self.log = self._dir / "mosquitto.log"
        self._conf = self._dir / "mosquitto.conf"
        persistence = (
            f"persistence true\npersistence_location {self._dir}/\nautosave_interval 1\n"
            if persistent else "persistence false\n"
        )
        if config is not None:
            self._conf.write_text(config.replace("{dir}", str(self._dir)))
        else:
            self._conf.write_text(
                f"listener {self.port} 127.0.0.1\n"
                "allow_anonymous true\n"
                f"{persistence}"
                "max_queued_messages 0\n"
                "max_inflight_messages 0\n"
                "log_dest stderr\n"
                "log_type error\n"
                "log_type warning\n"
                f"{extra_conf}\n"
            )
        os.chmod(self._conf, 0o644)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        with self.log.open("ab") as log:  # a file, not a pipe: a chatty broker can never block on it
            self.proc = subprocess.Popen([self.binary, "-c", str(self._conf)], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.log.read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 5)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a child process that may still run, and SIGKILL it after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def running_mosquitto(**kwargs: Any) -> Iterator[Mosquitto]:
    """A started :class:`Mosquitto` (arguments as for the class), cleaned up afterwards."""
    broker = Mosquitto(**kwargs)
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


class Received(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


class RecordingClient:
    """A real MQTT client (paho, MQTT 3.1.1) that records everything that happens to it: the CONNACK,
    each SUBACK, every message with its retain flag, each PUBACK, each disconnect.

    Paho's own thread does the network I/O (and connects: a TLS handshake needs the broker's loop to
    run meanwhile), so a broker on the test's event loop keeps running. Every wait has a deadline and
    comes twice: ``await client.subscribe(...)`` on the event loop, ``client.wait_subscribe(...)``
    blocking, for a broker in another process. ``tls``: an ``SSLContext``, or ``tls_set`` keywords.
    """

    def __init__(self, port: int, client_id: str | None = None, username: str | None = None,
                 password: str | None = None, *, host: str = "127.0.0.1",
                 tls: ssl.SSLContext | Mapping[str, Any] | None = None, clean: bool = True,
                 will: tuple[str, bool] | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.client_id = client_id or f"rec-{uuid.uuid4().hex[:8]}"
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311,
                             clean_session=clean, reconnect_on_failure=False)
        if username is not None:
            self.c.username_pw_set(username, password)
        if isinstance(tls, ssl.SSLContext):
            self.c.tls_set_context(tls)
        elif tls is not None:
            self.c.tls_set(**tls)
        if will is not None:
            self.c.will_set(will[0], b"gone", qos=1, retain=will[1])
        self.connack: int | None = None  # the CONNACK's code, as paho reports it (0: accepted)
        self.reason = ""  # "Success", the refusal, or why it ended before a CONNACK ("": not yet)
        self.error: BaseException | None = None  # the connection or TLS handshake failed
        self.disconnects = 0
        self.disconnected = threading.Event()
        self.messages: list[Received] = []
        self.subacks: dict[int, list[int]] = {}
        self.acked: set[int] = set()
        self.disconnect_after_acks = 0  # >0: disconnect from paho's thread right after that many PUBACKs
        self._lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_connect_fail = self._on_connect_fail

    # paho's thread: record, nothing else
    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connack = int(rc.value if hasattr(rc, "value") else rc)
        self.reason = str(rc)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if not self.reason:
            self.reason = f"closed before CONNACK ({rc})"
        self.disconnects += 1
        self.disconnected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any = None) -> None:
        self.subacks[mid] = [int(c.value if hasattr(c, "value") else c) for c in codes]

    def _on_publish(self, _c: Any, _u: Any, mid: int, *_a: Any) -> None:
        self.acked.add(mid)
        if self.disconnect_after_acks and len(self.acked) == self.disconnect_after_acks:
            self.c.disconnect()  # at once, from paho's thread: the broker may still hold queued messages

    def _on_connect_fail(self, *_a: Any) -> None:  # e.g. a TLS handshake the broker refused
        self.error = ConnectionError("connection or TLS handshake failed")
        self.reason = self.reason or "refused during connect"
        self.c.disconnect()  # no retry

    # actions: they return at once
    def start(self) -> RecordingClient:
        """Connect from paho's own thread."""
        self.c.connect_async(self.host, self.port, keepalive=30)
        self.c.loop_start()
        return self

    def send(self, topic: str, payload: bytes | str = b"{}", *, retain: bool = False) -> int:
        """Publish at QoS 1 without waiting; the message id."""
        return self.c.publish(topic, payload, qos=1, retain=retain).mid

    def _send_subscribe(self, filters: tuple[str, ...]) -> int:
        _rc, mid = self.c.subscribe([(f, 1) for f in filters])
        assert mid is not None, f"{self.client_id}: SUBSCRIBE to {filters} not sent"
        return mid

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    # what it has seen
    def settled(self) -> bool:
        """The connection attempt has an outcome: a CONNACK, a failure, or a closed connection."""
        return self.connack is not None or self.error is not None or self.disconnects > 0

    def topics(self) -> list[str]:
        with self._lock:
            return [m.topic for m in self.messages]

    def has(self, topic: str) -> bool:
        return topic in self.topics()

    def on(self, topic: str) -> list[bytes]:
        """The payloads received on ``topic``, in order."""
        with self._lock:
            return [m.payload for m in self.messages if m.topic == topic]

    def matching(self, prefix: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(m.topic, m.payload) for m in self.messages if m.topic.startswith(prefix)]

    def _state(self) -> str:
        return (f"{self.client_id}: connack={self.connack} reason={self.reason!r} error={self.error} "
                f"disconnects={self.disconnects}")

    def _check_connected(self) -> RecordingClient:
        assert self.connack == 0, f"connection refused: {self._state()}"
        return self

    def _check_refused(self) -> str:
        assert self.connack != 0, f"connection accepted: {self._state()}"
        return self.reason

    # waits on the event loop
    async def _until(self, predicate: Callable[[], bool], what: str) -> None:
        await eventually(predicate, self.timeout, message=lambda: f"{what} ({self._state()})")

    async def connected(self) -> RecordingClient:
        """Wait for the CONNACK; assert it accepted."""
        await self._until(self.settled, "no CONNACK")
        return self._check_connected()

    async def refused(self) -> str:
        """Wait until the broker refused (CONNACK != 0, or closed the connection / handshake); why."""
        await self._until(self.settled, "no answer")
        return self._check_refused()

    async def subscribe(self, *filters: str) -> list[int]:
        """SUBSCRIBE (QoS 1); the SUBACK's codes."""
        mid = self._send_subscribe(filters)
        await self._until(lambda: mid in self.subacks, f"no SUBACK for {filters}")
        return self.subacks[mid]

    async def publish(self, topic: str, payload: bytes | str = b"{}", retain: bool = False) -> bool:
        """Publish at QoS 1 and wait for the PUBACK or the end of the connection; whether acknowledged."""
        mid = self.send(topic, payload, retain=retain)
        await self._until(lambda: mid in self.acked or self.disconnects > 0, f"no PUBACK for {topic}")
        return mid in self.acked

    async def gone(self) -> None:
        """Wait until the broker closed the connection."""
        await self._until(self.disconnected.is_set, "still connected")

    # blocking twins, for a broker in another process
    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        wait_until(predicate, self.timeout, message=lambda: f"{what} ({self._state()})")

    def wait_connected(self) -> RecordingClient:
        self._wait(self.settled, "no CONNACK")
        return self._check_connected()

    def wait_settled(self) -> str:
        """Block until the attempt has an outcome; ``reason``: "Success", the refusal, or the failure."""
        self._wait(self.settled, "no answer")
        return self.reason

    def wait_subscribe(self, *filters: str) -> list[int]:
        mid = self._send_subscribe(filters)
        self._wait(lambda: mid in self.subacks, f"no SUBACK for {filters}")
        return self.subacks[mid]

    def wait_publish(self, topic: str, payload: bytes | str = b"{}", retain: bool = False) -> bool:
        mid = self.send(topic, payload, retain=retain)
        self._wait(lambda: mid in self.acked or self.disconnects > 0, f"no PUBACK for {topic}")
        return mid in self.acked

    def wait_gone(self) -> None:
        self._wait(self.disconnected.is_set, "still connected")
