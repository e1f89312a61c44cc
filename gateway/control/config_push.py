"""Pushed config: validate, persist, apply and acknowledge documents from ``edge/{gw}/config``.

A document is ``{"version": N, "rules": [...]?, "batch": {...}?}`` (:class:`PushedConfig`). Handling
one, in order:

1. decode and validate it with the same models as the file config -> ``rejected`` with the
   offending keys;
2. a version not newer than the one in force -> ``stale``, nothing changes;
3. write it to the config file atomically (temp file, fsync, rename, fsync of the directory)
   -> ``rejected`` if that fails, nothing changes;
4. apply it: rules, batch limits and compression are swapped in one synchronous step on the event
   loop, between two messages, so the pipeline sees either the old config or the new one.
   The buffer is not touched and the open batch stays open unless it is over the new limits, in
   which case it is written to the telemetry lane at once (no reading is lost);
5. acknowledge on the control lane (``config_status``).

At start the persisted document, if any, is applied over the file config before processing starts.
A file that cannot be read or is invalid is logged, counted and renamed to ``*.bad``; the gateway
then runs on the file config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from bridge.mqtt.types import Message
from bridge.protocol.codec import Compression
from bridge.protocol.model import Reading
from bridge.protocol.records import ConfigStatus, ControlOut
from gateway.config import BatchSection, PushedConfig, RuleSpec, problems_of, read_toml
from gateway.errors import ConfigError, StorageError
from gateway.process.batcher import Batcher
from gateway.process.rules.engine import RuleEngine

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1024 * 1024

APPLIED, REJECTED, STALE, LOAD_ERRORS = "applied", "rejected", "stale", "load_errors"
CLEARED = "cleared"  # empty messages (an operator clearing the retained document): no answer

Problem = tuple[str, str]


class Encoding(Protocol):
    """Where telemetry compression is set (the lane writer)."""

    compression: Compression
    level: int


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(f"key {key!r} appears twice")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number a config may hold")


def decode_document(payload: bytes, source: str) -> dict[str, Any]:
    """JSON bytes -> a dict; raises :class:`ConfigError` for size, syntax or shape."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise ConfigError(source, [("(document)", f"{len(payload)} bytes, the limit is {MAX_DOCUMENT_BYTES}")])
    try:
        data = json.loads(payload, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(source, [("(syntax)", f"not a JSON document: {exc}")]) from exc
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top level)", "must be a JSON object")])
    return data


def validate_document(data: dict[str, Any], source: str) -> PushedConfig:
    """Validate with the file config's models; raises :class:`ConfigError` naming each bad key."""
    try:
        return PushedConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, problems_of(exc)) from exc


