"""Shared benchmark fixture: a gateway service on a free local port, forwarding to an embedded
amqtt broker in the same process standing in for the cloud."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.broker import EmbeddedBroker
from gateway.config import Secrets, parse_config
from gateway.service import GatewayService


@asynccontextmanager
async def bench_gateway(**sections: Any) -> AsyncIterator[GatewayService]:
    """Yield a started gateway; ``sections`` override config sections. Stopping flushes and drains."""
    cloud = EmbeddedBroker("127.0.0.1", 0)
    await cloud.start()
    with tempfile.TemporaryDirectory() as tmp:
        data: dict[str, Any] = {
            "gateway": {"id": "bench", "data_dir": tmp},
            "local_broker": {"listen": "127.0.0.1:0"},
            "uplink": {"urls": [f"mqtt://127.0.0.1:{cloud.address.port}"], "protocol": "3.1.1"},
        }
        for key, value in sections.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
        svc = GatewayService(parse_config(data, "<bench>"), Secrets())
        stop = asyncio.Event()
        task = asyncio.create_task(svc.run(stop))
        await svc.started.wait()
        try:
            yield svc
        finally:
            stop.set()
            await task
            await cloud.stop()
