"""diskcache adapter: the buffer's rows on disk (the only module that imports diskcache).

One row per record. The record's metadata is part of its key
(``t:{seq:020d}:{readings}:{created_ms}:{size}:{topic}``, ``c:`` for the control lane), so an
append writes one row and reopening reads only keys. Beside the records: ``seq:{lane}`` (the
highest sequence number used, written with every delete), ``reserve:{lane}`` (sequence numbers
reserved by write-behind), ``stream`` and ``unclean_starts``. Every diskcache, SQLite or OS error
is turned into :class:`StorageError` here (``full`` tells a full disk apart).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import diskcache

from bridge.uplink.store import Lane
from gateway.errors import StorageError
from gateway.store.ledger import RecordMeta

WAL_LIMIT_BYTES = 8 * 1024 * 1024  # the write-ahead log is truncated back to this after a checkpoint
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024  # checkpoint every ~4 MB of log: hot pages reach the database once each
# A new database gets 1 KiB pages (SQLite's default is 4 KiB): a transaction rewrites whole pages
# (the table's and two indexes' last leaves, diskcache's counters), so for batches of a few KB small
# pages halve the bytes written per batch; an existing database keeps the page size it has.
PAGE_SIZE = 1024
# the backlog is read once, in order: a small page cache and no memory map keep the process' memory
# independent of the size of the database (diskcache's defaults: 32 MB of cache, 64 MB mapped).
# secure_delete off: Debian's SQLite overwrites deleted content with zeros by default, which made
# every acknowledged batch cost its size in writes a second time (and a third at the checkpoint).
READ_PRAGMAS = {"cache_size": 1024, "mmap_size": 0}
WRITE_PRAGMAS = {"secure_delete": 0}
DB_FILE: str = diskcache.core.DBNAME  # "cache.db": the database file
STREAM_KEY = "stream"
UNCLEAN_STARTS_KEY = "unclean_starts"
_PREFIX: dict[Lane, str] = {"control": "c", "telemetry": "t"}
_LANE_OF = {v: k for k, v in _PREFIX.items()}


class DiskFull(StorageError):
    """The disk (or SQLite's page limit) refused a write: room may come back after a delete."""


def record_key(lane: Lane, seq: int, readings: int, created_ms: int, size: int, topic: str) -> RecordMeta:
    key = f"{_PREFIX[lane]}:{seq:020d}:{readings}:{created_ms}:{size}:{topic}"
    return RecordMeta(lane, key, seq, topic, readings, created_ms, size)


def parse_key(key: object) -> RecordMeta | None:
    """The record a row's key names; None for the other rows (counters, stream, foreign keys)."""
    if not isinstance(key, str) or key[:2] not in ("t:", "c:"):
        return None
    try:
        seq, readings, created_ms, size, topic = key[2:].split(":", 4)
        return RecordMeta(_LANE_OF[key[0]], key, int(seq), topic, int(readings), int(created_ms), int(size))
    except ValueError:
        return None


def seq_key(lane: Lane) -> str:
    return f"seq:{lane}"


def reserve_key(lane: Lane) -> str:
    return f"reserve:{lane}"


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == 28  # ENOSPC
    return "full" in str(exc).lower()  # sqlite3: "database or disk is full"


_FAILURES = (OSError, sqlite3.Error)  # what diskcache lets through


def _translated(what: str, exc: OSError | sqlite3.Error) -> StorageError:
    """The StorageError to raise (``from exc``) for a failure of the database or the disk."""
    return (DiskFull if _is_disk_full(exc) else StorageError)(f"{what}: {exc}")


@contextmanager
def _held_open(db: Path, page_size: int) -> Iterator[int]:
    """Create ``db`` with ``page_size`` (in WAL mode) unless it exists, and hold a connection to it
    while diskcache opens it; yields the database's page size.

    - diskcache sets its pragmas in name order, ``journal_mode`` before anything named
      ``page_size``, and a database in WAL mode keeps the page size it was created with: so the
      file is created here first.
    - diskcache writes its settings, closes its connection and opens a new one. SQLite checkpoints
      the write-ahead log and fsyncs the database file when the *last* connection closes, so each
      open would wait until every page of the database not yet on disk is written (after a large
      backlog was written or copied: seconds). With this connection open that close is not the
      last one; the log is checkpointed later as usual."""
    db.parent.mkdir(parents=True, exist_ok=True)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        if holder.execute("PRAGMA page_count").fetchone()[0] == 0:
            holder.execute(f"PRAGMA page_size = {int(page_size)}")
            holder.execute("PRAGMA journal_mode = wal")
        holder.execute("PRAGMA schema_version").fetchall()  # opens the log: a shared lock until closed
        yield int(holder.execute("PRAGMA page_size").fetchone()[0])
    finally:
        holder.close()


class Rows:
    """The database of one buffer directory: records, counters and the stream id."""

    def __init__(self, directory: Path, *, sync: Literal["normal", "full"] = "full",
                 pragmas: Mapping[str, int] | None = None) -> None:
        self._dir = directory
        self._sync = sync
        self._pragmas = dict(pragmas or {})
        self._cache: diskcache.Cache | None = None

    def open(self) -> None:
        try:
            with _held_open(self._dir / DB_FILE, PAGE_SIZE) as page_size:
                cache = diskcache.Cache(
                    str(self._dir),
                    eviction_policy="none",
                    size_limit=2**62,
                    cull_limit=0,
                    sqlite_synchronous=1,  # its settings rows need no fsync each: the first real write syncs them
                    sqlite_wal_autocheckpoint=WAL_CHECKPOINT_BYTES // page_size,
                    sqlite_journal_size_limit=WAL_LIMIT_BYTES,
                    disk_min_file_size=2**22,
                    **{f"sqlite_{name}": value
                       for name, value in {**READ_PRAGMAS, **WRITE_PRAGMAS, **self._pragmas}.items()},
                )
            try:
                if self._sync == "full":
                    cache.reset("sqlite_synchronous", 2)
            except _FAILURES:
                cache.close()  # not left open behind the error
                raise
            self._cache = cache
        except _FAILURES as exc:
            raise _translated(f"cannot open buffer in {self._dir}", exc) from exc

    def close(self) -> None:
        cache, self._cache = self._cache, None
        if cache is not None:
            cache.close()

    @property
    def is_open(self) -> bool:
        return self._cache is not None

    def _require(self) -> diskcache.Cache:
        if self._cache is None:
            raise StorageError("buffer is not open")
        return self._cache

    def _keys(self, query: str, args: tuple[object, ...]) -> list[str]:
        cache = self._require()
        try:
            return [row[0] for row in cache._sql(query, args).fetchall()]  # diskcache's own SQL, on its key index
        except _FAILURES as exc:
            raise _translated("buffer read failed", exc) from exc

    def page(self, lane: Lane, first: int, last: int, limit: int) -> list[RecordMeta]:
        """Up to ``limit`` records of ``lane`` on disk with ``first <= seq <= last``, in sequence
        order (zero-padded keys sort in sequence order; read through the key index)."""
        keys = self._keys("SELECT key FROM Cache WHERE key >= ? AND key < ? ORDER BY key LIMIT ?",
                          (f"{_PREFIX[lane]}:{first:020d}", f"{_PREFIX[lane]}:{last + 1:020d}", limit))
        return [parsed for key in keys if (parsed := parse_key(key)) is not None]

    def highest_seq(self, lane: Lane) -> int:
        """The highest sequence number of a record of ``lane`` on disk (0 if there is none)."""
        keys = self._keys("SELECT key FROM Cache WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT 1",
                          (f"{_PREFIX[lane]}:", f"{_PREFIX[lane]};"))
        parsed = parse_key(keys[0]) if keys else None
        return parsed.seq if parsed is not None else 0

    def find(self, key: str) -> RecordMeta | None:
        """The record of ``key`` if it is on disk."""
        parsed = parse_key(key)
        if parsed is None or not self._keys("SELECT key FROM Cache WHERE key = ? LIMIT 1", (key,)):
            return None
        return parsed

    def _get(self, key: str) -> object:
        cache = self._require()
        try:
            return cache.get(key)
        except _FAILURES as exc:
            raise _translated("buffer read failed", exc) from exc

    def get(self, key: str) -> bytes | None:
        value = self._get(key)
        return value if isinstance(value, bytes) else None

    def get_int(self, key: str) -> int:
        value = self._get(key)
        return value if isinstance(value, int) else 0

    def get_str(self, key: str) -> str | None:
        value = self._get(key)
        return value if isinstance(value, str) else None

    def put(self, rows: Mapping[str, object]) -> None:
        """Write ``rows`` in one transaction (:class:`DiskFull` if the disk refuses them)."""
        cache = self._require()
        try:
            with cache.transact():
                for key, value in rows.items():
                    cache.set(key, value)
        except _FAILURES as exc:
            raise _translated("buffer write failed", exc) from exc

    def delete(self, keys: list[str], counters: Mapping[str, int]) -> None:
        """Delete ``keys`` and write ``counters`` in one transaction (one fsync)."""
        cache = self._require()
        try:
            with cache.transact():
                for key in keys:
                    cache.delete(key)
                for key, value in counters.items():
                    cache.set(key, value)
        except _FAILURES as exc:
            raise _translated("buffer delete failed", exc) from exc
