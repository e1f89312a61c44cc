"""Brokers for ``bench/vs_bridge.py``: mosquitto configurations (the cloud broker, a local broker,
a local broker bridged to the cloud), a mosquitto process, and a tap that records what the cloud
broker delivers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_LOG = "log_dest stderr\nlog_type error\nlog_type warning\n"


def cloud_conf(port: int) -> str:
    """The cloud broker: a measuring instrument shared by every setup, so it never limits or drops
    (no in-flight or queue limit towards the tap) and keeps nothing on disk."""
    return (f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"max_inflight_messages 0\nmax_queued_messages 0\n{_LOG}")


def local_conf(port: int, data_dir: Path, stock_queue: bool = False) -> str:
    """A local (edge) mosquitto as a deployment runs it: persistent, as conf/mosquitto/mosquitto.conf
    sets it, with a queue as large as the gateway's default telemetry buffer (256 MiB) instead of
    mosquitto's default of 1000 messages per client, which drops messages whenever the client (the
    bridge, or the gateway) falls behind or is away. ``stock_queue`` keeps that default."""
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        # Keep sessions and queued messages across restarts, saved every 60 s (the shipped config).
        f"persistence true\npersistence_location {data_dir}/\nautosave_interval 60\n"
        # Queue without a message limit, bounded by bytes like the gateway's buffer.
        + ("" if stock_queue else "max_queued_messages 0\nmax_queued_bytes 268435456\n")
        + _LOG
    )


def bridge_conf(port: int, data_dir: Path, cloud_port: int, client_id: str, stock_queue: bool = False) -> str:
    """``local_conf`` plus a bridge to the cloud broker, set up as mosquitto.conf(5) describes a
    bridge that must not lose device data across link or broker restarts."""
    return local_conf(port, data_dir, stock_queue) + "\n".join((
        # One bridge, named "cloud"; everything below up to the next `connection` belongs to it.
        "connection cloud",
        f"address 127.0.0.1:{cloud_port}",
        # Forward device data to the cloud at QoS 1 (the devices' QoS); nothing comes back down.
        "topic devices/# out 1",
        # A persistent session on both ends: messages queued while the link is down are kept and
        # sent on reconnect instead of being discarded.
        "cleansession false",
        # A fixed client id, so the persistent session on the cloud broker is found again.
        f"remote_clientid {client_id}",
        "local_clientid " + client_id + "-local",
        # With cleansession false the cloud keeps the session: no UNSUBSCRIBE when the bridge
        # (re)starts, which some brokers refuse and which would throw queued messages away.
        "bridge_attempt_unsubscribe false",
        "bridge_protocol_version mqttv311",
        # mosquitto-to-mosquitto: tell the cloud this is a bridge (loop detection, no echo).
        "try_private true",
        # Connect at start and reconnect after a drop (the defaults, stated).
        "start_type automatic",
        "restart_timeout 5 30",
        "keepalive_interval 60",
        # Publish the bridge state on $SYS/broker/connection/<client id>/state (1 = up): how the
        # benchmark knows the bridge is connected before it starts publishing.
        "notifications true",
        "",
    ))


class MosquittoProcess:
    """A mosquitto started with ``conf`` written to ``dir/mosquitto.conf``, its log in the folder."""

    def __init__(self, conf: str, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)  # mosquitto started as root runs as user mosquitto: it must write here
        self.conf_path = folder / "mosquitto.conf"
        self.conf_path.write_text(conf)
        self.log_path = folder / "mosquitto.log"
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([binary, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL,
                                         stderr=log)

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Arrival(NamedTuple):
    at: float  # time.perf_counter() when the tap received it
    topic: str
    payload: bytes


class CloudTap:
    """One paho subscriber on the cloud broker (``#`` at QoS 1, plus the bridges' state topics).
    Its network thread only appends each message with its arrival time; decoding happens later, in
    the same way for every setup."""

    def __init__(self, port: int) -> None:
        self.arrivals: list[Arrival] = []
        self.bridge_states: dict[str, bytes] = {}
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-tap-{time.time_ns()}",
                                   protocol=mqtt.MQTTv311)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.connect("127.0.0.1", port, keepalive=60)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the cloud tap could not subscribe")

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe([("#", 1), ("$SYS/broker/connection/+/state", 1)])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith("$SYS/"):
            self.bridge_states[msg.topic.split("/")[3]] = bytes(msg.payload)
        else:
            self.arrivals.append(Arrival(time.perf_counter(), msg.topic, bytes(msg.payload)))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
