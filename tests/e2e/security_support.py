"""Plain paho clients for the access-control tests: devices and attackers alike, with every CONNACK,
SUBACK, message and disconnect recorded for the test to assert on."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.source.passwords import hash_password, write_password_file
from tests.support import eventually


class Client:
    def __init__(self, port: int, client_id: str, username: str | None = None, password: str | None = None, *,
                 tls: dict[str, Any] | None = None, clean: bool = True, will: tuple[str, bool] | None = None) -> None:
        self.port = port
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=clean, reconnect_on_failure=False)
        if username is not None:
            self.c.username_pw_set(username, password)
        if tls is not None and "context" in tls:
            self.c.tls_set_context(tls["context"])
        elif tls is not None:
            self.c.tls_set(**tls)
        if will is not None:
            self.c.will_set(will[0], b"gone", qos=1, retain=will[1])
        self.connack: int | None = None
        self.disconnects = 0
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subacks: dict[int, list[int]] = {}
        self.acked: set[int] = set()
        self.error: BaseException | None = None
        self.disconnect_after_acks = 0
        self._lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_connect_fail = self._on_connect_fail

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connack = int(rc.value if hasattr(rc, "value") else rc)

    def _on_disconnect(self, *_a: Any) -> None:
        self.disconnects += 1

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any = None) -> None:
        self.subacks[mid] = [int(c.value if hasattr(c, "value") else c) for c in codes]

    def _on_publish(self, _c: Any, _u: Any, mid: int, *_a: Any) -> None:
        self.acked.add(mid)
        if self.disconnect_after_acks and len(self.acked) == self.disconnect_after_acks:
            self.c.disconnect()  # at once, from paho's thread: the broker may still hold queued messages

    def _on_connect_fail(self, *_a: Any) -> None:  # e.g. a TLS handshake the broker refused
        self.error = ConnectionError("connection or TLS handshake failed")
        self.c.disconnect()  # no retry

    def start(self) -> Client:
        """Connect from paho's own thread (a TLS handshake needs the broker's loop to run meanwhile)."""
        self.c.connect_async("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        return self

    async def connected(self) -> Client:
        """Wait for the CONNACK; assert it accepted."""
        await eventually(lambda: self.connack is not None or self.disconnects > 0 or self.error is not None,
                         message="no CONNACK")
        assert self.connack == 0, f"connection refused: {self.connack} {self.error}"
        return self

    async def refused(self) -> None:
        """Wait until the broker refused (CONNACK != 0, or closed the connection / handshake)."""
        await eventually(lambda: self.error is not None or (self.connack is not None and self.connack != 0)
                         or (self.connack is None and self.disconnects > 0), message="not refused")
        assert self.connack != 0

    async def subscribe(self, topic: str) -> list[int]:
        _rc, mid = self.c.subscribe(topic, qos=1)
        assert mid is not None, f"SUBSCRIBE to {topic} not sent"
        await eventually(lambda: mid in self.subacks, message=f"no SUBACK for {topic}")
        return self.subacks[mid]

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        await eventually(lambda: info.mid in self.acked or self.disconnects > 0, message=f"no PUBACK for {topic}")

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _p, _r in self.messages]

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def write_passwords(path: Path, passwords: dict[str, str]) -> Path:
    write_password_file(path, {device: hash_password(pw, iterations=1000) for device, pw in passwords.items()})
    return path
