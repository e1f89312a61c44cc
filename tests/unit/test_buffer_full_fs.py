"""The buffer on a really full file system (a small ext4 image, loop-mounted): SQLite refuses the
delete that would make room as well as the insert, so the buffer gives back a step of its disk
reserve and the oldest batches give way, never the newest. Control records are all kept.

Mounting needs root and ``mkfs.ext4``: without root (and without ``CI``) the test is skipped; under
CI a missing tool or permission fails it."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.protocol.records import Event
from bridge.protocol.topics import CloudTopics
from bridge.uplink.store import Record
from gateway.observe.accounting import Accounting
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.lanes import LaneWriter, drop_counter
from gateway.store.reserve import RESERVE_BYTES, RESERVE_FILE
from tests.support import FakeClock, require_tool, wait_until

IMAGE_MB = 24
BATCH_BYTES = 20_000


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A freshly made 24 MB ext4 file system (no blocks reserved for root), mounted."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the full-disk test must run as root under CI (it loop-mounts an ext4 image)")
        pytest.skip("loop-mounting a file system needs root")
    mkfs, mount, umount = require_tool("mkfs.ext4"), require_tool("mount"), require_tool("umount")
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(IMAGE_MB * 1024 * 1024)
    subprocess.run([mkfs, "-q", "-F", "-m", "0", str(image)], check=True)
    mounted = subprocess.run([mount, "-o", "loop", str(image), str(mnt)], check=False,
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot loop-mount the test file system: {mounted.stderr}")
        pytest.skip(f"cannot loop-mount a file system here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run([umount, str(mnt)], check=False).returncode != 0:  # busy: a failed test left files open
            subprocess.run([umount, "-l", str(mnt)], check=True)


def _open(directory: Path, acc: Accounting, dropped: list[int]) -> DiskBuffer:
    count = drop_counter(acc)

    def on_dropped(rec: Record, reason: str) -> None:
        dropped.append(rec.seq)
        count(rec, reason)

    buf = DiskBuffer(directory, {"telemetry": Budget(10**12), "control": Budget(10**9)}, sync="normal",
                     min_free_bytes=0, on_dropped=on_dropped)
    buf.open()
    return buf


def test_a_really_full_disk_loses_the_oldest_not_the_newest(small_fs: Path) -> None:
    rng = random.Random(13)
    acc = Accounting()
    dropped: list[int] = []
    directory = small_fs / "buf"
    buf = _open(directory, acc, dropped)
    lanes = LaneWriter(buf, CloudTopics("gw"), acc, compression="none", level=0, on_written=lambda: None)
    filler = small_fs / "other-files"  # something else on the card takes what the buffer does not
    with open(filler, "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, 4 * 1024 * 1024)

    def put() -> int:
        return buf.append("telemetry", "t", lambda seq: rng.randbytes(BATCH_BYTES), 10).seq  # raises if lost

    put()
    assert (directory / RESERVE_FILE).stat().st_size == RESERVE_BYTES  # made while there is room
    n = 1
    while buf.disk_full_events == 0:
        put()
        n += 1
        assert n < 2000, "the file system never filled up"
    depth_when_full = buf.depth("telemetry")
    last = 0
    for i in range(400):  # a long outage on a full card
        last = put()
        if i % 40 == 0:
            lanes.write_control(Event("dev", i, {"i": i}))
    # nothing new was lost: every drop is one of the oldest, in order, counted as disk_full
    assert dropped == list(range(1, len(dropped) + 1)) and len(dropped) >= 400
    assert set(acc.dropped) == {"disk_full"} and acc.dropped["disk_full"] == 10 * len(dropped)
    kept = [rec.seq for rec in buf.take("telemetry", 10**6)]
    assert kept == list(range(len(dropped) + 1, last + 1))
    assert depth_when_full - 2 <= len(kept) <= depth_when_full + 1  # the backlog holds steady
    assert buf.depth("control") == 10 and lanes.held_control == 0 and not acc.control_dropped
    assert (directory / RESERVE_FILE).stat().st_size < RESERVE_BYTES  # some of the reserve was used
    buf.release_all()
    # room comes back (the other files go): the reserve is made whole again
    filler.unlink()
    wait_until(lambda: put() > 0 and (directory / RESERVE_FILE).stat().st_size == RESERVE_BYTES, timeout=30,
               interval=0.1, message="the disk reserve was not re-created")
    buf.close()
    # a clean stop even on the full disk: reopened, every batch is there and no number is reused
    buf = _open(directory, acc, [])
    assert not buf.unclean_start
    assert buf.next_seq("telemetry") == buf.take("telemetry", 10**6)[-1].seq + 1
    buf.close()


def test_old_batches_expire_on_a_really_full_disk(small_fs: Path) -> None:
    rng = random.Random(7)
    clock = FakeClock(1_700_000_000_000)
    dropped: list[int] = []
    buf = DiskBuffer(small_fs / "buf", {"telemetry": Budget(10**12, max_age_s=60), "control": Budget(10**9)},
                     sync="normal", clock_ms=clock, on_dropped=lambda rec, reason: dropped.append(rec.seq))
    buf.open()
    while buf.disk_full_events == 0:
        buf.append("telemetry", "t", lambda seq: rng.randbytes(BATCH_BYTES), 10)
    depth = buf.depth("telemetry")
    clock.advance(61_000)
    assert buf.expire() == depth  # every delete got through, oldest first
    assert dropped[-depth:] == sorted(dropped[-depth:]) and buf.depth("telemetry") == 0
    buf.append("telemetry", "t", lambda seq: rng.randbytes(BATCH_BYTES), 10)  # and there is room again
    buf.close()
