"""Load generator for the benchmarks: a separate process publishing N one-reading JSON messages
as fast as the broker takes them (QoS 0, or QoS 1 with a window of unacknowledged messages), or
at ``rate`` messages per second. Each message carries its send time as ``ts`` (epoch ms).

    python bench/_publisher.py HOST PORT COUNT QOS DEVICES [RATE [USERNAME PASSWORD]]

With USERNAME (a device id) the client connects as that device (client id = username) and
publishes only that device's telemetry.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main(host: str, port: int, count: int, qos: int, devices: int, rate: float = 0.0,
         username: str | None = None, password: str | None = None) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username or f"bench-pub-{time.time_ns()}",
                         protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    window = threading.Semaphore(100)
    client.on_publish = lambda *a: window.release()
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    t0 = int(time.time() * 1000)
    start = time.perf_counter()
    for i in range(count):
        window.acquire()
        d = i % devices
        if rate > 0:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        ts = int(time.time() * 1000) if rate > 0 else t0 + i
        payload = json.dumps({"ts": ts, "seq": i // devices + 1, "temperature": 20 + (i % 50) / 10}).encode()
        client.publish(f"devices/{username or f'bench-{d:03d}'}/telemetry", payload, qos)
    for _ in range(100):
        window.acquire()
    print(json.dumps({"published": count, "seconds": time.perf_counter() - start}), flush=True)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
         float(sys.argv[6]) if len(sys.argv) > 6 else 0.0, *sys.argv[7:9])
