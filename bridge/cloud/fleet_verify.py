"""Check sink databases against a fleet manifest: every batch key once in the ledger (across all
the databases given: N workers with a SQLite database each must not store a key twice; workers
sharing one PostgreSQL database are one store), the readings count, the content checksum and the
alerts.

The rows are read with plain SQL that every store of the sink's schema answers (the readings' and
the ledger's columns), through the store's ``scan``, a page at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.cloud.fleet_manifest import Manifest, Observed, compare
from bridge.cloud.sink_port import open_sink_store

READING_ROWS = ("SELECT gateway, stream, batch_seq, device, metric, ts_ms, value, value_text, seq"
                " FROM readings")
LEDGER_ROWS = "SELECT gateway, stream, lane, seq FROM batches"


def fold(observed: Observed, ledger: Iterable[tuple[Any, ...]], readings: Iterable[tuple[Any, ...]],
         alerts: int) -> None:
    """Add one store's ledger keys, reading rows and alert count to ``observed``."""
    observed.keys.update((str(gw), str(stream), lane, int(seq)) for gw, stream, lane, seq in ledger)
    observed.add_reading_rows(readings)
    observed.alerts += alerts


def observe(dbs: Iterable[str | Path], password_file: Path | None = None) -> Observed:
    """What the sink stores ``dbs`` (SQLite paths or PostgreSQL URLs) hold together."""
    observed = Observed()
    for db in dbs:
        with open_sink_store(db, readonly=True, password_file=password_file) as store:
            fold(observed, store.scan(LEDGER_ROWS), store.scan(READING_ROWS), store.count("alerts"))
    return observed


@dataclass(frozen=True)
class Verdict:
    """The manifest, what the stores hold, and every difference (none: the stores are right)."""

    manifest: Manifest
    observed: Observed
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(manifest: Manifest, dbs: Iterable[str | Path], password_file: Path | None = None) -> Verdict:
    observed = observe(dbs, password_file)
    return Verdict(manifest, observed, compare(manifest, observed))
