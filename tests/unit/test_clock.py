"""Clock sanity: an unsynced gateway clock (no RTC, NTP not yet synced) never rejects good device data."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.model import Reading
from gateway.config import DecodeSection, GatewayConfig, TopicsSection
from gateway.process import decode as d
from gateway.process.clock import FLOOR_DATE, ClockGuard, date_ms
from tests.support import FakeClock

FLOOR = dt.date(2026, 1, 1)
FLOOR_MS = date_ms(FLOOR)
BOOT_MS = 60_000  # a Pi without RTC after boot: 1970-01-01 00:01
REAL_MS = FLOOR_MS + 300 * 86_400_000  # what the device (synced itself) stamps


def guard(wall_s: float) -> tuple[ClockGuard, FakeClock[float], FakeClock[float]]:
    """A guard reading a fake wall clock (at ``wall_s``) and a fake monotonic clock."""
    wall, mono = FakeClock(wall_s), FakeClock(100.0)
    return ClockGuard(FLOOR, wall=wall, mono=mono), wall, mono


def decoder(clock: ClockGuard | None, **limits: object) -> d.Decoder:
    return d.Decoder(TopicsSection(), DecodeSection(**limits), clock)


def test_a_clock_before_the_floor_date_is_unsynced_and_device_timestamps_are_kept() -> None:
    g, _, _ = guard(BOOT_MS / 1000)
    assert not g.synced
    msg = decoder(g).decode("devices/a/telemetry", json.dumps({"ts": REAL_MS, "t": 1, "h": 2}).encode(), BOOT_MS)
    assert isinstance(msg, d.Telemetry)
    assert msg.readings == [Reading("a", "t", REAL_MS, 1.0), Reading("a", "h", REAL_MS, 2.0)]
    assert g.window_not_judged == 2
    # the same message against a synced clock far from the device's ts is out of window
    synced, _, _ = guard(REAL_MS / 1000 + 30 * 86_400)
    far = decoder(synced).decode("devices/a/telemetry", json.dumps({"ts": REAL_MS, "t": 1}).encode(),
                                 REAL_MS + 30 * 86_400_000)
    assert isinstance(far, d.Rejection) and far.reason == d.TS_OUT_OF_WINDOW
    assert synced.window_not_judged == 0


def test_readings_without_ts_get_the_receive_time_and_are_counted_while_unsynced() -> None:
    g, _, _ = guard(BOOT_MS / 1000)
    dec = decoder(g)
    msg = dec.decode("devices/a/telemetry", b'{"t": 1, "h": 2}', BOOT_MS)
    bare = dec.decode("devices/a/telemetry/t", b"3", BOOT_MS)
    assert isinstance(msg, d.Telemetry) and [r.ts_ms for r in msg.readings] == [BOOT_MS, BOOT_MS]
    assert isinstance(bare, d.Telemetry) and bare.readings[0].ts_ms == BOOT_MS
    assert g.receive_stamped_unsynced == 3
    assert g.snapshot()["receive_stamped_unsynced"] == 3 and g.snapshot()["synced"] is False


def test_a_device_timestamp_before_the_floor_date_is_still_out_of_window() -> None:
    g, _, _ = guard(BOOT_MS / 1000)
    old = decoder(g).decode("devices/a/telemetry", b'{"ts": 1000, "t": 1}', BOOT_MS)
    assert isinstance(old, d.Rejection) and old.reason == d.TS_OUT_OF_WINDOW
    clamped = decoder(g, out_of_window="clamp").decode("devices/a/telemetry", b'{"ts": 1000, "t": 1}', BOOT_MS)
    assert isinstance(clamped, d.Telemetry) and clamped.readings[0].ts_ms == BOOT_MS


def test_ntp_stepping_the_clock_is_a_counted_jump_and_the_clock_becomes_synced(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.process.clock")
    g, wall, mono = guard(BOOT_MS / 1000)
    assert "not synced yet" in caplog.text
    wall.advance(1.0)
    mono.advance(1.0)
    g.refresh()
    assert (g.synced, g.jumps) == (False, 0)
    wall.now = REAL_MS / 1000  # NTP steps the wall clock while one second passes
    mono.advance(1.0)
    g.refresh()
    assert g.synced and g.jumps == 1
    assert "jumped by" in caplog.text and "is synced" in caplog.text
    assert g.last_jump_s is not None and abs(g.last_jump_s - (REAL_MS - BOOT_MS - 2000) / 1000) < 0.01
    wall.advance(30.0)  # ordinary time passing is no jump
    mono.advance(30.0)
    g.refresh()
    assert g.jumps == 1
    # once synced, device timestamps are judged again
    late = decoder(g).decode("devices/a/telemetry", json.dumps({"ts": BOOT_MS + FLOOR_MS, "t": 1}).encode(),
                             int(wall() * 1000))
    assert isinstance(late, d.Rejection) and late.reason == d.TS_OUT_OF_WINDOW


def test_a_sync_file_keeps_the_clock_unsynced_until_it_exists() -> None:
    present: set[str] = set()
    g = ClockGuard(FLOOR, sync_file="/run/synced", wall=FakeClock(REAL_MS / 1000), mono=FakeClock(100.0),
                   exists=lambda p: p in present)
    assert not g.synced and not g.trusted(REAL_MS)
    present.add("/run/synced")
    g.refresh()
    assert g.synced and g.trusted(REAL_MS)


@given(ts_ms=st.integers(FLOOR_MS, 2**53 - 1), recv_ms=st.integers(0, FLOOR_MS - 1))
def test_every_device_ts_after_the_floor_is_kept_exactly_while_the_receive_time_is_before_it(
        ts_ms: int, recv_ms: int) -> None:
    g, _, _ = guard(recv_ms / 1000)
    msg = decoder(g).decode("devices/a/telemetry", json.dumps({"ts": ts_ms, "t": 1}).encode(), recv_ms)
    assert isinstance(msg, d.Telemetry) and msg.readings[0].ts_ms == ts_ms


def test_clock_config_defaults_to_the_baked_floor_and_reads_toml_dates() -> None:
    assert GatewayConfig().clock.floor_date == FLOOR_DATE
    cfg = GatewayConfig.model_validate({"clock": {"floor_date": dt.date(2026, 2, 3), "sync_file": "/x"}})
    assert cfg.clock.floor_date == dt.date(2026, 2, 3) and cfg.clock.sync_file == "/x"
