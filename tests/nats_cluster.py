"""A real nats-server cluster (3 nodes by default) on loopback with JetStream and its MQTT listener, for tests that
need a clustered cloud broker: generated configs, free ports, a JetStream store per node in a temp
dir, readiness polled on each node's monitoring port, and kill -9 / restart of one node.

Facts (nats-server 2.9.10, Debian): the MQTT listener needs JetStream and a ``server_name``; it
speaks MQTT 3.1.1 with QoS 0 and 1 (a QoS 2 subscription is downgraded, a QoS 2 PUBLISH refused).
MQTT sessions, retained messages and QoS 1 messages live in JetStream streams (``$MQTT_sess``,
``$MQTT_rmsgs``, ``$MQTT_msgs``) and each QoS 1 subscription of a session is a durable JetStream
consumer. With ``stream_replicas``/``consumer_replicas`` equal to the cluster size (at most 5) they
are on every node, so a client whose node dies reconnects to another node and resumes its session
there, unacked messages included (``ack_wait`` is when an unacknowledged QoS 1 message is sent
again). A majority of the nodes must be up and caught up for any of it to work.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import free_port, require_tool, stop_process, wait_until

CLUSTER_NAME = "edge-cloud"


@dataclass
class NatsNode:
    """One server of the cluster: its ports, files and process."""

    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def conf(self) -> Path:
        return self.dir / "nats.conf"

    @property
    def log(self) -> Path:
        return self.dir / "nats.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str) -> dict[str, Any] | None:
        """A JSON page of the node's monitoring endpoint (``/jsz``, ``/connz?...``), or None while it
        does not answer. ``/healthz`` answers 503 with a JSON body while the node is not ready."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(ValueError):
                body: dict[str, Any] = json.loads(exc.read())
                return body
            return None
        except OSError:
            return None


def node_config(node: NatsNode, peers: list[NatsNode], *, ack_wait_s: float) -> str:
    """nats-server configuration of ``node`` in a cluster of ``peers`` (itself included)."""
    routes = ", ".join(f'"nats-route://127.0.0.1:{p.cluster_port}"' for p in peers if p is not node)
    return f"""
server_name: {node.name}
listen: 127.0.0.1:{node.client_port}
http: 127.0.0.1:{node.http_port}
jetstream {{
  store_dir: "{node.dir / 'js'}"
  max_memory_store: 64MB
  max_file_store: 512MB
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{node.cluster_port}
  routes: [{routes}]
}}
mqtt {{
  listen: 127.0.0.1:{node.mqtt_port}
  # sessions, retained and QoS 1 messages, and every subscription's consumer on every node
  stream_replicas: {min(len(peers), 5)}
  consumer_replicas: {min(len(peers), 5)}
  # an unacknowledged QoS 1 message is sent again after this long (default 30s)
  ack_wait: "{ack_wait_s:g}s"
  max_ack_pending: 1024
}}
"""


