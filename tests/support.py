"""Shared test helpers: polling with a deadline, free ports, a managed mosquitto process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

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
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
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


@contextlib.contextmanager
def running_mosquitto(**kwargs: Any) -> Iterator[Mosquitto]:
    """A started :class:`Mosquitto` (arguments as for the class), cleaned up afterwards."""
    broker = Mosquitto(**kwargs)
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()
