"""Shared benchmark fixture: a gateway service on a free local port, forwarding to an embedded
amqtt broker in the same process standing in for the cloud."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from gateway.config import GatewayConfig, Secrets, parse_config
from gateway.service import GatewayService
from gateway.source.broker import EmbeddedBroker


@asynccontextmanager
async def bench_gateway(
    *, on_cloud_message: Callable[[str, bytes], None] | None = None,
    before_start: Callable[[GatewayConfig], None] | None = None, **sections: Any,
) -> AsyncIterator[GatewayService]:
    """Yield a started gateway; ``sections`` override config sections. Stopping flushes and drains.

    ``on_cloud_message(topic, payload)`` sees every message the cloud broker receives;
    ``before_start(cfg)`` runs before the service opens its buffer (to pre-fill a backlog)."""
    cloud = EmbeddedBroker("127.0.0.1", 0, on_message=on_cloud_message)
    await cloud.start()
    with tempfile.TemporaryDirectory() as tmp:
        data: dict[str, Any] = {
            "gateway": {"id": "bench", "data_dir": tmp},
            "local_broker": {"listen": "127.0.0.1:0"},
            "uplink": {"urls": [f"mqtt://127.0.0.1:{cloud.address.port}"], "protocol": "3.1.1"},
        }
        for key, value in sections.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
        cfg = parse_config(data, "<bench>")
        if before_start is not None:
            before_start(cfg)
        svc = GatewayService(cfg, Secrets())
        stop = asyncio.Event()
        task = asyncio.create_task(svc.run(stop))
        await svc.started.wait()
        try:
            yield svc
        finally:
            stop.set()
            await task
            await cloud.stop()
