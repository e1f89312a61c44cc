"""The typed snapshot: a copy taken when it is built, read-only, handed to other threads whole, and
serialised to the documented JSON layout (docs/PROTOCOL.md, "Stats"; the status file)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.observe.accounting import Accounting
from gateway.observe.snapshot import DrainBlock, FilesUpBlock, Snapshot, to_plain
from gateway.observe.stats import SnapshotBoard

# the stats message's layout: top-level keys and each block's keys, in order
LAYOUT = {
    "": ["gateway", "accounting", "rejects", "buffer", "disk", "uplink", "budget", "connected_clients",
         "alert_latency", "ingest_queue", "commands", "internal_errors", "config_version", "config_push",
         "security", "device_files", "ready", "clock", "files_up", "downloads"],
    "accounting": ["readings_in", "restored", "delivered", "filtered", "dropped", "buffered", "pending",
                   "messages_in", "batches_written", "batches_delivered", "bytes_up_telemetry", "bytes_up_control",
                   "alerts", "events", "responses", "control_written", "control_delivered", "control_dropped"],
    "disk": ["full_events", "control_held_in_memory", "unclean_start", "unclean_starts", "skipped_seqs", "stream",
             "new_stream_reason"],
    "uplink": ["connected", "endpoint", "connects", "watchdog_trips", "last_error", "previous_error", "drain",
               "offline_s"],
    "alert_latency": ["buckets", "sum_s", "count"],
    "commands": ["received", "forwarded", "held", "duplicates", "answered", "rejected", "responses_matched",
                 "responses_unmatched", "responses_forged", "forgotten", "ignored", "round_trip", "cleared"],
    "config_push": ["applied", "rejected", "stale", "load_errors", "cleared"],
    "security": ["auth", "denied", "authenticated_connects", "devices_with_password", "revoked_certificates",
                 "credential_reloads", "credential_reload_errors"],
    "device_files": ["files", "chunks", "bytes", "duplicates", "under_way", "queued", "rejected", "answers_failed",
                     "internal_errors"],
    "ready": ["local_broker", "buffer"],
    "clock": ["synced", "floor_date", "sync_file", "jumps", "last_jump_s", "receive_stamped_unsynced",
              "window_not_judged"],
    "downloads": ["received", "received_again", "failed", "rejected", "chunks", "duplicates", "bytes", "missing_sent",
                  "unanswered", "in_progress", "bytes_in_use"],
}


def test_the_document_keeps_the_documented_layout() -> None:
    doc = Snapshot("gw").as_dict()
    for block, keys in LAYOUT.items():
        assert list((doc[block] if block else doc).keys()) == keys, block
    assert list(doc["uplink"]["drain"]) == ["backlog_readings", "rate_readings_s", "eta_s"]
    assert doc["files_up"] is None  # files.enabled = false
    assert list(to_plain(FilesUpBlock())) == [
        "transfers", "sending_bytes", "waiting_for_space", "queued", "sent", "stored", "failed", "expired",
        "chunks_sent", "chunks_resent", "manifests_sent", "bytes", "receipts", "rejected", "receipts_rejected",
        "chunks_read_ahead", "not_taken", "scan_errors"]


counts = st.dictionaries(st.sampled_from(["overflow", "expired", "bad_json", "deadband"]), st.integers(0, 10**9))


@given(st.integers(0, 10**12), st.integers(0, 10**12), counts, counts, counts)
def test_accounting_serialises_every_counter_as_json(readings_in: int, delivered: int, filtered: dict[str, int],
                                                      dropped: dict[str, int], control_dropped: dict[str, int]) -> None:
    acc = Accounting(readings_in=readings_in, delivered=delivered, filtered=Counter(filtered),
                     dropped=Counter(dropped), control_dropped=Counter(control_dropped),
                     buffered_fn=lambda: 7, pending_fn=lambda: 3, restored_fn=lambda: 2)
    doc = json.loads(json.dumps(Snapshot("gw", accounting=acc.snapshot()).as_dict()))["accounting"]
    assert (doc["readings_in"], doc["delivered"], doc["buffered"], doc["pending"], doc["restored"]) == (
        readings_in, delivered, 7, 3, 2)
    assert (doc["filtered"], doc["dropped"], doc["control_dropped"]) == (filtered, dropped, control_dropped)


@given(st.integers(0, 10**9), st.floats(0, 10**6, allow_nan=False))
def test_the_drain_eta_is_the_backlog_at_the_current_rate(backlog: int, rate: float) -> None:
    drain = DrainBlock.at_rate(backlog, rate)
    assert drain.rate_readings_s == round(rate, 1)
    if rate > 0 and backlog:
        assert drain.eta_s == round(backlog / rate, 1)
    else:
        assert drain.eta_s is None


def test_the_board_is_a_copy_taken_at_refresh() -> None:
    acc = Accounting(readings_in=1, dropped=Counter({"x": 1}))
    board = SnapshotBoard()
    assert board.latest() is None and board.age_s() is None
    board.refresh(lambda: Snapshot("gw", accounting=acc.snapshot()))
    latest = board.latest()
    assert latest is not None
    _ts, snap = latest
    acc.readings_in = 2
    acc.dropped["x"] = 5
    acc.dropped["y"] = 1
    assert snap.accounting.readings_in == 1 and dict(snap.accounting.dropped) == {"x": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.accounting.readings_in = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.accounting.dropped["x"] = 3  # type: ignore[index]


def test_plain_form_turns_tuples_into_lists_and_mappings_into_dicts() -> None:
    assert to_plain({"a": (1, (2, 3)), "b": DrainBlock(5, 1.0, 5.0)}) == {
        "a": [1, [2, 3]], "b": {"backlog_readings": 5, "rate_readings_s": 1.0, "eta_s": 5.0}}
