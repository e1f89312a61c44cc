"""Any sequence of operations gives the same results on the disk buffer (write-behind off and on)
as on the in-memory model: what is taken, in which order and with which replay flag, what an ack
deletes, what is dropped and why, and every count, across budget drops, expiry and reopening."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bridge.uplink.store import LANES, Lane, Record, Source
from gateway.store.buffer import Budget, DiskBuffer
from tests.unit.store.kits import Kit, Store, clock_ms

TELEMETRY_BUDGET = 1500  # a handful of records: budget drops happen often
CONTROL_BUDGET = 2000  # never dropped for capacity, only flagged
MAX_AGE_S = 100.0
lanes = st.sampled_from(LANES)
SOURCES: tuple[Source, ...] = ("any", "live", "backlog")
sources = st.sampled_from(SOURCES)


def view(rec: Record) -> tuple[str, int, str, bytes, int, int, bool]:
    return rec.lane, rec.seq, rec.topic, rec.payload, rec.readings, rec.created_ms, rec.replay


class DiskAgreesWithModel(RuleBasedStateMachine):
    write_behind = False
    window = False  # a buffer that keeps a single record per lane in memory

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="store-model-"))
        self.clock = clock_ms()
        self.dropped: dict[str, list[tuple[str, int, str]]] = {"model": [], "disk": []}
        self.model_kit = Kit("memory", self.tmp / "unused")
        kind = "disk-window" if self.window else "disk"
        self.disk_kit = Kit(f"{kind}-write-behind" if self.write_behind else kind, self.tmp / "buffer")
        budgets: dict[Lane, Budget] = {"telemetry": Budget(TELEMETRY_BUDGET, MAX_AGE_S),
                                       "control": Budget(CONTROL_BUDGET, MAX_AGE_S)}
        self.model = self.model_kit.open(budgets, self.clock, self._dropped("model"))
        self.disk = self.disk_kit.open(budgets, self.clock, self._dropped("disk"))
        self.keys: dict[tuple[str, int], tuple[str, str]] = {}  # (lane, seq) -> (model key, disk key)
        self.leased: list[tuple[str, int]] = []

    def _dropped(self, which: str) -> Callable[[Record, str], None]:
        return lambda rec, reason: self.dropped[which].append((rec.lane, rec.seq, reason))

    def both(self) -> tuple[Store, Store]:
        return self.model, self.disk

    @rule(lane=lanes, size=st.integers(1, 400), readings=st.integers(0, 20))
    def append(self, lane: Lane, size: int, readings: int) -> None:
        got = [store.append(lane, f"edge/gw/{lane}", lambda seq: bytes([seq % 251]) * size, readings)
               for store in self.both()]
        assert view(got[0]) == view(got[1])
        self.keys[lane, got[0].seq] = (got[0].key, got[1].key)

    @rule(lane=lanes, limit=st.integers(1, 5), source=sources)
    def take(self, lane: Lane, limit: int, source: Source) -> None:
        got = [store.take(lane, limit, source) for store in self.both()]
        assert [view(r) for r in got[0]] == [view(r) for r in got[1]]
        self.leased += [(r.lane, r.seq) for r in got[0]]

    @precondition(lambda self: self.leased)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ident = data.draw(st.sampled_from(self.leased))
        self.leased.remove(ident)
        model_key, disk_key = self.keys[ident]
        self.model.release(model_key)
        self.disk.release(disk_key)

    @rule()
    def release_all(self) -> None:
        assert self.model.release_all() == self.disk.release_all() == len(self.leased)
        self.leased.clear()

    @rule()
    def mark_backlog(self) -> None:
        self.model.mark_backlog()
        self.disk.mark_backlog()

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        idents = data.draw(st.lists(st.sampled_from(sorted(self.keys)), max_size=4, unique=True))
        model = self.model.ack(*(self.keys[i][0] for i in idents))
        disk = self.disk.ack(*(self.keys[i][1] for i in idents))
        assert sorted((r.lane, r.seq, r.readings) for r in model.values()) == \
            sorted((r.lane, r.seq, r.readings) for r in disk.values())
        self.leased = [i for i in self.leased if i not in idents]

    @rule(seconds=st.floats(0, 80))
    def time_passes_and_records_expire(self, seconds: float) -> None:
        self.clock.now += int(seconds * 1000)
        assert self.model.expire() == self.disk.expire()

    @rule()
    def reopen(self) -> None:
        self.model = self.model_kit.reopen(self.model)
        self.disk = self.disk_kit.reopen(self.disk)
        self.leased.clear()

    @precondition(lambda self: self.write_behind)
    @rule(up=st.booleans())
    def link_changes(self, up: bool) -> None:  # write-behind's own business: nothing observable changes
        assert isinstance(self.disk, DiskBuffer)
        self.disk.set_link_up(up)

    @invariant()
    def counts_and_drops_agree(self) -> None:
        assert self.dropped["model"] == self.dropped["disk"]
        for lane in LANES:
            for source in SOURCES:
                assert self.model.available(lane, source) == self.disk.available(lane, source)
                assert self.model.in_flight(lane, source) == self.disk.in_flight(lane, source)
            assert self.model.depth(lane) == self.disk.depth(lane)
            assert self.model.readings(lane) == self.disk.readings(lane)
            assert self.model.bytes_used(lane) == self.disk.bytes_used(lane)
            assert self.model.next_seq(lane) == self.disk.next_seq(lane)
        assert self.model.control_over_budget == self.disk.control_over_budget

    @invariant()
    def every_record_is_either_available_or_in_flight(self) -> None:
        for store in self.both():
            for lane in LANES:
                assert store.depth(lane) == store.available(lane) + store.in_flight(lane)
                assert store.available(lane) == store.available(lane, "live") + store.available(lane, "backlog")
                assert store.in_flight(lane) == store.in_flight(lane, "live") + store.in_flight(lane, "backlog")
            if not any(store.in_flight(lane) for lane in LANES):
                assert store.oldest_lease_s() == 0.0

    def teardown(self) -> None:
        self.disk_kit.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class DiskWithWriteBehindAgreesWithModel(DiskAgreesWithModel):
    write_behind = True


class SmallWindowAgreesWithModel(DiskAgreesWithModel):
    window = True


class SmallWindowWithWriteBehindAgreesWithModel(DiskAgreesWithModel):
    window = True
    write_behind = True


TestDiskAgreesWithModel = DiskAgreesWithModel.TestCase
TestDiskAgreesWithModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestDiskWithWriteBehindAgreesWithModel = DiskWithWriteBehindAgreesWithModel.TestCase
TestDiskWithWriteBehindAgreesWithModel.settings = TestDiskAgreesWithModel.settings
TestSmallWindowAgreesWithModel = SmallWindowAgreesWithModel.TestCase
TestSmallWindowAgreesWithModel.settings = TestDiskAgreesWithModel.settings
TestSmallWindowWithWriteBehindAgreesWithModel = SmallWindowWithWriteBehindAgreesWithModel.TestCase
TestSmallWindowWithWriteBehindAgreesWithModel.settings = TestDiskAgreesWithModel.settings
