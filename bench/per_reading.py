"""CPU cost per reading of decode -> rules -> batcher -> encode, in process (no broker):

    python bench/per_reading.py [--baseline /path/to/other/checkout] [--rounds 5] [--repeat 2]
    python bench/per_reading.py --profile 3 [--sort tottime] [--root PATH]   # cProfile of the whole path

300 devices send realistic JSON telemetry (``ts``, ``seq`` and 1 or 10 metrics per message, values
on a random walk at the sensors' resolution) through the real :class:`Pipeline` (decoder, rule
engine, batcher; defaults of conf/gateway.toml: 1000 readings or 64 KiB per batch) with a rule set
like conf/gateway.toml's (valid ranges, alert thresholds with hysteresis, deadband, one sampled
metric), and the batches it closes are encoded as the gateway writes them (zlib level 6).

Each stage first sees the devices' first traffic untimed (every series known, caches warm, as in
a running gateway); then the rest is timed. Prints microseconds per reading IN (best of
``--rounds``) for each stage measured on its own:
``decode`` (the decoder), ``rules`` (the rule engine on the decoded readings), ``batcher`` (adding
the readings that pass), ``pipeline`` (all three through :meth:`Pipeline.handle`, with the
accounting), ``encode`` (encoding the closed batches) and ``total`` (pipeline + encode), plus
``json_loads`` (``json.loads`` of the same payloads, the baseline measured in the same run) and
``total / json_loads``. With ``--baseline`` each tree runs in a fresh process, alternately
``--repeat`` times, and the ratio this/baseline is printed (below 1 = this tree is faster).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEVICES = 300
STREAM = "5f3a9c01d2e4b687"
# (metrics per message, 10-second steps, steps fed untimed first: every series seen, caches warm)
SHAPES = ((1, 50, 10), (10, 12, 2))
Msgs = list[tuple[str, bytes, int]]
# CPU time of this process: on a shared machine, time spent waiting for a core is not counted
_clock = time.process_time
# metric -> (start, step of the random walk, decimals)
METRICS: dict[str, tuple[float, float, int]] = {
    "temperature": (21.0, 0.15, 2), "humidity": (45.0, 0.8, 1), "pressure": (1013.0, 0.3, 1),
    "co2": (600.0, 15.0, 0), "voltage": (3.3, 0.01, 3), "current": (0.5, 0.02, 3), "power": (150.0, 4.0, 1),
    "rssi": (-60.0, 2.0, 0), "battery": (80.0, 0.05, 1), "light": (300.0, 20.0, 0),
}
RULES: list[dict[str, Any]] = [
    {"name": "room temperature", "devices": "*", "metrics": "temperature", "valid": {"min": -40.0, "max": 85.0},
     "alert": {"max": 21.5, "min": 5.0, "hysteresis": 0.5},
     "deadband": {"abs": 0.2, "pct": 0.0, "max_silence_s": 300.0}},
    {"name": "humidity", "metrics": "humidity", "valid": {"min": 0.0, "max": 100.0},
     "deadband": {"abs": 1.0, "max_silence_s": 600.0}},
    {"name": "co2", "metrics": "co2", "valid": {"min": 0.0, "max": 10000.0}, "alert": {"max": 700.0, "hysteresis": 50}},
    {"name": "battery", "metrics": "battery", "valid": {"min": 0.0, "max": 100.0},
     "alert": {"min": 20.0, "hysteresis": 5.0}, "deadband": {"pct": 1.0, "max_silence_s": 3600.0}},
    {"name": "radio", "devices": "dev-0*", "metrics": "rssi", "sample_every_s": 30.0},
]


def payloads(per_message: int, steps: int, now_ms: int) -> list[tuple[str, bytes, int]]:
    """(topic, payload, recv_ms) in arrival order: every device once per 10-second step."""
    rng = random.Random(17)
    names = list(METRICS)
    state = {(d, m): METRICS[m][0] for d in range(DEVICES) for m in names}
    out = []
    for step in range(steps):
        ts = now_ms - (steps - step) * 10_000
        for d in range(DEVICES):
            body: dict[str, Any] = {"ts": ts + d, "seq": step}
            for k in range(per_message):
                m = names[(step * per_message + k) % len(names)] if per_message == 1 else names[k]
                _start, walk, decimals = METRICS[m]
                state[d, m] += rng.gauss(0, walk)
                body[m] = round(state[d, m], decimals or None)  # no decimals: an integer
            out.append((f"devices/dev-{d:04d}/telemetry", json.dumps(body).encode(), now_ms))
    return out


def _best(rounds: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(rounds))


class _Path:
    """The gateway's stages, built from the tree on sys.path (fresh state per run)."""

    def __init__(self) -> None:
        from bridge.protocol.codec import encode_batch
        from gateway.config import BatchSection, ClockSection, DecodeSection, RuleSpec, TopicsSection
        from gateway.observe.accounting import Accounting
        from gateway.process.batcher import Batcher
        from gateway.process.clock import ClockGuard
        from gateway.process.decode import Decoder
        from gateway.process.pipeline import Pipeline
        from gateway.process.rejects import RejectLog
        from gateway.process.rules.engine import RuleEngine

        self.encode_batch = encode_batch
        self.rules = [RuleSpec.model_validate(r) for r in RULES]
        self.batch = BatchSection()
        c = ClockSection()
        clock = ClockGuard(c.floor_date, jump_s=c.jump_s, sync_file=c.sync_file)  # as the gateway builds it
        self.decoder: Callable[[], Any] = lambda: Decoder(TopicsSection(), DecodeSection(), clock)
        self.engine: Callable[[], Any] = lambda: RuleEngine(list(self.rules))
        self.stats: dict[str, Any] = {}

        def pipeline(batches: list[Any], control: list[Any]) -> Any:
            b = self.batch
            return Pipeline(self.decoder(), self.engine(), Batcher(b.max_count, b.max_bytes, b.max_age_s),
                            Accounting(), RejectLog(), on_batch=batches.append, on_control=control.append)

        self.pipeline: Callable[[list[Any], list[Any]], Any] = pipeline

    def decode(self, warm: Msgs, msgs: Msgs) -> float:
        decode = self.decoder().decode
        for topic, payload, recv_ms in warm:
            decode(topic, payload, recv_ms)
        t = _clock()
        for topic, payload, recv_ms in msgs:
            decode(topic, payload, recv_ms)
        return _clock() - t

    def readings(self, msgs: Msgs) -> list[Any]:
        decode = self.decoder().decode
        return [r for topic, payload, recv_ms in msgs for r in decode(topic, payload, recv_ms).readings]

    def rules_only(self, warm: list[Any], readings: list[Any]) -> float:
        process = self.engine().process
        for r in warm:
            process(r)
        t = _clock()
        for r in readings:
            process(r)
        return _clock() - t

    def batcher_only(self, readings: list[Any]) -> float:
        from gateway.process.batcher import Batcher

        b = self.batch
        add = Batcher(b.max_count, b.max_bytes, b.max_age_s).add
        t = _clock()
        for r in readings:
            add(r)
        return _clock() - t

    def full(self, warm: Msgs, msgs: Msgs, prof: cProfile.Profile | None = None) -> tuple[float, list[Any]]:
        """Seconds for ``msgs`` through a pipeline that has seen ``warm``, and the batches it closed
        (``prof``: profile the timed part)."""
        batches: list[Any] = []
        control: list[Any] = []
        p = self.pipeline(batches, control)
        for topic, payload, recv_ms in warm:
            p.handle(topic, payload, recv_ms)
        p.flush()
        batches.clear()
        control.clear()
        if prof is not None:
            prof.enable()
        t = _clock()
        for topic, payload, recv_ms in msgs:
            p.handle(topic, payload, recv_ms)
        p.flush()
        elapsed = _clock() - t
        if prof is not None:
            prof.disable()
        self.stats = {"batches": len(batches), "passed": sum(map(len, batches)), "alerts": len(control)}
        return elapsed, batches

    def encode(self, batches: list[Any]) -> float:
        t = _clock()
        for i, batch in enumerate(batches):
            self.encode_batch("gw-01", i, batch, stream=STREAM, created_ms=1_790_000_000_000,
                              compression="zlib", level=6)
        return _clock() - t


