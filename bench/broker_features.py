"""Which MQTT features a broker offers, checked with real clients (docs/INTEROP.md's matrix):

    python bench/broker_features.py mqtt://HOST:PORT [...]

For each URL, as JSON: whether an MQTT 5 CONNECT is accepted; a retained message reaches a later
subscriber flagged as retained; a QoS 2 subscription is granted QoS 2 (or what it is granted); a
QoS 2 PUBLISH completes; a ``$share/...`` subscription is granted; a last will is published when a
client's connection drops without DISCONNECT; a persistent 3.1.1 session (clean session off) keeps
a QoS 1 message published while its client was away.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

TIMEOUT_S = 5.0


class Client:
    """A paho client on its own network thread that records what the checks need."""

    def __init__(self, host: str, port: int, client_id: str, *, v5: bool = False, clean: bool = True,
                 will: str | None = None) -> None:
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {} if v5 else {"clean_session": clean}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                             reconnect_on_failure=False, **kwargs)
        if will:
            self.c.will_set(will, b"gone", qos=1)
        self.connected = threading.Event()
        self.connack: str = ""
        self.granted: list[int] = []
        self.subacked = threading.Event()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.got = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_disconnect = lambda *a: self.connected.set()  # also ends a wait for a refused CONNECT
        self.c.connect_async(host, port, keepalive=30)
        self.c.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        self.connack = str(reason)
        self.connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[ReasonCode], _props: Any) -> None:
        self.granted = [c.value for c in codes]
        self.subacked.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
        self.got.set()

    def ok(self) -> bool:
        return self.connected.wait(TIMEOUT_S) and self.connack == "Success"

    def subscribe(self, topic: str, qos: int) -> list[int]:
        self.subacked.clear()
        self.c.subscribe(topic, qos)
        return self.granted if self.subacked.wait(TIMEOUT_S) else []

    def stop(self, *, abrupt: bool = False) -> None:
        if abrupt:
            sock = self.c.socket()
            if sock is not None:
                sock.close()  # no DISCONNECT: the broker must publish the will
        else:
            self.c.disconnect()
        self.c.loop_stop()


def qos2_publish(host: str, port: int, client_id: str, topic: str) -> bool:
    """A QoS 2 PUBLISH gets its PUBCOMP (on a client of its own: a broker may drop the connection)."""
    client = Client(host, port, client_id)
    try:
        if not client.ok():
            return False
        info = client.c.publish(topic, b"two", qos=2)
        try:
            info.wait_for_publish(TIMEOUT_S)
        except (RuntimeError, ValueError):  # the broker closed the connection instead
            return False
        return info.is_published()
    finally:
        client.stop()


def check(url: str) -> dict[str, Any]:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 1883
    run = uuid.uuid4().hex[:8]
    base = f"features/{run}"
    out: dict[str, Any] = {"url": url}
    v5 = Client(host, port, f"f5-{run}", v5=True)
    out["mqtt5_connect"] = v5.ok()
    out["shared_subscription_granted"] = v5.subscribe(f"$share/g/{base}/shared", 1) if out["mqtt5_connect"] else None
    v5.stop()

    pub = Client(host, port, f"fp-{run}")
    assert pub.ok(), f"{url}: MQTT 3.1.1 CONNECT refused: {pub.connack}"
    pub.c.publish(f"{base}/retained", b"r", qos=1, retain=True).wait_for_publish(TIMEOUT_S)
    sub = Client(host, port, f"fs-{run}")
    assert sub.ok()
    out["qos2_subscription_granted"] = sub.subscribe(f"{base}/q2", 2)
    sub.subscribe(f"{base}/retained", 1)
    out["retained_delivered_flagged"] = sub.got.wait(TIMEOUT_S) and sub.messages[0][2]
    sub.got.clear()
    out["qos2_publish_completed"] = qos2_publish(host, port, f"fq-{run}", f"{base}/q2")

    will = Client(host, port, f"fw-{run}", will=f"{base}/will")
    assert will.ok()
    sub.got.clear()
    sub.subscribe(f"{base}/will", 1)
    will.stop(abrupt=True)
    out["will_published"] = sub.got.wait(TIMEOUT_S) and any(t.endswith("/will") for t, _, _ in sub.messages)

    away = Client(host, port, f"fa-{run}", clean=False)
    assert away.ok()
    away.subscribe(f"{base}/away", 1)
    away.stop()
    pub.c.publish(f"{base}/away", b"kept", qos=1).wait_for_publish(TIMEOUT_S)
    back = Client(host, port, f"fa-{run}", clean=False)
    out["persistent_session_kept_message"] = back.ok() and back.got.wait(TIMEOUT_S)
    for client in (back, sub, pub):
        client.stop()
    cleanup = Client(host, port, f"fa-{run}", clean=True)  # drop the persistent session again
    cleanup.ok()
    cleanup.stop()
    return out


def main() -> None:
    print(json.dumps([check(url) for url in sys.argv[1:]], indent=1))


if __name__ == "__main__":
    main()
