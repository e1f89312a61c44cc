from __future__ import annotations

from bridge.protocol.model import Reading
from gateway.config import AlertSpec, DeadbandSpec, Range, RuleSpec
from gateway.process.rules import deadband, sample, threshold, valid
from gateway.process.rules.engine import DEADBAND, OUT_OF_RANGE, SAMPLED, RuleEngine


def test_valid_range() -> None:
    spec = Range(min=-40, max=85)
    assert valid.within(spec, -40) and valid.within(spec, 85)
    assert not valid.within(spec, 85.01) and not valid.within(spec, -41)
    assert valid.within(Range(), 1e300)


def test_threshold_raises_once_and_clears_with_hysteresis() -> None:
    spec = AlertSpec(max=30, hysteresis=1)
    active: frozenset[threshold.Level] = frozenset()
    states: list[str] = []
    for v in [29, 31, 30.5, 31, 29.5, 29.0, 31]:
        active, changes = threshold.evaluate(spec, active, v)
        states.extend(f"{c.level}:{c.state}@{v}" for c in changes)
    assert states == ["max:raised@31", "max:cleared@29.0", "max:raised@31"]


def test_threshold_min_level() -> None:
    spec = AlertSpec(min=2, hysteresis=0.5)
    active, ch = threshold.evaluate(spec, frozenset(), 1.9)
    assert [c.state for c in ch] == ["raised"] and active == {"min"}
    active, ch = threshold.evaluate(spec, active, 2.4)
    assert ch == ()
    active, ch = threshold.evaluate(spec, active, 2.5)
    assert [c.state for c in ch] == ["cleared"] and active == frozenset()


def test_deadband_absolute_percent_and_silence() -> None:
    spec = DeadbandSpec(abs=0.5, max_silence_s=10)
    assert deadband.passes(spec, None, 0, 1.0)
    assert not deadband.passes(spec, (0, 1.0), 1000, 1.4)
    assert deadband.passes(spec, (0, 1.0), 1000, 1.5)
    assert deadband.passes(spec, (0, 1.0), 10_000, 1.0)  # flat, but silent too long
    pct = DeadbandSpec(pct=10)
    assert not deadband.passes(pct, (0, 100.0), 1, 109)
    assert deadband.passes(pct, (0, 100.0), 1, 110)
    zero = DeadbandSpec()
    assert not deadband.passes(zero, (0, 5.0), 1, 5.0) and deadband.passes(zero, (0, 5.0), 1, 5.01)


def test_sample_every() -> None:
    assert sample.passes(10, None, 0)
    assert not sample.passes(10, 0, 9_999)
    assert sample.passes(10, 0, 10_000)
    assert sample.passes(0, 0, 1)


def r(v: float, ts: int = 0, dev: str = "room-1", metric: str = "temp") -> Reading:
    return Reading(dev, metric, ts, v, None)


def test_engine_first_matching_rule_and_passthrough() -> None:
    eng = RuleEngine([
        RuleSpec(devices="room-*", metrics="temp", valid=Range(min=-40, max=85)),
        RuleSpec(devices="*", metrics="temp", valid=Range(min=0, max=1)),
    ])
    assert eng.process(r(50)).verdict == "pass"
    assert eng.process(r(50, dev="freezer-1")).reason == OUT_OF_RANGE
    assert eng.process(r(1e9, metric="other")).verdict == "pass"
    assert eng.process(r(100)).verdict == "dropped"


def test_engine_alert_still_forwards_the_reading_and_deadband_filters() -> None:
    eng = RuleEngine([RuleSpec(alert=AlertSpec(max=30), deadband=DeadbandSpec(abs=1, max_silence_s=60))])
    first = eng.process(r(20, 0))
    assert first.verdict == "pass" and not first.alerts
    small = eng.process(r(20.5, 1000))
    assert small.verdict == "filtered" and small.reason == DEADBAND
    hot = eng.process(r(31, 2000))
    assert hot.verdict == "pass" and [a.change.state for a in hot.alerts] == ["raised"]
    hot2 = eng.process(r(31.2, 3000))
    assert hot2.verdict == "filtered" and not hot2.alerts  # no second alert, deadband filters


def test_engine_alert_on_filtered_reading_is_not_lost() -> None:
    eng = RuleEngine([RuleSpec(alert=AlertSpec(max=30), sample_every_s=10)])
    assert eng.process(r(20, 0)).verdict == "pass"
    out = eng.process(r(40, 1000))
    assert out.verdict == "filtered" and out.reason == SAMPLED and len(out.alerts) == 1


def test_engine_replace_rules_keeps_state() -> None:
    eng = RuleEngine([RuleSpec(alert=AlertSpec(max=30))])
    assert eng.process(r(31)).alerts
    eng.replace_rules([RuleSpec(alert=AlertSpec(max=35))])
    out = eng.process(r(32))
    assert [a.change.state for a in out.alerts] == ["cleared"]