def _json(bodies: list[bytes]) -> float:
    t = _clock()
    for b in bodies:
        json.loads(b)
    return _clock() - t


def _child(root: str, rounds: int) -> dict[str, Any]:
    sys.path.insert(0, root)
    path = _Path()
    now_ms = int(time.time() * 1000)
    out: dict[str, Any] = {}
    for per_message, steps, warm_steps in SHAPES:
        every = payloads(per_message, steps, now_ms)
        warm, msgs = every[:warm_steps * DEVICES], every[warm_steps * DEVICES:]
        n = len(msgs) * per_message
        _, batches = path.full(warm, msgs)
        warm_readings, readings = path.readings(warm), path.readings(msgs)
        passed = [r for batch in batches for r in batch]
        us = {
            "json_loads": _best(rounds, lambda: _json([p for _, p, _ in msgs])),  # noqa: B023
            "decode": _best(rounds, lambda: path.decode(warm, msgs)),  # noqa: B023
            "rules": _best(rounds, lambda: path.rules_only(warm_readings, readings)),  # noqa: B023
            "batcher": _best(rounds, lambda: path.batcher_only(passed)),  # noqa: B023
            "pipeline": _best(rounds, lambda: path.full(warm, msgs)[0]),  # noqa: B023
            "encode": _best(rounds, lambda: path.encode(batches)),  # noqa: B023
        }
        us["total"] = us["pipeline"] + us["encode"]
        row = {k: round(v / n * 1e6, 3) for k, v in us.items()}
        row["total/json_loads"] = round(us["total"] / us["json_loads"], 2)
        out[f"{per_message}_per_message"] = {**row, "readings": n, **path.stats}
    return out


def _profile(root: str, rounds: int, sort: str) -> None:
    sys.path.insert(0, root)
    path = _Path()
    now_ms = int(time.time() * 1000)
    shapes = [payloads(per_message, steps, now_ms) for per_message, steps, _ in SHAPES]
    runs = [(msgs[:warm * DEVICES], msgs[warm * DEVICES:]) for msgs, (_, _, warm) in zip(shapes, SHAPES, strict=True)]
    prof = cProfile.Profile()
    for _ in range(rounds):
        for warm, msgs in runs:  # the timed part of each stage only, as measured
            batches = path.full(warm, msgs, prof)[1]
            prof.enable()
            path.encode(batches)
            prof.disable()
    pstats.Stats(prof).sort_stats(sort).print_stats(25)


def _measure(root: Path, rounds: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", str(root), "--rounds", str(rounds)],
                         check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, help="another checkout to measure alternately")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2, help="alternate the trees this many times")
    ap.add_argument("--profile", type=int, metavar="ROUNDS", help="print a cProfile of the whole path")
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to profile (default: this one)")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.rounds)))
        return
    if args.profile:
        _profile(str(args.root.resolve()), args.profile, args.sort)
        return
    trees = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    for i in range(args.repeat):
        for name, root in trees.items():
            got = _measure(root, args.rounds)
            for shape, row in got.items():
                print(json.dumps({"run": i + 1, "tree": name, "shape": shape, **row}))


if __name__ == "__main__":
    main()
