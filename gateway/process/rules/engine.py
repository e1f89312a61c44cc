"""Apply the configured rules to readings, keeping per-series state.

Order for each reading: validity (invalid -> dropped) -> alert thresholds (control lane; the
reading itself still flows) -> deadband -> sampling (-> filtered). A reading no rule matches
passes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
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
PASS = _PASS
"""The outcome of a reading that passes without alerts (always this object: test it with ``is``)."""
_OUT_OF_RANGE = Outcome("dropped", OUT_OF_RANGE)
_DEADBAND = Outcome("filtered", DEADBAND)
_SAMPLED = Outcome("filtered", SAMPLED)


class _SeriesState:
    """Per-series state, with the series' rule resolved once (first match; None = no rule)."""

    __slots__ = ("active", "last_sampled", "last_sent", "rule")

    def __init__(self, rule: RuleSpec | None) -> None:
        self.rule = rule
        self.active: frozenset[threshold.Level] = frozenset()
        self.last_sent: tuple[int, float] | None = None
        self.last_sampled: int | None = None


def first_match(rules: list[RuleSpec], device: str, metric: str) -> RuleSpec | None:
    return next((r for r in rules if r.matches(device, metric)), None)


class RuleEngine:
    def __init__(self, rules: list[RuleSpec]) -> None:
        self._rules = rules
        self._state: dict[str, dict[str, _SeriesState]] = {}  # device -> metric -> state

    def replace_rules(self, rules: list[RuleSpec]) -> None:
        """Swap the rule set; alert and deadband state carries over where the same series applies."""
        self._rules = rules
        for device, metrics in self._state.items():
            for metric, st in metrics.items():
                st.rule = first_match(rules, device, metric)

    def _new_series(self, device: str, metric: str) -> _SeriesState:
        st = self._state.setdefault(device, {})[metric] = _SeriesState(first_match(self._rules, device, metric))
        return st

    def process(self, r: Reading) -> Outcome:
        try:  # two lookups by name: cheaper than building and hashing a (device, metric) key
            st = self._state[r[0]][r[1]]
        except KeyError:
            st = self._new_series(r[0], r[1])
        rule = st.rule
        if rule is None:
            return _PASS
        value = r[3]
        if rule.valid is not None and not valid.within(rule.valid, value):
            return _OUT_OF_RANGE
        alerts: tuple[Alert, ...] = ()
        if rule.alert is not None:
            st.active, changes = threshold.evaluate(rule.alert, st.active, value)
            if changes:
                alerts = tuple(Alert(r, c, rule.name) for c in changes)
        if rule.deadband is not None and not deadband.passes(rule.deadband, st.last_sent, r[2], value):
            return Outcome("filtered", DEADBAND, alerts) if alerts else _DEADBAND
        if rule.sample_every_s > 0:
            if not sample.passes(rule.sample_every_s, st.last_sampled, r[2]):
                return Outcome("filtered", SAMPLED, alerts) if alerts else _SAMPLED
            st.last_sampled = r[2]
        if rule.deadband is not None:
            st.last_sent = (r[2], value)
        return Outcome("pass", None, alerts) if alerts else _PASS
