"""Helpers for the store-and-forward tests: a pre-filled backlog (what an outage leaves on disk)."""

from __future__ import annotations

import random
import time

from bridge.protocol.model import Reading
from bridge.protocol.topics import CloudTopics
from gateway.config import GatewayConfig
from gateway.observe.accounting import Accounting
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.lanes import LaneWriter


def prefill_backlog(cfg: GatewayConfig, batches: int, per_batch: int, devices: int = 50) -> tuple[int, int]:
    """Write ``batches`` telemetry batches of ``per_batch`` readings into the gateway's buffer, as
    an earlier run that lost its uplink would have. Device ids ``old-NN``, 1 Hz timestamps over the
    last hour or so. Returns the number of readings and of payload bytes written."""
    buf = DiskBuffer(cfg.buffer_dir, {"telemetry": Budget(cfg.buffer.telemetry.max_bytes), "control": Budget(10**9)},
                     sync="normal")
    buf.open()
    try:
        lanes = LaneWriter(buf, CloudTopics(cfg.gateway.id, cfg.topics.cloud_prefix), Accounting(),
                           compression=cfg.batch.compression, level=cfg.batch.level, on_written=lambda: None)
        t0 = int(time.time() * 1000) - batches * per_batch // devices * 1000
        seq = dict.fromkeys(range(devices), 0)
        rng = random.Random(7)  # sensor noise: realistic compression (a few bytes per reading)
        n = 0
        for _ in range(batches):
            readings = []
            for _ in range(per_batch):
                d = n % devices
                seq[d] += 1
                readings.append(Reading(f"old-{d:02d}", "temperature", t0 + seq[d] * 1000,
                                        round(20 + rng.gauss(0, 2), 2), seq[d]))
                n += 1
            lanes.write_batch(readings)
        return n, sum(len(r.payload) for r in buf.take("telemetry", batches))
    finally:
        buf.close()
