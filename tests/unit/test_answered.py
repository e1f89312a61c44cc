"""gateway.control.answered: settled commands survive a reopen, the newest ``capacity`` are kept, a torn
or foreign line is skipped, and the file stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.control.answered import AnsweredCommands

keys = st.tuples(st.sampled_from(["d1", "d2", "dev-3"]), st.one_of(st.integers(-(2**63), 2**63 - 1),
                                                                   st.text(min_size=1, max_size=8)))


@settings(max_examples=200, deadline=None)
@given(st.lists(keys, max_size=60), st.integers(1, 8))
def test_a_reopen_remembers_what_was_remembered(tmp_path_factory: pytest.TempPathFactory,
                                                added: list[tuple[str, str | int]], capacity: int) -> None:
    path = tmp_path_factory.mktemp("answered") / "answered.jsonl"
    log = AnsweredCommands(path, capacity)
    log.open()
    for key in added:
        log.add(key)
    before = {k for k in added if k in log}
    log.close()
    assert len(before) <= capacity
    if added:
        assert added[-1] in before  # the newest is always kept
    again = AnsweredCommands(path, capacity)
    again.open()
    assert {k for k in added if k in again} == before and len(again) == len(before)
    assert len(path.read_text().splitlines()) < 2 * capacity + 1  # rewritten before it doubles
    again.close()


def test_torn_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "answered.jsonl"
    path.write_text('["d1","a"]\n["d1",true]\n{"x":1}\n["d2",7]\n["d3","tor')
    log = AnsweredCommands(path)
    log.open()
    assert ("d1", "a") in log and ("d2", 7) in log and ("d2", "7") not in log
    assert log.skipped_lines == 3 and len(log) == 2
    log.add(("d3", "new"))
    log.close()
    reread = AnsweredCommands(path)
    reread.open()
    assert ("d3", "new") in reread
    reread.close()


def test_an_unwritable_file_is_counted_and_memory_still_works(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log = AnsweredCommands(blocker / "answered.jsonl")
    log.open()
    log.add(("d1", 1))
    assert log.errors == 1 and ("d1", 1) in log
    log.close()
