"""The buffer's stream id and crash detection.

The stream id is a random id born with the buffer and stored in it (row ``stream``), carried in
every record it holds, so ``(gateway, stream, lane, seq)`` names a record forever. A stream
continues only while the buffer provably continues the same history: a clean stop writes the
identity of the database file (device, inode, size, modification and change times) next to it
(file ``closed``), and the next open keeps the stream only if the file is exactly that one,
untouched. A new or wiped data dir, a crash, or a dir copied or restored from a backup (any write
changes the file's change time) starts a new stream; records already on disk keep the stream they
were written with. The file ``running`` exists while the buffer is open: found at open, the last
run crashed (kill -9, power loss); the row ``unclean_starts`` counts how often that happened.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from pathlib import Path

from gateway.store.rows import DB_FILE, STREAM_KEY, UNCLEAN_STARTS_KEY, Rows

log = logging.getLogger(__name__)

RUNNING_MARKER = "running"  # present while the buffer is open: found at open = the last run crashed
CLOSED_MARKER = "closed"  # written by a clean close: the stream and the database file's identity


class Stream:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self.id = ""  # set by open(): the stream id of the records written from now on
        self.new_stream_reason = ""  # why open() started a new stream ("" = it continued the last one)
        self.unclean_start = False  # the previous run did not close the buffer (kill -9, crash, power)
        self.unclean_starts = 0  # how often that happened, over the life of this buffer
        self._continued: str | None = None

    def before_open(self) -> None:
        """Read (and remove) what the last clean close left, before SQLite touches the file."""
        self._continued = self._continued_stream()
        self.unclean_start = (self._dir / RUNNING_MARKER).exists()

    def _db_identity(self) -> dict[str, int] | None:
        try:
            st = (self._dir / DB_FILE).stat()
        except FileNotFoundError:
            return None
        return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "ctime_ns": st.st_ctime_ns}

    def _continued_stream(self) -> str | None:
        """The stream a clean close left, if the database file is still exactly the one it closed
        (and the last run did stop cleanly); else None, with the reason in ``new_stream_reason``."""
        closed = self._dir / CLOSED_MARKER
        identity = self._db_identity()
        try:
            record = json.loads(closed.read_text()) if closed.exists() else None
            closed.unlink(missing_ok=True)  # from now on only this run's clean close may vouch
        except (OSError, ValueError):
            record = None
        if identity is None:
            self.new_stream_reason = "new buffer"
        elif (self._dir / RUNNING_MARKER).exists():
            self.new_stream_reason = "the previous run did not stop cleanly"
        elif not isinstance(record, dict) or record.get("db") != identity:
            self.new_stream_reason = "the data dir was copied, restored or changed while stopped"
        elif isinstance(stream := record.get("stream"), str) and stream:
            return stream
        else:
            self.new_stream_reason = "no stream recorded"
        return None

    def count_unclean_start(self, rows: Rows) -> None:
        """Once the database is open: count a crash found by :meth:`before_open`."""
        self.unclean_starts = rows.get_int(UNCLEAN_STARTS_KEY)
        if self.unclean_start:
            self.unclean_starts += 1
            rows.put({UNCLEAN_STARTS_KEY: self.unclean_starts})

    def open(self, rows: Rows, next_seq: Mapping[str, int]) -> None:
        """Continue the last stream or start a new one, and mark the buffer as open."""
        if self._continued is not None and rows.get_str(STREAM_KEY) == self._continued:
            self.id, self.new_stream_reason = self._continued, ""
        else:
            self.new_stream_reason = self.new_stream_reason or "stream id missing from the buffer"
            self.id = secrets.token_hex(8)
            rows.put({STREAM_KEY: self.id})
            log.info("buffer starts stream %s (%s); sequence numbers continue from %s", self.id,
                     self.new_stream_reason, dict(next_seq))
        (self._dir / RUNNING_MARKER).write_text("the gateway has this buffer open\n")

    def mark_stopped(self) -> None:
        """A clean stop: the buffer no longer counts as open (before the database closes)."""
        (self._dir / RUNNING_MARKER).unlink(missing_ok=True)

    def write_closed(self) -> None:
        """After a clean close: the stream and the identity of the database file as it is now."""
        try:
            (self._dir / CLOSED_MARKER).write_text(json.dumps({"stream": self.id, "db": self._db_identity()}))
        except OSError as exc:  # the next start begins a new stream: safe
            log.warning("could not record the clean stop (the next start begins a new stream): %s", exc)
