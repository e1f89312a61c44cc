"""The batch encoder's series building (one-reading fast path, column passes) gives the same bytes
as the straightforward per-reading grouping it replaced, for any batch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol import codec
from bridge.protocol.codec import carried, encode_batch
from bridge.protocol.model import Reading


def _reference_series(readings: Iterable[Reading]) -> list[list[Any]]:
    """The encoder's series as first written: group readings, then one column pass per field."""
    grouped: dict[tuple[str, str], list[Reading]] = {}
    for r in readings:
        grouped.setdefault((r.device, r.metric), []).append(r)
    out: list[list[Any]] = []
    for (device, metric), rows in grouped.items():
        scale, values = codec._encode_values([r.value for r in rows])
        seqs = [r.seq for r in rows]
        seq_col = codec._deltas([s for s in seqs if s is not None]) if all(s is not None for s in seqs) else None
        out.append([device, metric, codec._deltas([r.ts_ms for r in rows]), scale, values, seq_col])
    return out


def _listed(x: Any) -> Any:
    return list(x) if isinstance(x, tuple) else x


values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False).map(float),
    st.sampled_from([0.0, -0.0, 21.37, 1e-7, 2.0**53, 2.0**53 + 2]),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
).map(carried)
readings = st.lists(st.builds(Reading, st.sampled_from(["d1", "d2", "dev-0003"]), st.sampled_from(["t", "h"]),
                              st.integers(min_value=0, max_value=2**53 - 1), values,
                              st.one_of(st.none(), st.integers(min_value=0, max_value=2**63 - 1))),
                    max_size=30)


@settings(max_examples=400)
@given(readings)
def test_series_are_the_same_as_the_reference_grouping(batch: list[Reading]) -> None:
    assert [list(map(_listed, s)) for s in codec._series(batch)] == _reference_series(batch)
    body = {"gw": "g", "stream": "s1", "seq": 1, "created_ms": 0, "n": len(batch),
            "series": _reference_series(batch)}
    want = bytes([2, 0]) + msgpack.packb(body, use_bin_type=True)
    assert encode_batch("g", 1, batch, stream="s1", created_ms=0, compression="none") == want
