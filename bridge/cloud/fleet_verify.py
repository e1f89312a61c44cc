"""Check sink databases against a fleet manifest: every batch key once in the ledger (across all
the databases given: N workers with a database each must not store a key twice), the readings
count, the content checksum and the alerts.

The rows are read with plain SQL that any store of the sink's schema answers (the readings' and
the ledger's columns); the SQLite store is read through :class:`FleetView`, a read-only
:class:`~bridge.cloud.sink_store.SinkStore`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.cloud.errors import SinkStoreError
from bridge.cloud.fleet_manifest import Manifest, Observed, compare
from bridge.cloud.sink_store import SinkStore

READING_ROWS = ("SELECT gateway, stream, batch_seq, device, metric, ts_ms, value, value_text, seq"
                " FROM readings")
LEDGER_ROWS = "SELECT gateway, stream, lane, seq FROM batches"
ALERT_COUNT = "SELECT COUNT(*) FROM alerts"
_FETCH = 10_000


class FleetView(SinkStore):
    """A sink database opened read-only, for the rows the fleet check folds."""

    def stream_rows(self, sql: str) -> Iterator[tuple[Any, ...]]:
        """The rows of ``sql``, fetched a page at a time (a store may hold millions)."""
        try:
            cur = self._db.execute(sql)
            while rows := cur.fetchmany(_FETCH):
                yield from rows
        except sqlite3.Error as exc:
            raise SinkStoreError(f"sink database {self.path}: {exc}") from exc


def fold(observed: Observed, ledger: Iterable[tuple[Any, ...]], readings: Iterable[tuple[Any, ...]],
         alerts: int) -> None:
    """Add one store's ledger keys, reading rows and alert count to ``observed``."""
    observed.keys.update((str(gw), str(stream), lane, int(seq)) for gw, stream, lane, seq in ledger)
    observed.add_reading_rows(readings)
    observed.alerts += alerts


def observe_sqlite(paths: Iterable[Path]) -> Observed:
    """What the SQLite sink databases ``paths`` hold together."""
    observed = Observed()
    for path in paths:
        with FleetView.open_readonly(path) as view:
            assert isinstance(view, FleetView)
            alerts = int(next(view.stream_rows(ALERT_COUNT))[0])
            fold(observed, view.stream_rows(LEDGER_ROWS), view.stream_rows(READING_ROWS), alerts)
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


def verify_sqlite(manifest: Manifest, paths: Iterable[Path]) -> Verdict:
    observed = observe_sqlite(paths)
    return Verdict(manifest, observed, compare(manifest, observed))
