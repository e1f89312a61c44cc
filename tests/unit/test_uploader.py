"""The upload source (gateway/files/uploader.py) driven through its BulkSource port and its receipt
handler, with a real uploads.db and real files: order, resume after a restart with the resend flag,
receipts, max attempts, manifest repeats and expiry (a stepped clock), bad receipts counted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.mqtt.types import Message
from bridge.protocol.file_topics import FileTopics
from bridge.protocol.files import Receipt, decode_chunk, decode_manifest, encode_receipt
from bridge.protocol.records import FileStatus
from bridge.transfer.plan import plan_file
from bridge.uplink.bulk import BulkItem
from gateway.files.counters import UploadCounters
from gateway.files.receipts import ReceiptHandler
from gateway.files.uploader import FIRST_REPEAT_S, Uploader
from gateway.files.uploads_db import UploadsDb, new_row
from tests.support import FakeClock, eventually

TOPICS = FileTopics("edge/gw")
CHUNK = 1024


class Side:
    """An uploader over ``tmp`` with what it reported."""

    def __init__(self, tmp: Path, clock: FakeClock[float], max_attempts: int = 3, keep_sent_s: float = 3600) -> None:
        self.tmp = tmp
        self.statuses: list[FileStatus] = []
        self.gone: list[tuple[str, str]] = []
        self.wakes = 0
        self.db = UploadsDb(tmp / "uploads.db")
        self.db.open()
        self.up = Uploader(self.db, tmp / "sending", TOPICS, UploadCounters(), max_attempts=max_attempts,
                           keep_sent_s=keep_sent_s, on_status=self.statuses.append, wake=self._wake,
                           on_gone=lambda path, name, reason: self.gone.append((name, reason)), clock=clock)
        self.up.start()
        self.receipts = ReceiptHandler(TOPICS, self.up)

    def _wake(self) -> None:
        self.wakes += 1

    def add(self, name: str, data: bytes) -> str:
        src = self.tmp / name
        src.write_bytes(data)
        row = new_row(plan_file(src, chunk_size=CHUNK))
        self.db.insert(row)
        os.replace(src, self.tmp / "sending" / row.id)
        self.up.add(row)
        return row.id

    def send_all(self, limit: int = 100, ok: bool = True) -> list[BulkItem]:
        items = self.up.take(limit)
        for item in items:
            self.up.settle(item.key, ok)
        return items

    def receipt(self, receipt: Receipt, topic_id: str | None = None) -> None:
        self.receipts(Message(TOPICS.receipt("up", topic_id or receipt.id), encode_receipt(receipt), 1, False))

    def states(self) -> list[str]:
        return [s.state for s in self.statuses]


def chunks(items: list[BulkItem]) -> list[tuple[int, bool]]:
    return [(c.index, c.resend) for c in (decode_chunk(i.payload) for i in items if i.topic.endswith("/chunk"))]


async def test_manifest_first_then_chunks_in_order_then_sent_and_stored(tmp_path: Path) -> None:
    side = Side(tmp_path, FakeClock(0.0))
    file_id = side.add("a.bin", os.urandom(3 * CHUNK + 5))
    items = side.send_all()
    assert items[0].topic == TOPICS.manifest("up", file_id) and decode_manifest(items[0].payload).chunks == 4
    assert chunks(items) == [(0, False), (1, False), (2, False), (3, False)]
    assert side.states() == ["sent"] and side.up.available() == 0
    side.receipt(Receipt(file_id, "stored"))
    assert side.states() == ["sent", "stored"]
    assert not (tmp_path / "sending" / file_id).exists() and side.up.transfers == {}
    side.receipt(Receipt(file_id, "stored"))  # repeated: the transfer is over, counted as late
    assert side.receipts.late == 1 and side.states() == ["sent", "stored"]
    assert side.db.listing()[0]["state"] == "stored"


async def test_a_restart_goes_on_from_the_first_unacknowledged_chunk_with_the_resend_flag(tmp_path: Path) -> None:
    side = Side(tmp_path, FakeClock(0.0))
    file_id = side.add("a.bin", os.urandom(6 * CHUNK))
    side.send_all(limit=3)  # manifest, chunks 0 and 1 acknowledged
    in_flight = side.up.take(2)  # chunks 2 and 3 out when the process stops
    assert chunks(in_flight) == [(2, False), (3, False)]
    side.up.release_all()
    side.db.close()
    again = Side(tmp_path, FakeClock(0.0))
    items = again.send_all()
    assert chunks(items) == [(2, True), (3, True), (4, False), (5, False)]  # no manifest: it was acknowledged
    assert again.states() == ["sent"] and file_id in again.up.transfers


async def test_missing_receipt_sends_those_chunks_and_the_manifest_again(tmp_path: Path) -> None:
    side = Side(tmp_path, FakeClock(0.0))
    file_id = side.add("a.bin", os.urandom(5 * CHUNK))
    side.send_all()
    side.receipt(Receipt(file_id, "missing", (1, 3), manifest=True))
    items = side.send_all()
    assert items[0].topic.endswith("/manifest") and chunks(items) == [(1, True), (3, True)]
    assert side.states() == ["sent", "sent"]
    assert side.up.counters.chunks_resent == 2


async def test_failed_receipt_and_max_attempts_fail_the_transfer(tmp_path: Path) -> None:
    side = Side(tmp_path, FakeClock(0.0), max_attempts=2)
    refused = side.add("a.bin", os.urandom(2 * CHUNK))
    side.send_all(limit=1)
    side.receipt(Receipt(refused, "failed", reason="too_large"))
    assert side.states() == ["failed"] and side.statuses[0].reason == "too_large"
    assert side.gone == [("a.bin", "too_large")]
    stuck = side.add("b.bin", os.urandom(2 * CHUNK))
    side.send_all(limit=1)  # the manifest
    for _ in range(2):
        side.send_all(limit=1, ok=False)  # chunk 0 fails twice
    assert side.send_all() == []
    assert side.states() == ["failed", "failed"] and "chunk 0 was sent 2 times" in side.statuses[1].reason
    assert stuck not in side.up.transfers and side.up.counters.files_failed == 2


async def test_a_manifest_never_acknowledged_fails_after_max_attempts_and_a_refusal_at_once(tmp_path: Path) -> None:
    side = Side(tmp_path, FakeClock(0.0), max_attempts=3)
    side.add("a.bin", os.urandom(2 * CHUNK))
    sends = 0
    while side.up.transfers and sends < 10:  # before: the manifest went again after every failure, forever
        sends += len(side.send_all(limit=1, ok=False))
    assert sends == 3 and side.states() == ["failed"]
    assert "manifest was sent 3 times" in side.statuses[0].reason and side.gone[0][0] == "a.bin"
    side.add("b.bin", os.urandom(2 * CHUNK))
    (item,) = side.up.take(1)
    side.up.reject(item.key, "refused by the broker: Not authorized (0x87)")
    assert side.states() == ["failed", "failed"] and side.up.available() == 0
    assert side.statuses[1].reason == "the manifest refused by the broker: Not authorized (0x87)"
    side.add("c.bin", os.urandom(2 * CHUNK))
    side.send_all(limit=2)  # the manifest and chunk 0
    (chunk,) = side.up.take(1)
    side.up.reject(chunk.key, "refused by the broker: Packet too large (0x95)")
    assert side.statuses[2].reason == "chunk 1 refused by the broker: Packet too large (0x95)"
    assert side.up.counters.files_failed == 3 and side.up.transfers == {}


async def test_sent_file_repeats_its_manifest_doubling_then_expires_set_aside_and_reported(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    side = Side(tmp_path, clock, keep_sent_s=3600)
    file_id = side.add("a.bin", os.urandom(CHUNK))
    side.send_all()
    repeats = []
    for _ in range(500):  # 2500 s
        clock.advance(5.0)
        side.up.tick()
        if side.up.available():
            repeats.append(clock.now)
            assert [i.topic for i in side.send_all()] == [TOPICS.manifest("up", file_id)]
    gaps = [b - a for a, b in zip([0.0, *repeats], repeats, strict=False)]
    assert gaps[:5] == [FIRST_REPEAT_S, 60.0, 120.0, 240.0, 480.0] and max(gaps) == 600.0
    row = side.up.transfers[file_id].row
    assert row.sent_ms is not None
    row.sent_ms -= 3601 * 1000  # as if sent more than keep_sent_s ago
    side.up.tick()
    assert side.up.counters.files_expired == 1 and side.up.counters.files_failed == 0
    assert side.db.listing()[0]["state"] == "expired"
    # never deleted silently: set aside (it may be the only copy) and reported as failed, reason expired
    assert side.gone == [("a.bin", "expired")]
    assert (side.statuses[-1].state, side.statuses[-1].reason) == ("failed", "expired")


async def test_a_stored_receipt_with_another_sha256_keeps_the_file(tmp_path: Path) -> None:
    side = Side(tmp_path, FakeClock(0.0))
    file_id = side.add("a.bin", os.urandom(2 * CHUNK))
    side.send_all()
    side.receipt(Receipt(file_id, "stored", sha256="0" * 64))
    assert dict(side.up.counters.receipts_rejected) == {"hash_mismatch": 1}
    assert file_id in side.up.transfers and (tmp_path / "sending" / file_id).exists()
    side.receipt(Receipt(file_id, "stored", sha256=side.up.transfers[file_id].row.manifest.sha256))
    assert side.states() == ["sent", "stored"] and not (tmp_path / "sending" / file_id).exists()


async def test_the_next_chunk_is_read_ahead_in_a_thread_and_taken_when_ready(tmp_path: Path) -> None:
    side = Side(tmp_path, FakeClock(0.0))
    data = os.urandom(3 * CHUNK)
    side.add("a.bin", data)
    side.send_all(limit=2)  # the manifest and chunk 0; chunk 1 is read ahead
    counters = side.up.counters
    for index in (1, 2):
        await eventually(side.up.prefetch.ready)
        (item,) = side.send_all(limit=1)
        assert decode_chunk(item.payload).data == data[index * CHUNK:(index + 1) * CHUNK]
    assert counters.chunks_read_ahead == 2 and counters.chunks_sent == 3 and side.states() == ["sent"]
    side.up.prefetch.close()


@pytest.mark.parametrize(("topic_id", "payload", "reason"), [
    (None, b"{", "malformed"),
    ("0" * 32, encode_receipt(Receipt("1" * 32, "stored")), "malformed"),  # topic and body disagree
    (None, encode_receipt(Receipt("2" * 32, "stored")), "unknown_file"),
])
async def test_bad_receipts_are_counted_by_reason(tmp_path: Path, topic_id: str | None, payload: bytes,
                                                  reason: str) -> None:
    side = Side(tmp_path, FakeClock(0.0))
    side.receipts(Message(TOPICS.receipt("up", topic_id or "2" * 32), payload, 1, False))
    assert dict(side.up.counters.receipts_rejected) == {reason: 1}
