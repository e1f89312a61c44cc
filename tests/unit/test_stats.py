"""The snapshot handed to other threads is a deep, read-only copy taken when it was published."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.observe.stats import SnapshotBoard, freeze

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


def thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if hasattr(value, "items"):
        return {k: thaw(v) for k, v in value.items()}
    return value


def mutable_parts(value: Any) -> int:
    if isinstance(value, (dict, list)):
        return 1
    if isinstance(value, tuple):
        return sum(mutable_parts(v) for v in value)
    if hasattr(value, "items"):
        return sum(mutable_parts(v) for v in value.values())
    return 0


@given(st.dictionaries(st.text(max_size=5), json_like, max_size=5))
def test_freeze_keeps_every_value_and_leaves_nothing_mutable(doc: dict[str, Any]) -> None:
    frozen = freeze(doc)
    assert thaw(frozen) == doc
    assert mutable_parts(frozen) == 0


def test_the_board_is_a_copy_taken_at_refresh() -> None:
    state = {"accounting": {"readings_in": 1, "dropped": {"x": 1}}, "seqs": [1, 2]}
    board = SnapshotBoard()
    assert board.latest() is None
    board.refresh(lambda: state)
    latest = board.latest()
    assert latest is not None
    _ts, snap = latest
    state["accounting"]["readings_in"] = 2  # type: ignore[index]
    state["accounting"]["dropped"]["x"] = 5  # type: ignore[index]
    assert snap["accounting"]["readings_in"] == 1 and snap["accounting"]["dropped"]["x"] == 1
    with pytest.raises(TypeError):
        snap["accounting"]["readings_in"] = 3
    assert snap["seqs"] == (1, 2)
