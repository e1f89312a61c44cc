"""The rule engine resolves each series' rule once (and again when the rules are replaced) and
shares the outcomes that carry no alert: for any sequence of readings and rule replacements it
decides exactly what a rule engine that resolves the first matching rule for every reading does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol.model import Reading
from gateway.config import AlertSpec, DeadbandSpec, Range, RuleSpec
from gateway.process.rules import deadband, sample, threshold, valid
from gateway.process.rules.engine import DEADBAND, OUT_OF_RANGE, SAMPLED, Alert, Outcome, RuleEngine


@dataclass
class _State:
    active: frozenset[threshold.Level] = frozenset()
    last_sent: tuple[int, float] | None = None
    last_sampled: int | None = None


@dataclass
class _Reference:
    """The rule semantics written plainly: first matching rule looked up for every reading."""

    rules: list[RuleSpec]
    state: dict[tuple[str, str], _State] = field(default_factory=dict)

    def process(self, r: Reading) -> Outcome:
        st = self.state.setdefault((r.device, r.metric), _State())
        rule = next((x for x in self.rules if x.matches(r.device, r.metric)), None)
        if rule is None:
            return Outcome("pass")
        if rule.valid is not None and not valid.within(rule.valid, r.value):
            return Outcome("dropped", OUT_OF_RANGE)
        alerts: tuple[Alert, ...] = ()
        if rule.alert is not None:
            st.active, changes = threshold.evaluate(rule.alert, st.active, r.value)
            alerts = tuple(Alert(r, c, rule.name) for c in changes)
        if rule.deadband is not None and not deadband.passes(rule.deadband, st.last_sent, r.ts_ms, r.value):
            return Outcome("filtered", DEADBAND, alerts)
        if rule.sample_every_s > 0:
            if not sample.passes(rule.sample_every_s, st.last_sampled, r.ts_ms):
                return Outcome("filtered", SAMPLED, alerts)
            st.last_sampled = r.ts_ms
        if rule.deadband is not None:
            st.last_sent = (r.ts_ms, r.value)
        return Outcome("pass", None, alerts)


rules = st.builds(
    RuleSpec,
    name=st.sampled_from(["a", "b", "c"]),
    devices=st.sampled_from(["*", "d1", "d[12]", "x*"]),
    metrics=st.sampled_from(["*", "t", "h", "?"]),
    valid=st.one_of(st.none(), st.builds(Range, min=st.sampled_from([None, -10.0, 0.0]),
                                         max=st.sampled_from([None, 50.0, 100.0]))),
    alert=st.one_of(st.none(), st.builds(AlertSpec, min=st.sampled_from([None, 5.0, 10.0]),
                                         max=st.sampled_from([None, 30.0, 40.0]),
                                         hysteresis=st.sampled_from([0.0, 0.5, 3.0]))),
    deadband=st.one_of(st.none(), st.builds(DeadbandSpec, abs=st.sampled_from([0.0, 0.2, 2.0]),
                                            pct=st.sampled_from([0.0, 5.0]),
                                            max_silence_s=st.sampled_from([1.0, 30.0]))),
    sample_every_s=st.sampled_from([0.0, 0.0, 2.0, 10.0]),
)
reading = st.tuples(st.sampled_from(["d1", "d2", "x9"]), st.sampled_from(["t", "h", "tt"]),
                    st.integers(min_value=-1_000, max_value=20_000),
                    st.one_of(st.floats(min_value=-20, max_value=120), st.sampled_from([-0.0, 5.0, 30.0, 30.5])))
steps = st.lists(st.one_of(reading, st.lists(rules, max_size=4)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(st.lists(rules, max_size=4), steps)
def test_cached_rules_decide_as_a_lookup_per_reading(first: list[RuleSpec], plan: list[Any]) -> None:
    engine, reference = RuleEngine(list(first)), _Reference(list(first))
    ts = 1_700_000_000_000
    for step in plan:
        if isinstance(step, list):  # a config push replaces the rules
            engine.replace_rules(list(step))
            reference.rules = list(step)
            continue
        device, metric, dt_ms, value = step
        ts += dt_ms
        r = Reading(device, metric, ts, value, None)
        assert engine.process(r) == reference.process(r), r
