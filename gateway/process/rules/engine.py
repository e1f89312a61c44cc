"""Apply the configured rules to readings, keeping per-series state.

Order for each reading: validity (invalid -> dropped) -> alert thresholds (control lane; the
reading itself still flows) -> deadband -> sampling (-> filtered). A reading no rule matches
passes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bridge.protocol.model import Reading
from gateway.config import RuleSpec
from gateway.process.rules import deadband, sample, threshold, valid

Verdict = Literal["pass", "filtered", "dropped"]

# filter / drop reasons
OUT_OF_RANGE = "out_of_range"
DEADBAND = "deadband"
SAMPLED = "sampled"
FILTER_REASONS = (DEADBAND, SAMPLED)
RULE_DROP_REASONS = (OUT_OF_RANGE,)


@dataclass(frozen=True)
class Alert:
    reading: Reading
    change: threshold.AlertChange
    rule: str


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str | None = None
    alerts: tuple[Alert, ...] = ()


_PASS = Outcome("pass")


@dataclass
class _SeriesState:
    rule: int  # index into rules, -1 = none
    active: frozenset[threshold.Level] = field(default_factory=frozenset)
    last_sent: tuple[int, float] | None = None
    last_sampled: int | None = None


class RuleEngine:
    def __init__(self, rules: list[RuleSpec]) -> None:
        self._rules = rules
        self._state: dict[tuple[str, str], _SeriesState] = {}

    def _series(self, device: str, metric: str) -> _SeriesState:
        key = (device, metric)
        st = self._state.get(key)
        if st is None:
            idx = next((i for i, r in enumerate(self._rules) if r.matches(device, metric)), -1)
            st = self._state[key] = _SeriesState(idx)
        return st

    def replace_rules(self, rules: list[RuleSpec]) -> None:
        """Swap the rule set; alert and deadband state carries over where the same series applies."""
        self._rules = rules
        for (device, metric), st in self._state.items():
            st.rule = next((i for i, r in enumerate(rules) if r.matches(device, metric)), -1)

    def process(self, r: Reading) -> Outcome:
        st = self._series(r.device, r.metric)
        if st.rule < 0:
            return _PASS
        rule = self._rules[st.rule]
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
        return Outcome("pass", None, alerts) if alerts else _PASS
