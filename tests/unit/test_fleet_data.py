"""The fleet load generator's data: every message is what a real gateway sends (the real decoders
accept it), the manifest names exactly the unique messages, and re-sent ones never change it."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cloud.fleet import planned
from bridge.cloud.fleet_data import Plan, Send, fleet
from bridge.cloud.fleet_manifest import MASK64, Manifest, Observed, batch_checksum, compare, value_text
from bridge.protocol.codec import decode_batch, is_replay
from bridge.protocol.model import Reading
from bridge.protocol.records import decode_control, parse_control
from bridge.protocol.topics import CloudTopics, valid_id

T0 = 1_700_000_000_000


def make_plan(seed: int, gateways: int = 3, devices: int = 2, batch: int = 7, *, duplicates: float = 0.0,
              replays: float = 0.0, alerts: float = 0.0, backlog: float = 0.0) -> Plan:
    return Plan(fleet(gateways, devices, seed=seed, start_ms=T0), random.Random(seed), batch_readings=batch,
                duplicates=duplicates, replays=replays, alerts=alerts, backlog=backlog)


def run(plan: Plan, turns: int) -> list[Send]:
    return [*itertools.islice(plan, turns), *plan.rest()]


def decoded_manifest(sends: list[Send]) -> Manifest:
    """The manifest rebuilt from the payloads alone, through the real decoders, first copy of each key."""
    seen: set[tuple[str, str, str, int]] = set()
    out = Manifest()
    for s in sorted(sends, key=lambda s: (s.message.lane, s.message.gateway, s.message.seq)):
        if s.message.lane == "telemetry":
            b = decode_batch(s.payload)
            key = (b.gateway, b.stream, "telemetry", b.seq)
            if key not in seen:
                out.add_batch(b.gateway, b.stream, b.seq, b.readings)
        else:
            st_ = parse_control(decode_control(s.payload)).stamp
            key = (st_.gateway, st_.stream, "control", st_.seq)
            if key not in seen:
                out.add_control(st_.gateway, st_.stream, st_.seq)
        seen.add(key)
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), batch=st.integers(1, 60), turns=st.integers(1, 80))
def test_every_batch_decodes_to_the_readings_it_was_made_of(seed: int, batch: int, turns: int) -> None:
    plan = make_plan(seed, batch=batch, alerts=0.2)
    for s in run(plan, turns):
        m = s.message
        if m.lane == "telemetry":
            b = decode_batch(s.payload)
            assert (b.gateway, b.stream, b.seq, len(b.readings)) == (m.gateway, m.stream, m.seq, batch)
            assert sorted(b.readings) == sorted(m.readings)  # the envelope groups them by series
            assert m.topic == CloudTopics(m.gateway).telemetry
        else:
            rec = parse_control(decode_control(s.payload))
            assert (rec.kind, rec.stamp.gateway, rec.stamp.seq) == ("alert", m.gateway, m.seq)
            assert m.topic == CloudTopics(m.gateway).alerts


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), turns=st.integers(1, 120), dup=st.floats(0, 1), rep=st.floats(0, 1),
       held=st.floats(0, 1))
def test_the_manifest_is_what_the_payloads_hold_once_each(seed: int, turns: int, dup: float, rep: float,
                                                           held: float) -> None:
    plan = make_plan(seed, duplicates=dup, replays=rep, alerts=0.3, backlog=held)
    sends = run(plan, turns)
    rebuilt = decoded_manifest(sends)
    assert rebuilt.to_json() | {"sent": {}} == plan.manifest.to_json() | {"sent": {}}
    assert plan.manifest.batches == plan.counts["batch"] + plan.counts["backlog"]
    # the replay flag is set exactly on replays and late batches
    flagged = [is_replay(s.payload) for s in sends if s.message.lane == "telemetry"]
    assert flagged == [s.kind in ("replay", "backlog") for s in sends if s.message.lane == "telemetry"]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), turns=st.integers(1, 60))
def test_duplicates_and_replays_never_change_the_manifest(seed: int, turns: int) -> None:
    """Same seed for the data: with or without re-sends, the same unique batches and checksum."""
    plain = make_plan(seed)
    noisy = make_plan(seed, duplicates=1.0, replays=1.0)  # a duplicate and a replay after every batch
    run(plain, turns)
    sends = run(noisy, turns * 3)
    assert noisy.counts["duplicate"] == noisy.counts["replay"] == turns
    sends = [s for s in sends if s.kind == "batch"]
    assert len(sends) == turns
    expected = Manifest()
    for s in sends:
        expected.add_batch(s.message.gateway, s.message.stream, s.message.seq, list(s.message.readings))
    assert expected.checksum == plain.manifest.checksum
    assert set(expected.keys()) == set(plain.manifest.keys())


def test_gateways_have_valid_distinct_ids_and_streams() -> None:
    gws = fleet(200, 1, seed=7, start_ms=T0)
    assert [g.id for g in gws[:2]] == ["gw-0001", "gw-0002"]
    assert all(valid_id(g.id) and valid_id(g.stream) for g in gws)
    assert len({g.stream for g in gws}) == 200


def test_a_new_run_is_a_new_stream_with_the_same_data() -> None:
    a = fleet(3, 2, seed=9, start_ms=T0, streams=random.Random(1))
    b = fleet(3, 2, seed=9, start_ms=T0, streams=random.Random(2))
    assert {g.stream for g in a}.isdisjoint(g.stream for g in b)
    assert a[0].next_batch(10).readings == b[0].next_batch(10).readings


def test_sensors_vary_slowly_and_counters_count() -> None:
    gw = fleet(1, 1, seed=3, start_ms=T0)[0]
    readings = [r for _ in range(50) for r in gw.next_batch(4).readings]
    temps = [r.value for r in readings if r.metric == "temperature"]
    energy = [r.value for r in readings if r.metric == "energy_wh"]
    assert max(abs(a - b) for a, b in itertools.pairwise(temps)) < 0.5
    assert all(b >= a for a, b in itertools.pairwise(energy)) and all(e == int(e) for e in energy)
    assert [r.seq for r in readings if r.metric == "pressure"] == list(range(1, 51))
    ts = [r.ts_ms for r in readings if r.metric == "humidity"]
    assert all(b - a == 1000 for a, b in itertools.pairwise(ts))


def test_the_checksum_changes_with_any_field_and_not_with_order() -> None:
    gw = fleet(1, 2, seed=1, start_ms=T0)[0]
    rs = list(gw.next_batch(8).readings)
    base = batch_checksum("g", "s", 1, rs)
    assert batch_checksum("g", "s", 1, list(reversed(rs))) == base
    assert batch_checksum("g", "s", 2, rs) != base
    assert batch_checksum("g", "s", 1, [rs[0]._replace(value=rs[0].value + 0.01), *rs[1:]]) != base
    assert batch_checksum("g", "s", 1, [rs[0]._replace(seq=None), *rs[1:]]) != base
    assert batch_checksum("g", "s", 1, rs + rs[:1]) != base  # a reading twice


def test_stored_values_give_the_same_text() -> None:
    observed = Observed()
    rows = [("g", "s", 1, "d", "m", 5, 2.5, None, 1), ("g", "s", 1, "d", "m", 6, -0.0, "-0.0", None),
            ("g", "s", 1, "d", "m", 7, float(2**60), str(2**60), 2)]
    observed.add_reading_rows(rows)
    readings = [Reading("d", "m", 5, 2.5, 1), Reading("d", "m", 6, -0.0), Reading("d", "m", 7, 2**60, 2)]
    assert observed.checksum == batch_checksum("g", "s", 1, readings) & MASK64
    assert (value_text(-0.0), value_text(2**60), value_text(3)) == ("-0.0", str(2**60), "3.0")


def test_compare_names_each_difference(tmp_path: Path) -> None:
    plan = make_plan(1, alerts=1.0)
    run(plan, 6)
    path = tmp_path / "m.json"
    plan.manifest.write(path)
    manifest = Manifest.read(path)
    assert manifest.to_json() == plan.manifest.to_json()
    keys = list(manifest.keys())
    right = Observed(readings=manifest.readings, checksum=manifest.checksum, alerts=manifest.alerts)
    right.keys.update(keys)
    assert compare(manifest, right) == []
    wrong = Observed(readings=manifest.readings + 1, checksum=manifest.checksum ^ 1, alerts=manifest.alerts - 1)
    wrong.keys.update(keys[1:] + keys[-1:] + [("gw-9", "s", "telemetry", 1)])
    problems = compare(manifest, wrong)
    assert problems[0] == f"1 of {len(keys)} batch keys missing from the ledger"
    assert problems[1] == "1 batch keys stored that the manifest does not name"
    assert problems[2] == "1 batch keys stored in more than one database"
    assert [p.split(":")[0] for p in problems[3:]] == ["readings", "checksum", "alerts"]
    with pytest.raises(ValueError, match="unknown manifest format 9"):
        Manifest.from_json({"format": 9})


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), batches=st.integers(1, 200), held=st.floats(0, 1))
def test_a_run_of_n_batches_makes_and_sends_exactly_n(seed: int, batches: int, held: float) -> None:
    plan = make_plan(seed, backlog=held, alerts=0.2, duplicates=0.2)
    sends = list(planned(plan, batches=batches))
    assert plan.manifest.batches == batches
    assert sum(1 for s in sends if s.kind in ("batch", "backlog")) == batches