class NatsCluster:
    """``size`` nats-servers routed to each other, each with JetStream and an MQTT listener."""

    def __init__(self, size: int = 3, *, ack_wait_s: float = 5.0) -> None:
        self.binary = require_tool("nats-server")
        self.root = Path(tempfile.mkdtemp(prefix="nats-cluster-"))
        self.nodes = [NatsNode(f"n{i}", free_port(), free_port(), free_port(), free_port(), self.root / f"n{i}")
                      for i in range(size)]
        for node in self.nodes:
            node.dir.mkdir()
            node.conf.write_text(node_config(node, self.nodes, ack_wait_s=ack_wait_s))

    @property
    def mqtt_urls(self) -> list[str]:
        return [node.mqtt_url for node in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        """Start every node and wait until the cluster is ready (see :meth:`wait_ready`) and every
        node accepts MQTT clients: the first MQTT connection creates the account's MQTT streams,
        and until then a node may close a connection before its CONNACK."""
        for node in self.nodes:
            self._spawn(node)
        self.wait_ready(timeout)
        for node in self.nodes:
            wait_until(functools.partial(mqtt_accepts, node), timeout, interval=0.1,
                       message=f"{node.name} does not accept MQTT clients")

    def _spawn(self, node: NatsNode) -> None:
        with node.log.open("ab") as log:  # a file, not a pipe: a chatty server never blocks on it
            node.proc = subprocess.Popen([self.binary, "-c", str(node.conf)],
                                         stdout=subprocess.DEVNULL, stderr=log)

    def _alive(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise AssertionError(f"nats-server {node.name} exited with {node.proc.returncode}:\n"
                                     f"{node.log.read_text(errors='replace')[-4000:]}")

    @staticmethod
    def _healthy(node: NatsNode, *, assets: bool) -> bool:
        """The node knows the JetStream meta leader and is healthy: with ``assets`` every stream and
        consumer replica it holds is current, else only its JetStream server (``js-server-only``)."""
        jsz = node.monitor("/jsz")
        health = node.monitor("/healthz" if assets else "/healthz?js-server-only=true")
        leader = (jsz or {}).get("meta_cluster", {}).get("leader")
        return bool(leader) and (health or {}).get("status") == "ok"

    def ready(self, *, assets: bool = True) -> bool:
        """Every running node is healthy (see :meth:`_healthy`), sees the JetStream meta leader and is
        routed to the others."""
        self._alive()
        running = [n for n in self.nodes if n.running]
        for node in running:
            if not self._healthy(node, assets=assets):
                return False
            routez = node.monitor("/routez") or {}
            if routez.get("num_routes", 0) < len(running) - 1:
                return False
        return True

    def wait_ready(self, timeout: float = 30.0, *, assets: bool = True) -> None:
        wait_until(lambda: self.ready(assets=assets), timeout, interval=0.1,
                   message=lambda: "nats cluster not ready: " + "; ".join(
                       f"{n.name}: {n.monitor('/healthz')}" for n in self.nodes if n.running))

    def kill(self, index: int) -> None:
        """kill -9 one node and wait until it is gone."""
        node = self.nodes[index]
        assert node.proc is not None and node.running, f"{node.name} is not running"
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
        node.proc = None

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start a killed node again (same ports and store) and wait until it is routed to the others
        and its JetStream server has joined the meta group.

        Not until every replica it holds is current: under steady traffic nats-server 2.9.10 reports
        a restarted node's MQTT consumers "not current" in ``/healthz`` for minutes. Raft does not need
        that for safety: a lagging member still votes, and only an up-to-date one can be elected."""
        self._spawn(self.nodes[index])
        self.wait_ready(timeout, assets=False)

    def node_of_mqtt_client(self, client_id: str) -> int | None:
        """Index of the running node an MQTT client (by client id) is connected to, or None."""
        for i, node in enumerate(self.nodes):
            if not node.running:
                continue
            connz = node.monitor(f"/connz?mqtt_client={client_id}") or {}
            if connz.get("connections"):
                return i
        return None

    def mqtt_subjects(self, client_id: str) -> list[str]:
        """The NATS subjects an MQTT client's subscriptions map to (``edge/+/status`` ->
        ``edge.*.status``; a filter ending in ``#`` gives two), on whichever node it is connected."""
        for node in self.nodes:
            if node.running:
                connz = node.monitor(f"/connz?mqtt_client={client_id}&subs=true") or {}
                for conn in connz.get("connections", []):
                    return [s for s in conn.get("subscriptions_list", []) if not s.startswith("$MQTT.")]
        return []

    def wait_connected(self, client_id: str, timeout: float = 30.0, *, not_on: int | None = None) -> int:
        """Wait until ``client_id`` is connected to some node (other than ``not_on``); its index."""
        found: list[int] = []

        def connected() -> bool:
            i = self.node_of_mqtt_client(client_id)
            if i is None or i == not_on:
                return False
            found.append(i)
            return True

        wait_until(connected, timeout, interval=0.05, message=f"MQTT client {client_id} not connected")
        return found[-1]

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                stop_process(node.proc)
            node.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# MQTT 3.1.1 CONNECT (clean session, keepalive 60, client id "nats-probe"), then DISCONNECT
_PROBE = bytes([0x10, 22, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 10]) + b"nats-probe"


def mqtt_accepts(node: NatsNode) -> bool:
    """The node answers an MQTT CONNECT with a CONNACK that accepts it."""
    try:
        with socket.create_connection(("127.0.0.1", node.mqtt_port), 2) as sock:
            sock.settimeout(5)
            sock.sendall(_PROBE)
            connack = sock.recv(4)
            sock.sendall(bytes([0xE0, 0]))
            return connack[:1] == b"\x20" and connack[3:4] == b"\x00"
    except OSError:
        return False


@contextlib.contextmanager
def running_nats_cluster(size: int = 3, **kwargs: Any) -> Iterator[NatsCluster]:
    """A started :class:`NatsCluster`, stopped and removed afterwards."""
    cluster = NatsCluster(size, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
