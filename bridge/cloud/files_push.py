"""Send a file down to a gateway through the cloud broker (``edge-gateway files push``).

The pusher publishes the manifest, then the chunks (QoS 1), on
``{prefix}/files/down/{id}/...``, and listens on ``{prefix}/files/status`` for the gateway's
FileStatus records about this id (docs/OPERATIONS.md, "File transfer: downloads"):

- at most ``window`` chunks are sent and not yet confirmed by the gateway: a ``missing`` status
  with the full list (``progress`` while chunks arrive, ``opened``, ``reconnect``...) confirms
  every chunk sent that it does not name. So the chunks waiting for the gateway (in the broker's
  queue for it, where a command from the cloud would wait behind them) stay within the window,
  whatever the link's speed, and a gateway that is offline costs at most a window of chunks.
- ``missing``: the chunks listed are sent again (with the resend flag), and the manifest when
  asked. A chunk in flight or still queued is not sent twice, nor, when the status may have been
  written before that copy arrived (:data:`MAY_BE_IN_TRANSIT`), one sent less than
  ``resend_after_s`` ago.
- ``received``: done (the gateway verified and installed the file); ``failed``: the gateway
  refused it (the reason says why).
- nothing heard for ``quiet_s`` with nothing left to send: the manifest is published again (the
  gateway answers any manifest), doubling up to :data:`QUIET_CAP_S`. That covers a gateway that
  was offline when the transfer started and a status lost on the way.

The gateway's cloud session is not persistent (clean start), so messages published while it is
offline are not queued for it: the pusher must keep running until the answer, and it is the
gateway's ``missing`` status on reconnect (or the manifest published again) that resumes the
transfer where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Message
from bridge.protocol.errors import CodecError, InvalidRecord
from bridge.protocol.file_topics import FileTopics
from bridge.protocol.files import FileRejected, Manifest, encode_chunk, encode_manifest, from_ranges
from bridge.protocol.records import FileStatus, decode_control, parse_control
from bridge.transfer.plan import read_chunk

__all__ = ["FilePusher", "PushOutcome", "push_file"]

QUIET_CAP_S = 120.0
# `missing` statuses (by their reason) that may list chunks still on their way to the gateway:
# a chunk sent less than resend_after_s ago is not sent again for those. The others (a chunk the
# gateway refused or dropped) name chunks that are not coming: sent again unless queued or in flight.
MAY_BE_IN_TRANSIT = frozenset({"opened", "manifest", "reconnect", "stalled", "progress", ""})


@dataclass
class PushOutcome:
    """How a push ended: the gateway's last FileStatus record (``received``/``failed``; empty on a
    timeout) and what was published."""

    status: dict[str, Any] = field(default_factory=dict)
    manifests: int = 0
    chunks: int = 0
    resent: int = 0
    missing_heard: int = 0

    @property
    def state(self) -> str:
        return str(self.status.get("state", "timeout"))


class FilePusher:
    """One file going down to one gateway over an open connection (see the module doc)."""

    def __init__(self, conn: MqttConnection, topics: FileTopics, path: Path, manifest: Manifest, *,
                 window: int = 8, resend_after_s: float = 2.0, quiet_s: float = 10.0) -> None:
        self.conn, self.topics, self.path, self.manifest = conn, topics, path, manifest
        self.window, self.resend_after_s, self.quiet_s = window, resend_after_s, quiet_s
        self.outcome = PushOutcome()
        self._loop = asyncio.get_running_loop()
        self._queue: deque[int] = deque(range(manifest.chunks))
        self._queued: set[int] = set(self._queue)
        self._unconfirmed: set[int] = set()  # chunks sent that no full `missing` list has shown processed
        self._sent_at: dict[int, float] = {}  # chunk -> when its last copy was acknowledged (inf: in flight)
        self._inflight: set[asyncio.Future[None]] = set()
        self._want_manifest = True
        self._heard = self._loop.time()
        self._wake = asyncio.Event()
        self._error: BaseException | None = None
        self._done: asyncio.Future[dict[str, Any]] = self._loop.create_future()

    def on_message(self, msg: Message) -> None:
        """A message on the status topic (the connection's handler)."""
        try:
            wire = decode_control(msg.payload)
            record = parse_control(wire).record
        except (CodecError, InvalidRecord):
            return
        if not isinstance(record, FileStatus) or record.id != self.manifest.id or record.direction != "down":
            return
        self._heard = self._loop.time()
        if record.state in ("received", "failed"):
            if not self._done.done():
                self._done.set_result(wire)
        elif record.state == "missing":
            self.outcome.missing_heard += 1
            self._missing(record)
        self._wake.set()

    def _missing(self, record: FileStatus) -> None:
        if record.manifest is True:
            self._want_manifest = True
        try:
            wanted = from_ranges(record.missing or [], self.manifest.chunks)
        except FileRejected:
            return
        now = self._loop.time()
        timed = record.reason in MAY_BE_IN_TRANSIT
        if timed:  # a full list: every chunk sent that it does not name was processed by the gateway
            self._unconfirmed &= set(wanted)
        for index in wanted:
            sent = self._sent_at.get(index, -1e9)
            if index in self._queued or sent == float("inf") or (timed and now - sent < self.resend_after_s):
                continue
            self._queue.append(index)
            self._queued.add(index)
            self._unconfirmed.discard(index)

    async def run(self, timeout_s: float) -> PushOutcome:
        """Push until the gateway answers ``received``/``failed`` or ``timeout_s`` passes. Raises
        the connection's errors (``ConnectionLost``...) and ``FileRejected`` when the file changed."""
        await self.conn.subscribe([(self.topics.prefix + "/files/status", 1)])
        deadline = self._loop.time() + timeout_s
        quiet = self.quiet_s
        while not self._done.done() and self._loop.time() < deadline:
            if self._want_manifest:
                self._want_manifest = False
                self.outcome.manifests += 1
                await self.conn.publish(self.topics.manifest("down", self.manifest.id), encode_manifest(self.manifest))
            self._fill()
            idle = not self._inflight and (not self._queue or len(self._unconfirmed) >= self.window)
            if idle and self._loop.time() - self._heard >= quiet:
                self._want_manifest, self._heard = True, self._loop.time()
                quiet = min(quiet * 2, QUIET_CAP_S)
                continue
            if not idle:
                quiet = self.quiet_s
            await self._wait(min(deadline, self._heard + quiet) - self._loop.time())
        for fut in self._inflight:
            fut.cancel()
        if self._done.done():
            self.outcome.status = self._done.result()
        return self.outcome

    def _fill(self) -> None:
        while self._queue and len(self._inflight) < self.window and len(self._unconfirmed) < self.window:
            index = self._queue.popleft()
            self._queued.discard(index)
            data, digest = read_chunk(self.path, self.manifest, index)
            again = index in self._sent_at
            payload = encode_chunk(self.manifest.id, index, index * self.manifest.chunk_size, data,
                                   resend=again, sha256=digest)
            if again:
                self.outcome.resent += 1
            else:
                self.outcome.chunks += 1
            self._sent_at[index] = float("inf")
            self._unconfirmed.add(index)
            fut = self.conn.publish(self.topics.chunk("down", self.manifest.id), payload)
            self._inflight.add(fut)
            fut.add_done_callback(functools.partial(self._acked, index))

    def _acked(self, index: int, fut: asyncio.Future[None]) -> None:
        self._inflight.discard(fut)
        self._sent_at[index] = self._loop.time()
        if not fut.cancelled() and fut.exception() is not None and self._error is None:
            self._error = fut.exception()
        self._wake.set()

    async def _wait(self, timeout: float) -> None:
        if self._error is not None:
            raise self._error
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(timeout, 0.01))


async def push_file(url: str, settings: ClientSettings, topics: FileTopics, path: Path, manifest: Manifest, *,
                    window: int, timeout_s: float, quiet_s: float = 10.0) -> PushOutcome:
    """Open a connection to the cloud broker and push one file (:class:`FilePusher`)."""
    pusher: FilePusher | None = None

    def on_message(msg: Message) -> None:
        if pusher is not None:
            pusher.on_message(msg)

    conn = await MqttConnection.open(url, settings, on_message=on_message)
    try:
        pusher = FilePusher(conn, topics, path, manifest, window=window, quiet_s=quiet_s)
        return await pusher.run(timeout_s)
    finally:
        await conn.close()
