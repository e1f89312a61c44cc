"""Files on disk for the file-transfer protocol: planning and reading on the sending side
(bridge/transfer/plan.py), receiving, resuming and installing on the receiving side
(bridge/transfer/assembly.py), on a real file system."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol.files import (
    MIN_CHUNK_BYTES,
    Chunk,
    FileRejected,
    Manifest,
    decode_chunk,
    encode_chunk,
)
from bridge.transfer.assembly import Assembly
from bridge.transfer.plan import plan_file, read_chunk

CHUNK = MIN_CHUNK_BYTES


def _source(tmp_path: Path, size: int, name: str = "data.bin", seed: int = 1) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _chunks(path: Path, manifest: Manifest, *, resend: bool = False) -> list[Chunk]:
    out = []
    for i in range(manifest.chunks):
        data, digest = read_chunk(path, manifest, i)
        out.append(decode_chunk(encode_chunk(manifest.id, i, i * manifest.chunk_size, data, resend=resend,
                                             sha256=digest)))
    return out


def _reason(exc: pytest.ExceptionInfo[FileRejected]) -> str:
    return exc.value.reason


# ------------------------------------------------------------------ plan and read

def test_plan_describes_the_file_and_its_chunks(tmp_path: Path) -> None:
    src = _source(tmp_path, 3 * CHUNK + 100)
    m = plan_file(src, chunk_size=CHUNK, content_type="text/csv", meta={"k": "v"}, device="dev-1")
    data = src.read_bytes()
    assert (m.name, m.size, m.chunks, m.chunk_size) == ("data.bin", len(data), 4, CHUNK)
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    assert [m.chunk_length(i) for i in range(4)] == [CHUNK, CHUNK, CHUNK, 100]
    assert b"".join(c.data for c in _chunks(src, m)) == data
    assert (m.content_type, dict(m.meta), m.device) == ("text/csv", {"k": "v"}, "dev-1")


def test_a_file_changed_after_planning_is_not_sent(tmp_path: Path) -> None:
    src = _source(tmp_path, 2 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    with src.open("r+b") as f:
        f.seek(CHUNK + 5)
        f.write(b"!")
    read_chunk(src, m, 0)  # untouched
    with pytest.raises(FileRejected) as exc:
        read_chunk(src, m, 1)
    assert _reason(exc) == "hash_mismatch"
    src.write_bytes(src.read_bytes()[:CHUNK + 10])  # truncated: the last chunk comes back short
    with pytest.raises(FileRejected) as exc:
        read_chunk(src, m, 1)
    assert _reason(exc) == "hash_mismatch"


def test_plan_refuses_large_files_bad_names_and_chunk_sizes(tmp_path: Path) -> None:
    src = _source(tmp_path, 5000)
    with pytest.raises(FileRejected) as exc:
        plan_file(src, max_size=4999)
    assert _reason(exc) == "too_large"
    with pytest.raises(ValueError, match="chunk_size"):
        plan_file(src, chunk_size=100)
    for name in ("../evil", ".hidden", "a/b", "con.txt"):
        with pytest.raises(FileRejected) as exc:
            plan_file(src, name=name)
        assert _reason(exc) == "bad_name"
    with pytest.raises(FileRejected) as exc:
        plan_file(_source(tmp_path, 10, name=".dot"))
    assert _reason(exc) == "bad_name"
    assert plan_file(src, max_size=5000).size == 5000


def test_plan_refuses_more_chunks_than_the_protocol_allows(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        f.truncate(CHUNK * 16385)  # sparse: 16 MiB that take no disk
    with pytest.raises(FileRejected) as exc:
        plan_file(src, chunk_size=CHUNK)
    assert _reason(exc) == "too_large"


def test_read_chunk_refuses_an_index_the_manifest_does_not_have(tmp_path: Path) -> None:
    src = _source(tmp_path, 2 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    for index in (-1, 2, 2**31):
        with pytest.raises(FileRejected) as exc:
            read_chunk(src, m, index)
        assert _reason(exc) == "bad_chunk"


# ------------------------------------------------------------------ assembly

def _receive(work: Path, src: Path, m: Manifest, order: list[int]) -> Assembly:
    chunks = _chunks(src, m)
    a = Assembly.open(work, m)
    for i in order:
        a.write(chunks[i])
    return a


@given(st.integers(0, 6 * CHUNK + 7), st.randoms(use_true_random=False), st.integers(0, 5))
@settings(max_examples=25, deadline=None)
def test_chunks_in_any_order_with_duplicates_and_restarts_install_the_file(
        tmp_path_factory: pytest.TempPathFactory, size: int, rnd: random.Random, dups: int) -> None:
    tmp = tmp_path_factory.mktemp("any")
    src = _source(tmp, size)
    m = plan_file(src, chunk_size=CHUNK)
    chunks = _chunks(src, m, resend=True)
    order = list(range(m.chunks)) + [rnd.randrange(m.chunks) for _ in range(dups if m.chunks else 0)]
    rnd.shuffle(order)
    a = Assembly.open(tmp / "work", m)
    firsts = []
    for i in order:
        firsts.append(a.write(chunks[i]))
        if rnd.random() < 0.3:  # a restart between two chunks: what is on disk carries on
            missing = a.missing()
            reopened = Assembly.load(tmp / "work", m.id)
            assert reopened is not None and reopened.missing() == missing
            a = reopened
    assert sorted(i for i, first in zip(order, firsts, strict=True) if first) == list(range(m.chunks))
    assert a.complete and a.missing() == [] and a.received == m.chunks
    target = a.install(tmp / "inbox")
    assert target == tmp / "inbox" / "data.bin" and target.read_bytes() == src.read_bytes()
    assert list((tmp / "work").iterdir()) == []


def test_a_duplicate_chunk_writes_nothing(tmp_path: Path) -> None:
    src = _source(tmp_path, 2 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    a = _receive(tmp_path / "work", src, m, [0])
    part = tmp_path / "work" / f"{m.id}.part"
    with part.open("r+b") as f:  # overwrite what is on disk: a duplicate must not write it back
        f.write(b"\0" * 10)
    assert a.write(_chunks(src, m)[0]) is False
    assert part.read_bytes()[:10] == b"\0" * 10
    assert a.has(0) and not a.has(1) and a.missing() == [1]


def test_an_empty_file_has_no_chunks_and_installs(tmp_path: Path) -> None:
    src = _source(tmp_path, 0, name="empty.txt")
    m = plan_file(src, chunk_size=CHUNK)
    assert (m.chunks, m.sha256) == (0, hashlib.sha256(b"").hexdigest())
    a = Assembly.open(tmp_path / "work", m)
    assert a.complete and a.missing() == []
    assert a.install(tmp_path / "inbox").read_bytes() == b""


def test_resume_after_reopening_keeps_what_was_received(tmp_path: Path) -> None:
    src = _source(tmp_path, 5 * CHUNK + 1)
    m = plan_file(src, chunk_size=CHUNK)
    work = tmp_path / "work"
    _receive(work, src, m, [4, 1, 5])
    again = Assembly.load(work, m.id)
    assert again is not None and again.missing() == [0, 2, 3]
    assert Assembly.open(work, m).missing() == [0, 2, 3]  # the same manifest again: resumed, not restarted
    assert [a.id for a in Assembly.under_way(work)] == [m.id]
    for i in again.missing():
        assert again.write(_chunks(src, m)[i])
    assert again.install(tmp_path / "inbox").read_bytes() == src.read_bytes()
    assert list(Assembly.under_way(work)) == [] and Assembly.load(work, m.id) is None


def test_a_chunk_on_disk_but_not_marked_is_asked_again(tmp_path: Path) -> None:
    """A crash between writing a chunk's data and marking it in .have."""
    src = _source(tmp_path, 3 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    work = tmp_path / "work"
    _receive(work, src, m, [0, 1])
    have = work / f"{m.id}.have"
    have.write_bytes(b"\x01\x00\x00")  # chunk 1's data is in .part, its mark never reached the disk
    again = Assembly.load(work, m.id)
    assert again is not None and again.missing() == [1, 2]
    assert again.write(_chunks(src, m)[1]) is True
    again.write(_chunks(src, m)[2])
    assert again.install(tmp_path / "inbox").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("damage", ["torn_manifest", "empty_manifest", "no_have", "short_have", "no_part",
                                    "other_id"])
def test_damaged_work_files_start_the_transfer_over(tmp_path: Path, damage: str) -> None:
    src = _source(tmp_path, 3 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    work = tmp_path / "work"
    _receive(work, src, m, [0, 2])
    paths = {p: work / f"{m.id}.{p}" for p in ("manifest", "have", "part")}
    if damage == "torn_manifest":
        paths["manifest"].write_bytes(paths["manifest"].read_bytes()[:50])
    elif damage == "empty_manifest":
        paths["manifest"].write_bytes(b"")
    elif damage == "no_have":
        paths["have"].unlink()
    elif damage == "short_have":
        paths["have"].write_bytes(b"\x01")
    elif damage == "no_part":
        paths["part"].unlink()
    else:
        other = Assembly.open(tmp_path / "other", plan_file(src, chunk_size=CHUNK))
        paths["manifest"].write_bytes((other.work_dir / f"{other.id}.manifest").read_bytes())
    a = Assembly.open(work, m)
    assert a.missing() == [0, 1, 2]
    for chunk in _chunks(src, m):
        assert a.write(chunk)
    assert a.install(tmp_path / "inbox").read_bytes() == src.read_bytes()


def test_a_different_manifest_under_a_known_id_is_a_conflict(tmp_path: Path) -> None:
    src = _source(tmp_path, 2 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    work = tmp_path / "work"
    _receive(work, src, m, [0])
    other = plan_file(_source(tmp_path, 2 * CHUNK, name="other.bin", seed=2), chunk_size=CHUNK, file_id=m.id)
    with pytest.raises(FileRejected) as exc:
        Assembly.open(work, other)
    assert _reason(exc) == "conflict"
    later = plan_file(src, chunk_size=CHUNK, file_id=m.id)  # the same file planned again: only created_ms differs
    assert Assembly.open(work, later).missing() == [1]


def test_a_corrupt_whole_is_never_installed_and_every_chunk_is_asked_again(tmp_path: Path) -> None:
    src = _source(tmp_path, 3 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    work, inbox = tmp_path / "work", tmp_path / "inbox"
    a = _receive(work, src, m, [0, 1, 2])
    with (work / f"{m.id}.part").open("r+b") as f:  # bit rot after the chunks were checked
        f.seek(CHUNK + 3)
        f.write(b"\xff")
    with pytest.raises(FileRejected) as exc:
        a.install(inbox)
    assert _reason(exc) == "hash_mismatch"
    assert a.missing() == [0, 1, 2] and not (inbox / m.name).exists()
    reloaded = Assembly.load(work, m.id)
    assert reloaded is not None and reloaded.missing() == [0, 1, 2]  # forgotten on disk too
    for chunk in _chunks(src, m):
        reloaded.write(chunk)
    assert reloaded.install(inbox).read_bytes() == src.read_bytes()


def test_install_replaces_an_existing_file_atomically_and_may_rename(tmp_path: Path) -> None:
    src = _source(tmp_path, CHUNK + 1)
    m = plan_file(src, chunk_size=CHUNK)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "data.bin").write_bytes(b"old")
    keep = os.open(inbox / "data.bin", os.O_RDONLY)  # a reader of the old file keeps the old bytes
    try:
        a = _receive(tmp_path / "work", src, m, [1, 0])
        a.install(inbox)
        assert os.pread(keep, 10, 0) == b"old"
    finally:
        os.close(keep)
    assert (inbox / "data.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in inbox.iterdir()) == ["data.bin"]  # no temporary left beside it
    b = _receive(tmp_path / "work", src, plan_file(src, chunk_size=CHUNK), [0, 1])
    assert b.install(inbox, name="copy (2).bin").read_bytes() == src.read_bytes()
    with pytest.raises(FileRejected, match="bad_name"):
        _receive(tmp_path / "work", src, plan_file(src, chunk_size=CHUNK), [0, 1]).install(inbox, name="../x")


def test_install_of_an_incomplete_file_keeps_its_chunks(tmp_path: Path) -> None:
    src = _source(tmp_path, 2 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    a = _receive(tmp_path / "work", src, m, [1])
    with pytest.raises(ValueError, match="misses 1"):
        a.install(tmp_path / "inbox")
    assert a.missing() == [0] and not (tmp_path / "inbox" / m.name).exists()


def test_chunks_that_do_not_fit_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    src = _source(tmp_path, 2 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    a = Assembly.open(tmp_path / "work", m)
    good = _chunks(src, m)
    bad = [(Chunk(m.id, 0, 0, good[1].data, good[1].sha256), "hash_mismatch"),
           (Chunk(m.id, 2, 2 * CHUNK, b"x", hashlib.sha256(b"x").hexdigest()), "bad_chunk"),
           (Chunk("0" * 32, 0, 0, good[0].data, good[0].sha256), "unknown_file")]
    for chunk, reason in bad:
        with pytest.raises(FileRejected) as exc:
            a.write(chunk)
        assert _reason(exc) == reason
    assert a.missing() == [0, 1] and (tmp_path / "work" / f"{m.id}.part").read_bytes() == bytes(2 * CHUNK)


def test_discard_forgets_a_transfer(tmp_path: Path) -> None:
    src = _source(tmp_path, CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    work = tmp_path / "work"
    a = Assembly.open(work, m)
    (work / f"{m.id}.have.tmp").write_bytes(b"left by a crash")
    a.discard()
    assert list(work.iterdir()) == [] and list(Assembly.under_way(work)) == []
    assert list(Assembly.under_way(tmp_path / "nowhere")) == []


def test_install_into_another_file_system_copies_then_renames(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) on this machine")
    src = _source(tmp_path, 2 * CHUNK + 9)
    m = plan_file(src, chunk_size=CHUNK)
    inbox = Path(tempfile.mkdtemp(dir=shm)) / "inbox" / "dev-1"  # new directories, made on the way
    try:
        a = _receive(tmp_path / "work", src, m, [2, 0, 1])
        target = a.install(inbox)
        assert target.read_bytes() == src.read_bytes() and os.stat(target).st_dev != os.stat(tmp_path).st_dev
        assert sorted(p.name for p in inbox.iterdir()) == ["data.bin"]  # the dot-named copy was renamed
        assert list((tmp_path / "work").iterdir()) == []
    finally:
        shutil.rmtree(inbox.parent.parent)


def test_plan_refuses_what_is_not_a_regular_file_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # nobody writes to it: reading it would wait for ever
    (tmp_path / "zeros").symlink_to("/dev/zero")  # reading it would never end
    (tmp_path / "folder").mkdir()
    for name in ("pipe", "zeros", "folder"):
        with pytest.raises(FileRejected) as exc:
            plan_file(tmp_path / name)
        assert _reason(exc) == "malformed"


def test_plan_reads_exactly_the_size_it_saw() -> None:
    proc = Path("/proc/self/status")  # a regular file of size 0 that has bytes: one that "grew" while read
    if not proc.is_file():
        pytest.skip("no /proc")
    with pytest.raises(FileRejected, match="grew") as exc:
        plan_file(proc)
    assert _reason(exc) == "hash_mismatch"


class _Crash(Exception):
    pass


def test_a_crash_after_the_rename_leaves_a_finished_transfer_not_one_to_start_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path, 2 * CHUNK + 5)
    m = plan_file(src, chunk_size=CHUNK)
    work, inbox = tmp_path / "work", tmp_path / "inbox"
    a = _receive(work, src, m, [0, 1, 2])

    def crash(work_dir: Path, file_id: str) -> None:
        raise _Crash  # the power goes between the rename and the removal of the work files

    with monkeypatch.context() as patched:
        patched.setattr(Assembly, "remove", staticmethod(crash))
        with pytest.raises(_Crash):
            a.install(inbox, "renamed.bin")
    assert (work / f"{m.id}.manifest").exists() and not (work / f"{m.id}.part").exists()
    assert Assembly.load(work, m.id) is None and list(Assembly.under_way(work)) == []
    [done] = Assembly.finished(work)
    assert done.manifest == m and done.path == (inbox / "renamed.bin").absolute()
    assert done.path.read_bytes() == src.read_bytes()
    Assembly.remove(work, m.id)  # the receiver recorded it as installed
    assert Assembly.finished(work) == [] and list(work.iterdir()) == []


def test_a_transfer_not_yet_renamed_is_not_finished(tmp_path: Path) -> None:
    src = _source(tmp_path, 2 * CHUNK)
    m = plan_file(src, chunk_size=CHUNK)
    work = tmp_path / "work"
    _receive(work, src, m, [0, 1])
    (work / f"{m.id}.target").write_text(str(tmp_path / "inbox" / m.name))  # written, then the crash
    assert Assembly.finished(work) == []
    again = Assembly.load(work, m.id)
    assert again is not None and again.complete  # installed on resume by the receiver
    assert again.install(tmp_path / "inbox").read_bytes() == src.read_bytes()
    assert Assembly.finished(work) == [] and list(work.iterdir()) == []
