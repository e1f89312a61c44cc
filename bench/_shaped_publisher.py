"""Load generator for ``bench/vs_bridge.py``: one separate process publishing COUNT JSON telemetry
messages with READINGS readings each (QoS 1, a window of 100 unacknowledged messages, as fast as the
broker takes them), round-robin over DEVICES device ids ``PREFIX-000``, ``PREFIX-001``, ...

    python bench/_shaped_publisher.py HOST PORT COUNT DEVICES READINGS PREFIX

Each message is ``{"ts": <epoch ms>, "seq": <per-device counter from 1>, "m0": v, ...}`` on
``devices/<id>/telemetry``; (device, seq, metric) names a reading. Each device's metric is a
sensor-like series with one decimal (a seeded random walk), so compression sees realistic data.
Prints ``{"published": COUNT, "seconds": ...}`` once every message is acknowledged.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

WINDOW = 100


def walks(count: int, length: int = 4096) -> list[list[float]]:
    """``count`` sensor-like series: random walks in steps of 0 or +-0.1 (seeded, so every run and
    every setup sends the same values)."""
    rng = random.Random(7)
    out = []
    for k in range(count):
        value, series = 20.0 + k, []
        for _ in range(length):
            value += rng.choice((-0.1, 0.0, 0.0, 0.1))
            series.append(round(value, 1))
        out.append(series)
    return out


def payload(i: int, devices: int, series: list[list[float]]) -> bytes:
    n = i // devices
    body: dict[str, float | int] = {"ts": int(time.time() * 1000), "seq": n + 1}
    for k, walk in enumerate(series):
        body[f"m{k}"] = walk[(n + 97 * (i % devices)) % len(walk)]
    return json.dumps(body).encode()


def main(host: str, port: int, count: int, devices: int, readings: int, prefix: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-pub", protocol=mqtt.MQTTv311)
    window = threading.Semaphore(WINDOW)
    client.on_publish = lambda *a: window.release()
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    series = walks(readings)
    topics = [f"devices/{prefix}-{d:03d}/telemetry" for d in range(devices)]
    start = time.perf_counter()
    for i in range(count):
        window.acquire()
        client.publish(topics[i % devices], payload(i, devices, series), 1)
    for _ in range(WINDOW):
        window.acquire()
    print(json.dumps({"published": count, "seconds": time.perf_counter() - start}), flush=True)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
