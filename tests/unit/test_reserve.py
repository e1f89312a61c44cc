"""The disk reserve: given back a step at a time, grown back only while the file system keeps a
step free beside it."""

from __future__ import annotations

from pathlib import Path

from gateway.store.reserve import Reserve

STEP = 4096


def test_the_reserve_is_given_back_a_step_at_a_time_and_grown_back_when_there_is_room(tmp_path: Path) -> None:
    path = tmp_path / "reserve.bin"
    reserve = Reserve(path, size=3 * STEP, step=STEP)
    assert reserve.held() == 0 and not reserve.release()  # nothing to give back yet
    reserve.refill(free_bytes=10**9)
    assert path.stat().st_size == 3 * STEP and reserve.whole()
    assert reserve.release() and path.stat().st_size == 2 * STEP and not reserve.whole()
    assert reserve.release() and reserve.release() and path.stat().st_size == 0
    assert not reserve.release() and reserve.released == 3
    reserve.refill(free_bytes=STEP)  # growing would leave less than a step free: not now
    assert path.stat().st_size == 0
    reserve.refill(free_bytes=2 * STEP + 100)  # room for one step beside the step kept free
    assert path.stat().st_size == STEP + 100
    reserve.refill(free_bytes=10**9)
    assert path.stat().st_size == 3 * STEP
    assert Reserve(path, size=3 * STEP, step=STEP).whole()  # a later run finds it whole
