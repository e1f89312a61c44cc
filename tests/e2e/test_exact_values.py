"""Values arrive at the cloud exactly, through the real gateway and a real cloud broker: the batch
that used to fail as a whole on one huge value is delivered with every reading bit for bit, and a
value no batch can carry is rejected alone."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack

from tests.e2e.harness import CloudCollector, Devices, gateway_config, local_url, running_gateway
from tests.support import Mosquitto, eventually


async def test_extreme_values_reach_the_cloud_bit_for_bit(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cloud = CloudCollector(mosquitto.url)
    await cloud.connect()
    ts = int(time.time() * 1000) - 1000
    sent = {  # device -> (metric, value): one open batch of ordinary and extreme readings
        **{f"d{i}": ("flow", 20 + i / 100) for i in range(10)},
        "d5": ("flow", 1e308), "neg": ("zero", -0.0), "tiny": ("v", 5e-324), "max": ("v", 1.7976931348623157e308),
        "u64": ("count", 2**64 - 1), "i64": ("count", -(2**63)), "odd": ("count", 2**53 + 1),
    }
    payloads = [(f"devices/{dev}/telemetry", msgpack.packb({"ts": ts, metric: value}))
                for dev, (metric, value) in sent.items()]
    payloads.append(("devices/nan/telemetry", b'{"v": NaN, "ok": 1.5}'))  # NaN alone is rejected
    payloads.append(("devices/big/telemetry", b'{"v": 123456789012345678901234567890}'))
    cfg = gateway_config(tmp_path, mosquitto.url, batch={"max_count": 1000, "max_age_s": 0.3})
    async with running_gateway(cfg) as svc:
        devices = await Devices.connect(local_url(svc))
        await devices.publish_all(payloads)
        await devices.close()
        await eventually(lambda: len(cloud.data.readings()) == len(sent) + 1, timeout=30,
                         message=lambda: f"{len(cloud.data.readings())} readings at the cloud")
        acc = svc.accounting
        await eventually(lambda: acc.delivered == len(sent) + 1)
        assert dict(acc.dropped) == {"nan": 1, "int_out_of_range": 1} and acc.balance() == 0
    await cloud.close()
    got = {r.device: (r.metric, r.value) for r in cloud.data.readings()}
    for dev, (metric, value) in sent.items():
        assert got[dev] == (metric, value) and repr(got[dev][1]) == repr(value), dev  # repr: type, bits, sign
    assert got["nan"] == ("ok", 1.5)
