"""Wiring only: build every part from the config (:mod:`gateway.assemble`), then run them under one
task group.

Start order: buffer (fail fast on a bad disk; opening reads a few keys) -> uplink (the sink side)
-> local broker (the source) -> processing, and the count of the backlog found on disk. Stop order
is the reverse for sources: the broker stops taking messages, the processor drains what was queued
and flushes the open batch to disk, then the uplink waits for in-flight acks, says ``offline`` and
disconnects, and the buffer closes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from bridge.mqtt.errors import BridgeError
from gateway.assemble import build_parts
from gateway.config import GatewayConfig, Secrets
from gateway.errors import GatewayError
from gateway.observe.snapshot import Snapshot
from gateway.observe.stats import SnapshotBoard, publish_periodically, refresh_periodically
from gateway.observe.status import write_periodically
from gateway.store.scan import count_backlog

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup
else:  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup
    from taskgroup import TaskGroup

log = logging.getLogger(__name__)


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one operational error (GatewayError or BridgeError) a task group failed with, so the CLI
    can report it in one line; any other failure (a bug) stays the whole group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    if len(leaves) == 1 and isinstance(leaves[0], (GatewayError, BridgeError)):
        return leaves[0]
    return group


class GatewayService:
    """The gateway: its parts (``parts``; those that the CLI, the lab, tests and benchmarks reach for
    are attributes too) and their lifecycle (:meth:`run`). ``board`` carries the typed snapshot to
    the metrics thread; :meth:`snapshot` is the JSON document of the stats message."""

    def __init__(self, cfg: GatewayConfig, secrets: Secrets) -> None:
        self.cfg = cfg
        self.parts = p = build_parts(cfg, secrets)
        self.topics, self.accounting, self.rejects, self.buffer = p.topics, p.accounting, p.rejects, p.buffer
        self.forwarder, self.lanes, self.batcher, self.ingest = p.forwarder, p.lanes, p.stages.batcher, p.ingest
        self.commands, self.config_pusher, self.downlink, self.link = p.commands, p.config_pusher, p.downlink, p.link
        self.processor, self.state, self.downloads = p.processor, p.state, p.downloads
        self.embedded, self.external, self.credentials = p.local.embedded, p.local.external, p.local.credentials
        self.reload_credentials = asyncio.Event()  # set on SIGHUP
        self.board = SnapshotBoard()  # the snapshot other threads (the metrics endpoint) may read
        self.started = asyncio.Event()

    def typed_snapshot(self) -> Snapshot:
        """On the loop: every figure now, typed and copied."""
        return self.state.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """The document published on the stats topic (without its ``ts_ms``)."""
        return self.state.document()

    def status(self) -> dict[str, Any]:
        """The status file's document (without its ``ts``, ``pid``, ``interval_s`` and ``state``)."""
        return self.state.status()

    async def run(self, stop: asyncio.Event) -> None:
        p = self.parts
        self.buffer.open(scan=False)  # the backlog is counted once devices can connect
        p.answered.open()
        if p.uploads is not None:
            p.uploads.open()
        if self.cfg.downlink.config_push:
            p.config_pusher.load_persisted()  # before anything is processed
        if p.downloads is not None:
            p.downloads.open()  # before the uplink connects: it asks for what these transfers miss
        try:
            await self._run(stop)
        except BaseExceptionGroup as group:
            raise sole_error(group) from None
        finally:
            if p.uploads is not None:
                p.uploads.close()
            p.answered.close()
            self.buffer.close()

    async def _run(self, stop: asyncio.Event) -> None:
        p, cfg = self.parts, self.cfg
        uplink_stop, source_stop, proc_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        async with TaskGroup() as tg:
            tg.create_task(p.link.run(uplink_stop), name="uplink")
            tg.create_task(publish_periodically(
                self.snapshot, lambda b: p.link.publish_now(p.topics.stats, b),
                cfg.uplink.stats_interval_s, uplink_stop), name="stats")
            source = await p.local.start(tg, source_stop, cfg, self.reload_credentials)
            tg.create_task(count_backlog(self.buffer, uplink_stop), name="backlog-count")
            proc = tg.create_task(p.processor.run(proc_stop), name="processor")
            commands = tg.create_task(p.commands.run(source_stop), name="commands")
            if p.uploads is not None:
                tg.create_task(p.uploads.run(uplink_stop), name="outbox")
            tg.create_task(p.device_files.run(source_stop), name="device-files")
            if p.downloads is not None:
                tg.create_task(p.downloads.run(uplink_stop), name="downloads")
            tg.create_task(refresh_periodically(self.board, self.typed_snapshot, cfg.metrics.refresh_s,
                                                uplink_stop), name="snapshot")
            tg.create_task(write_periodically(cfg.status_file, self.status, cfg.status.interval_s,
                                              uplink_stop), name="status-file")
            self.started.set()
            log.info("gateway %s running", cfg.gateway.id)
            await stop.wait()
            log.info("stopping: local broker first, then flush, then uplink")
            if p.local.embedded is not None:
                await p.local.embedded.stop()
            source_stop.set()
            if source is not None:
                await source
            await commands
            proc_stop.set()
            await proc
            uplink_stop.set()
