"""The per-message stage chain: decode -> rules -> lanes. Synchronous and side-effect free apart
from the counters and the two outputs it is given (telemetry batcher and control lane)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.protocol.model import Reading
from bridge.protocol.records import Alert as AlertRecord
from bridge.protocol.records import ControlOut, Event, Response
from gateway.control.commands import device_response
from gateway.observe.accounting import Accounting
from gateway.process.batcher import Batcher
from gateway.process.decode import Decoder, DeviceEvent, DeviceResponse, Rejection, Telemetry
from gateway.process.rejects import RejectLog
from gateway.process.rules.engine import PASS, Alert, Outcome, RuleEngine

BatchOut = Callable[[list[Reading]], None]  # full batch -> telemetry lane
ResponseRecord = Callable[[str, dict[str, Any]], Response | None]  # (device, body) -> record or None


def alert_record(alert: Alert) -> AlertRecord:
    r = alert.reading
    return AlertRecord(device=r.device, metric=r.metric, level=alert.change.level, state=alert.change.state,
                       value=r.value, threshold=alert.change.threshold, ts_ms=r.ts_ms, rule=alert.rule)


class Pipeline:
    def __init__(
        self,
        decoder: Decoder,
        rules: RuleEngine,
        batcher: Batcher,
        accounting: Accounting,
        rejects: RejectLog,
        *,
        on_batch: BatchOut,
        on_control: ControlOut,
        on_response: ResponseRecord = device_response,
    ) -> None:
        self.decoder = decoder
        self.rules = rules
        self.batcher = batcher
        self._acc = accounting
        self._rejects = rejects
        self._on_batch = on_batch
        self._on_control = on_control
        self._on_response = on_response

    def handle(self, topic: str, payload: bytes, recv_ms: int) -> None:
        acc = self._acc
        acc.messages_in += 1
        msg = self.decoder.decode(topic, payload, recv_ms)
        if isinstance(msg, Telemetry):
            for rej in msg.rejections:
                self._reject(topic, rej)
            process, add = self.rules.process, self.batcher.add
            for reading in msg.readings:
                acc.readings_in += 1
                outcome = process(reading)
                if outcome is PASS:  # the common case, inline: no alerts, into the batch
                    full = add(reading)
                    if full is not None:
                        self._on_batch(full)
                else:
                    self._outcome(reading, outcome)
        elif isinstance(msg, Rejection):
            self._reject(topic, msg)
        elif isinstance(msg, DeviceEvent):
            acc.events += 1
            self._on_control(Event(msg.device, msg.ts_ms, msg.body))
        elif isinstance(msg, DeviceResponse):
            acc.responses += 1
            record = self._on_response(msg.device, msg.body)
            if record is not None:  # None: refused (an answer to another device's command)
                self._on_control(record)

    def _reject(self, topic: str, rej: Rejection) -> None:
        self._acc.readings_in += 1
        self._acc.drop(rej.reason)
        self._rejects.add(topic, rej.reason, rej.detail, self.decoder.device_of(topic))

    def _outcome(self, reading: Reading, outcome: Outcome) -> None:
        acc = self._acc
        for alert in outcome.alerts:
            acc.alerts += 1
            self._on_control(alert_record(alert))
        if outcome.verdict == "pass":
            full = self.batcher.add(reading)
            if full is not None:
                self._on_batch(full)
        elif outcome.verdict == "filtered":
            acc.filter(outcome.reason or "rule")
        else:
            acc.drop(outcome.reason or "rule")

    def tick(self) -> None:
        """Close the open batch if it reached its age."""
        due = self.batcher.poll()
        if due is not None:
            self._on_batch(due)

    def flush(self) -> None:
        rest = self.batcher.flush()
        if rest is not None:
            self._on_batch(rest)
