"""docs/CLOUD.md's retention statements for plain PostgreSQL, run as written against a sink database:
old readings and old telemetry ledger rows go, the control lane's rows and recent data stay, and no
gap appears, also when a backlog arrived after newer live batches."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

from bridge.cloud.pg_store import PgSinkStore
from tests.unit.test_sink_store import batch

CLOUD_MD = Path(__file__).resolve().parents[2] / "docs" / "CLOUD.md"
DAY_MS = 86_400_000


def plain_postgres_statements() -> list[str]:
    block = re.search(r"```sql\n(.*?)```", CLOUD_MD.read_text(), re.S)
    assert block, "docs/CLOUD.md has no sql block"
    text = re.sub(r"--[^\n]*", "", block.group(1))
    statements = [" ".join(s.split()) for s in text.split(";") if s.strip()]
    return [s for s in statements if "timescaledb" not in s and "_policy" not in s]


def test_the_documented_retention_keeps_recent_data_and_opens_no_gap(pg_url: str) -> None:
    statements = plain_postgres_statements()
    assert [s.split()[0] for s in statements] == ["DELETE", "DELETE"]
    now = int(time.time() * 1000)
    with PgSinkStore(pg_url) as store:
        # seq 3 arrived late (a drained backlog), after seqs 4 and 5 had come live
        for seq, age_days in ((1, 120), (2, 60), (4, 45), (5, 40), (3, 20), (6, 1)):
            b = batch(seq)
            old = [r._replace(ts_ms=now - age_days * DAY_MS) for r in b.readings]
            store.store_batch(replace(b, readings=old), now - age_days * DAY_MS)
        store.store_control({"v": 1, "kind": "event", "gw": "gw-1", "seq": 1, "device": "d", "ts_ms": 1,
                             "event": {"x": 1}}, now - 200 * DAY_MS)
        for sql in statements:
            store._rows(sql + " RETURNING 1")
        # older than 30 days and below every kept seq: 1 and 2 go; 4 and 5 are older but stay above 3
        assert store.seqs("gw-1") == [3, 4, 5, 6]
        assert store.seqs("gw-1", "control") == [1]  # the control lane's rows are kept
        # readings go after 90 days, their ledger rows after 30
        assert store._rows("SELECT DISTINCT batch_seq FROM readings ORDER BY 1") == [(2,), (3,), (4,), (5,), (6,)]
        assert store._rows("SELECT count(*) FROM gaps") == [(0,)]
