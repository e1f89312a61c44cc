"""The gateway's download receiver on a real disk, without a broker: what it answers (the FileStatus
records it hands to the control lane, collected in a list), resume after a restart from the same
directories, the stall timer's back-off on an injected clock, and the refusals it counts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bridge.protocol.files import Manifest, decode_chunk, encode_chunk, encode_manifest, new_file_id
from bridge.protocol.records import ControlRecord, FileStatus
from bridge.transfer.assembly import Assembly
from gateway.files.download import PROGRESS_EVERY, PROGRESS_QUIET_S, STALL_CAP_S, Downloads
from gateway.files.download_counters import UNSOLICITED_BURST
from gateway.files.installed import InstalledLog
from tests.support import eventually

CHUNK = 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def planned(data: bytes, name: str = "pack.bin") -> tuple[Manifest, list[bytes]]:
    pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    m = Manifest(new_file_id(), name, len(data), CHUNK, hashlib.sha256(data).hexdigest(),
                 tuple(hashlib.sha256(p).hexdigest() for p in pieces))
    return m, [encode_chunk(m.id, i, i * CHUNK, p) for i, p in enumerate(pieces)]


def new_downloads(tmp: Path, out: list[ControlRecord], clock: Clock, *, timeout_s: float = 7 * 86400.0,
                  wall: Callable[[], float] = time.time, **kw: int) -> Downloads:
    d = Downloads(tmp / "incoming", tmp / "inbox", InstalledLog(tmp / "installed.json"), out.append,
                  max_file_bytes=kw.get("max_file_bytes", 10**6), max_disk_bytes=kw.get("max_disk_bytes", 10**7),
                  stall_s=10.0, timeout_s=timeout_s, clock=clock, wall=wall)
    d.open()
    return d


@asynccontextmanager
async def running(d: Downloads) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.ensure_future(d.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


def states(out: list[ControlRecord], file_id: str) -> list[str]:
    return [r.state for r in out if isinstance(r, FileStatus) and r.id == file_id]


async def test_an_empty_file_installs_at_once_and_a_repeated_manifest_is_received_again(tmp_path: Path) -> None:
    out: list[ControlRecord] = []
    d = new_downloads(tmp_path, out, Clock())
    m, _ = planned(b"", "empty.cfg")
    async with running(d):
        d.offer(m.id, "manifest", encode_manifest(m))
        await eventually(lambda: states(out, m.id) == ["received"])
        d.offer(m.id, "manifest", encode_manifest(m))
        await eventually(lambda: states(out, m.id) == ["received", "received"])
    assert (tmp_path / "inbox" / "empty.cfg").read_bytes() == b""
    assert (d.counters.received, d.counters.received_again) == (1, 1)


async def test_a_restart_resumes_from_the_disk_and_remembers_installed_files(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20  # 5 chunks
    m, chunks = planned(data)
    out: list[ControlRecord] = []
    clock = Clock()
    first = new_downloads(tmp_path, out, clock)
    async with running(first):
        first.offer(m.id, "manifest", encode_manifest(m))
        first.offer(m.id, "chunk", chunks[0])
        first.offer(m.id, "chunk", chunks[2])
        await eventually(lambda: first.counters.chunks == 2)
    second = new_downloads(tmp_path, out, clock)  # the gateway restarted
    assert [x.id for x in second.under_way()] == [m.id] and second.bytes_in_use() == len(data)
    second.link_changed(True)  # connected: asks for what it misses
    asked = out[-1]
    assert isinstance(asked, FileStatus) and asked.state == "missing" and asked.missing == [[1, 1], [3, 4]]
    async with running(second):
        for i in (1, 2, 3, 4):
            second.offer(m.id, "chunk", chunks[i])
        await eventually(lambda: states(out, m.id)[-1:] == ["received"])
    assert (tmp_path / "inbox" / "pack.bin").read_bytes() == data
    assert second.counters.duplicates == 1 and second.bytes_in_use() == 0
    third = new_downloads(tmp_path, out, clock)
    async with running(third):
        third.offer(m.id, "manifest", encode_manifest(m))
        await eventually(lambda: states(out, m.id)[-2:] == ["received", "received"])
    assert third.counters.received_again == 1


async def test_a_stalled_transfer_asks_again_backing_off_only_while_the_link_is_up(tmp_path: Path) -> None:
    m, chunks = planned(b"x" * 3000)
    out: list[ControlRecord] = []
    clock = Clock()
    d = new_downloads(tmp_path, out, clock)
    d.link_changed(True)
    async with running(d):
        d.offer(m.id, "manifest", encode_manifest(m))
        d.offer(m.id, "chunk", chunks[1])
        await eventually(lambda: d.counters.chunks == 1)
        asked = len(states(out, m.id))
        pokes = 0

        async def tick(seconds: float) -> None:
            """Move the clock on, then wake the task with a refused manifest (it checks the stalls
            right after handling it, in the same step)."""
            nonlocal pokes
            clock.now += seconds
            pokes += 1
            d.offer("f" * 32, "manifest", b"{")
            await eventually(lambda: d.counters.rejected["malformed"] == pokes, interval=0.001)

        waits = []
        for _ in range(8):
            before, step = len(states(out, m.id)), 0
            while len(states(out, m.id)) == before:
                await tick(10)
                step += 10
            waits.append(step)
        assert waits == [10, 20, 40, 80, 160, 320, 600, 600] and STALL_CAP_S == 600
        d.link_changed(False)
        before = len(states(out, m.id))
        await tick(5000)
        assert len(states(out, m.id)) == before  # nobody to ask while offline
    assert asked == 1 and out


async def test_bad_ids_and_a_full_queue_are_counted(tmp_path: Path) -> None:
    out: list[ControlRecord] = []
    d = new_downloads(tmp_path, out, Clock())
    d.offer("../../etc", "chunk", b"x")
    d.offer("AB" * 16, "manifest", b"{}")
    assert d.counters.rejected["bad_id"] == 2 and out == []
    big = b"\0" * (1024 * 1024)
    for _ in range(17):  # nothing handles the queue: it fills at 16 MiB
        d.offer("ab" * 16, "chunk", big)
    assert d.counters.rejected["busy"] == 1


async def test_chunks_dropped_on_a_full_queue_are_asked_for_once_it_is_empty(tmp_path: Path) -> None:
    size = 1024 * 1024
    data = bytes(range(256)) * (18 * size // 256)
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    m = Manifest(new_file_id(), "big.bin", len(data), size, hashlib.sha256(data).hexdigest(),
                 tuple(hashlib.sha256(p).hexdigest() for p in pieces))
    out: list[ControlRecord] = []
    d = new_downloads(tmp_path, out, Clock(), max_file_bytes=10**8, max_disk_bytes=10**8)
    d.offer(m.id, "manifest", encode_manifest(m))
    for i, piece in enumerate(pieces):  # all at once, before the task runs: the queue takes 16 MiB
        d.offer(m.id, "chunk", encode_chunk(m.id, i, i * size, piece))
    assert d.counters.rejected["busy"] == 3
    async with running(d):
        await eventually(lambda: "busy" in [r.reason for r in out if isinstance(r, FileStatus)])
        busy = [r for r in out if isinstance(r, FileStatus) and r.reason == "busy"]
        assert len(busy) == 1 and busy[0].missing == [[15, 17]]
        for i in (15, 16, 17):
            d.offer(m.id, "chunk", encode_chunk(m.id, i, i * size, pieces[i]))
        await eventually(lambda: states(out, m.id)[-1:] == ["received"])
    assert [(r.state, r.reason) for r in out if isinstance(r, FileStatus) and r.reason != "progress"] == [
        ("missing", "opened"), ("missing", "busy"), ("received", "")]
    progress = [r for r in out if isinstance(r, FileStatus) and r.reason == "progress"]
    # the clock stands still, so no quiet progress: the first one comes after PROGRESS_EVERY chunks written
    assert progress and progress[0].missing == [[PROGRESS_EVERY, 17]]


def reasons(out: list[ControlRecord], file_id: str) -> list[tuple[str, str]]:
    return [(r.state, r.reason) for r in out if isinstance(r, FileStatus) and r.id == file_id]


async def test_junk_from_the_cloud_gets_a_bounded_number_of_answers_the_rest_counted(tmp_path: Path) -> None:
    out: list[ControlRecord] = []
    clock = Clock()  # stands still: no token comes back during the flood
    d = new_downloads(tmp_path, out, clock)
    async with running(d):
        for _ in range(100):
            junk = new_file_id()
            d.offer(junk, "chunk", encode_chunk(junk, 0, 0, b"x"))  # a chunk of no file under way
            d.offer(new_file_id(), "manifest", b"{")  # a manifest it refuses
        await eventually(lambda: d.counters.rejected["malformed"] == 100 and d.counters.rejected["unknown_file"] == 100)
    assert len(out) == UNSOLICITED_BURST and d.counters.unanswered == 200 - UNSOLICITED_BURST
    clock.now += 1.0  # a token back: the next refusal is answered again
    async with running(d):
        d.offer(new_file_id(), "manifest", b"{")
        await eventually(lambda: len(out) == UNSOLICITED_BURST + 1)


async def test_a_whole_that_never_matches_is_asked_for_once_more_then_failed(tmp_path: Path) -> None:
    m, chunks = planned(b"abc" * 1000)
    liar = Manifest(m.id, m.name, m.size, m.chunk_size, "0" * 64, m.chunk_sha256)  # chunks fine, whole not
    out: list[ControlRecord] = []
    d = new_downloads(tmp_path, out, Clock())
    async with running(d):
        d.offer(m.id, "manifest", encode_manifest(liar))
        for c in chunks:
            d.offer(m.id, "chunk", c)
        await eventually(lambda: ("missing", "hash_mismatch") in reasons(out, m.id))
        for c in chunks:  # the pusher sends them all again
            d.offer(m.id, "chunk", c)
        await eventually(lambda: states(out, m.id)[-1:] == ["failed"])
    assert reasons(out, m.id)[-1] == ("failed", "hash_mismatch")
    assert d.counters.failed["hash_mismatch"] == 1 and d.under_way() == [] and d.bytes_in_use() == 0
    assert list((tmp_path / "incoming").iterdir()) == [] and not (tmp_path / "inbox" / m.name).exists()


async def test_an_abandoned_download_expires_and_frees_its_budget(tmp_path: Path) -> None:
    m, chunks = planned(b"q" * 5000)
    out: list[ControlRecord] = []
    clock = Clock()
    d = new_downloads(tmp_path, out, clock, timeout_s=3600.0)
    async with running(d):
        d.offer(m.id, "manifest", encode_manifest(m))
        d.offer(m.id, "chunk", chunks[0])
        await eventually(lambda: d.counters.chunks == 1)
        clock.now += 3000  # a chunk keeps it alive
        d.offer(m.id, "chunk", chunks[1])
        await eventually(lambda: d.counters.chunks == 2)
        clock.now += 3000
        d.offer("f" * 32, "manifest", b"{")  # wakes the task: it checks right after
        await eventually(lambda: d.counters.rejected["malformed"] == 1)
        assert d.under_way() == [m]
        clock.now += 601
        d.offer("f" * 32, "manifest", b"{")
        await eventually(lambda: states(out, m.id)[-1:] == ["failed"])
    assert reasons(out, m.id)[-1] == ("failed", "expired") and d.counters.failed["expired"] == 1
    assert d.under_way() == [] and d.bytes_in_use() == 0 and list((tmp_path / "incoming").iterdir()) == []


async def test_a_restart_does_not_make_an_abandoned_download_young_again(tmp_path: Path) -> None:
    m, chunks = planned(b"r" * 3000)
    a = Assembly.open(tmp_path / "incoming", m)
    a.write(decode_chunk(chunks[0]))
    have = tmp_path / "incoming" / f"{m.id}.have"
    os.utime(have, (time.time() - 7200, time.time() - 7200))  # its last chunk came two hours ago
    out: list[ControlRecord] = []
    d = new_downloads(tmp_path, out, Clock(), timeout_s=3600.0)
    async with running(d):
        await eventually(lambda: states(out, m.id) == ["failed"])
    assert d.counters.failed["expired"] == 1 and not have.exists()


class _Crash(Exception):
    pass


async def test_a_download_installed_just_before_a_crash_is_received_not_fetched_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, chunks = planned(b"s" * 2500, "model.bin")
    a = Assembly.open(tmp_path / "incoming", m)
    for c in chunks:
        a.write(decode_chunk(c))

    def crash(work_dir: Path, file_id: str) -> None:
        raise _Crash  # the power goes right after the rename into the inbox

    with monkeypatch.context() as patched:
        patched.setattr(Assembly, "remove", staticmethod(crash))
        with pytest.raises(_Crash):
            a.install(tmp_path / "inbox")
    out: list[ControlRecord] = []
    d = new_downloads(tmp_path, out, Clock())
    assert d.under_way() == [] and list((tmp_path / "incoming").iterdir()) == []
    async with running(d):
        d.offer(m.id, "manifest", encode_manifest(m))  # the pusher asks again
        await eventually(lambda: states(out, m.id) == ["received"])
    received = out[-1]
    assert isinstance(received, FileStatus) and received.path == "model.bin"
    assert d.counters.received_again == 1 and (tmp_path / "inbox" / "model.bin").read_bytes() == b"s" * 2500


async def test_a_download_complete_on_disk_at_start_is_installed(tmp_path: Path) -> None:
    m, chunks = planned(b"t" * 2100)
    a = Assembly.open(tmp_path / "incoming", m)
    for c in chunks:  # every chunk synced and marked, then the crash before the install
        a.write(decode_chunk(c))
    out: list[ControlRecord] = []
    d = new_downloads(tmp_path, out, Clock())
    async with running(d):
        await eventually(lambda: states(out, m.id) == ["received"])
    assert (tmp_path / "inbox" / m.name).read_bytes() == b"t" * 2100


async def test_progress_statuses_follow_chunks_not_time_and_a_quiet_transfer_gets_one(tmp_path: Path) -> None:
    m, chunks = planned(bytes(range(256)) * 4 * 18)  # 18 chunks
    out: list[ControlRecord] = []
    clock = Clock()
    d = new_downloads(tmp_path, out, clock)
    async with running(d):
        d.offer(m.id, "manifest", encode_manifest(m))
        for i in range(16):  # a slow link: one chunk every half second
            clock.now += PROGRESS_QUIET_S / 2
            d.offer(m.id, "chunk", chunks[i])
            await eventually(lambda: d.counters.chunks == i + 1)  # noqa: B023 (awaited at once)
        progress = [r for r in out if isinstance(r, FileStatus) and r.reason == "progress"]
        assert len(progress) == 16 // PROGRESS_EVERY  # one per PROGRESS_EVERY chunks, not one per chunk
        assert progress[0].missing == [[PROGRESS_EVERY, 17]]
        d.offer(m.id, "chunk", chunks[16])  # one more, then nothing: a pusher with a small window waits
        await eventually(lambda: d.counters.chunks == 17)
        clock.now += PROGRESS_QUIET_S
        await eventually(lambda: [r.missing for r in out if isinstance(r, FileStatus)][-1] == [[17, 17]])
        d.offer(m.id, "chunk", chunks[17])
        await eventually(lambda: states(out, m.id)[-1:] == ["received"])
    assert d.counters.received == 1