def declared_version(data: object) -> int | None:
    """The document's ``version`` if it is an integer (even when the rest is invalid)."""
    v = data.get("version") if isinstance(data, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def document_bytes(doc: PushedConfig) -> bytes:
    """The JSON form of a document: what is pushed, and what is persisted. Raises ValueError for
    nan/inf (TOML has them, JSON does not)."""
    return json.dumps(doc.model_dump(mode="json", exclude_unset=True), separators=(",", ":"),
                      allow_nan=False).encode()


def read_document(path: Path, version: int | None = None) -> PushedConfig:
    """A document from a TOML file (``version`` overrides the file's). Raises :class:`ConfigError`."""
    source = str(path)
    data = read_toml(path)
    if version is not None:
        data["version"] = version
    doc = validate_document(data, source)
    try:
        document_bytes(doc)
    except ValueError as exc:
        raise ConfigError(source, [("(value)", "nan and inf cannot be pushed (JSON has no such numbers)")]) from exc
    return doc


class PushedConfigFile:
    """The last applied document, on disk as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> PushedConfig | None:
        """The persisted document, or None when there is none. Raises :class:`ConfigError`."""
        source = str(self.path)
        try:
            payload = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(source, [("(file)", exc.strerror or str(exc))]) from exc
        return validate_document(decode_document(payload, source), source)

    def save(self, doc: PushedConfig) -> None:
        """Replace the file atomically: a crash leaves the old document or the new one, whole.
        Raises :class:`StorageError`."""
        data = document_bytes(doc)
        directory = self.path.parent
        tmp: str | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def set_aside(self) -> Path | None:
        """Rename the file to ``*.bad`` (replacing an older one); None if that failed too."""
        bad = self.path.with_name(self.path.name + ".bad")
        try:
            os.replace(self.path, bad)
        except OSError as exc:
            log.error("cannot move %s aside: %s", self.path, exc.strerror or exc)
            return None
        return bad


class ConfigPusher:
    """Holds the config version in force and applies pushed documents over the file config."""

    def __init__(
        self,
        store: PushedConfigFile,
        *,
        file_rules: list[RuleSpec],
        file_batch: BatchSection,
        rules: RuleEngine,
        batcher: Batcher,
        encoding: Encoding,
        write_batch: Callable[[list[Reading]], None],
        on_control: ControlOut,
    ) -> None:
        self.store = store
        self._file_rules = file_rules
        self._file_batch = file_batch
        self._rules = rules
        self._batcher = batcher
        self._encoding = encoding
        self._write_batch = write_batch
        self._on_control = on_control
        self.version = 0
        self.counts: Counter[str] = Counter()

    def snapshot(self) -> dict[str, int]:
        return {name: self.counts[name] for name in (APPLIED, REJECTED, STALE, LOAD_ERRORS, CLEARED)}

    # ------------------------------------------------------------------ start

    def load_persisted(self) -> None:
        """Apply the persisted document, if any. Never raises for a bad file: it is logged,
        counted and set aside, and the file config stays in force."""
        try:
            doc = self.store.load()
        except ConfigError as exc:
            self.counts[LOAD_ERRORS] += 1
            bad = self.store.set_aside()
            log.error("ignoring the pushed config (running on the file config; moved to %s):\n%s", bad, exc)
            return
        if doc is not None:
            self._apply(doc)
            log.info("pushed config version %d from %s is in force", doc.version, self.store.path)

    # ------------------------------------------------------------------ push

    def on_config(self, msg: Message) -> None:
        """The downlink router's callback for the config topic (runs on the event loop)."""
        self.handle(msg.payload)

    def handle(self, payload: bytes) -> ConfigStatus | None:
        """Handle one message from the config topic; returns the status record it sent
        (None for an empty payload: that only clears a retained document on the broker)."""
        if not payload:
            self.counts[CLEARED] += 1
            log.info("empty message on the config topic ignored (a retained document was cleared)")
            return None
        source = "pushed config"
        version: int | None = None
        try:
            data = decode_document(payload, source)
            version = declared_version(data)
            doc = validate_document(data, source)
            if doc.version <= self.version:
                return self._ack(doc.version, STALE, [])
            self.store.save(doc)
        except ConfigError as exc:
            return self._ack(version, REJECTED, exc.problems)
        except StorageError as exc:
            return self._ack(version, REJECTED, [("(storage)", str(exc))])
        self._apply(doc)
        return self._ack(doc.version, APPLIED, [])

    def _apply(self, doc: PushedConfig) -> None:
        # Everything is built and validated before the first assignment; the assignments cannot
        # fail, so the pipeline sees the old config or the new one, never a mix.
        rules = list(self._file_rules if doc.rules is None else doc.rules)
        batch = self._file_batch if doc.batch is None else doc.batch
        self._rules.replace_rules(rules)
        self._encoding.compression, self._encoding.level = batch.compression, batch.level
        full = self._batcher.reconfigure(batch.max_count, batch.max_bytes, batch.max_age_s,
                                         outage_max_age_s=batch.outage_max_age_s,
                                         outage_max_count=batch.outage_max_count)
        self.version = doc.version
        if full is not None:
            self._write_batch(full)

    def _ack(self, version: int | None, status: str, problems: list[Problem]) -> ConfigStatus:
        self.counts[status] += 1
        record = ConfigStatus(version=version, status=status,
                              errors=[{"key": key, "reason": reason} for key, reason in problems],
                              current_version=self.version)
        if status == APPLIED:
            log.info("pushed config version %s applied", version)
        else:
            log.warning("pushed config version %s %s%s", version, status,
                        "".join(f"\n  {k}: {r}" for k, r in problems))
        self._on_control(record)
        return record
