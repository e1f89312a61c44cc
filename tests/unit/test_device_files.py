"""Device file uploads without a broker: the topic contract, the manifest checks, the receiver's
limits, expiry and restart, and the ACL derived from [topics]."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol.files import FileRejected
from gateway.config import parse_config
from gateway.config_sections import TopicsSection
from gateway.errors import ConfigError
from gateway.files.device_contract import DeviceFileTopics, FileMessage, decode_device_manifest, encode_status
from gateway.files.device_intake import DeviceIntake
from gateway.files.device_receiver import DEVICE_FILE_REASONS, DeviceReceiver, Limits
from gateway.files.device_staging import DeviceUpload
from gateway.source.local import acl_policy
from tests.support import FakeClock

LIMITS = Limits(enabled=True, max_file_bytes=1 << 20, max_disk_bytes=1 << 24, timeout_s=600.0)
DATA = os.urandom(5000)
MANIFEST = {"name": "a.bin", "size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest(), "chunk_size": 1024}


def manifest(**changes: Any) -> bytes:
    return json.dumps({**MANIFEST, **changes}).encode()


def test_the_file_topics_and_the_cheap_test() -> None:
    topics = DeviceFileTopics(TopicsSection())
    assert topics.needle == "/files/"
    assert topics.parse("devices/d1/files/f1/manifest") == FileMessage("manifest", "d1", "f1")
    assert topics.parse("devices/d1/files/f1/chunk/12") == FileMessage("chunk", "d1", "f1", 12)
    for bad_index in ("+1", "x", "1e3", "٣", "123456"):
        assert topics.parse(f"devices/d1/files/f1/chunk/{bad_index}") == FileMessage("chunk", "d1", "f1", -1)
    for other in ("devices/d1/telemetry", "devices/d1/files/f1/status", "devices/d1/files/f1", "devices/d1/files"):
        assert topics.parse(other) is None
    assert topics.subscriptions() == ["devices/+/files/+/manifest", "devices/+/files/+/chunk/+"]
    odd = DeviceFileTopics(TopicsSection(file_manifest="{device_id}/{file_id}/m",
                                         file_chunk="{device_id}/{file_id}/c/{index}",
                                         file_status="{device_id}/{file_id}/s"))
    assert odd.needle == "" and odd.parse("d1/f1/c/0") == FileMessage("chunk", "d1", "f1", 0)


def test_file_topic_patterns_must_name_their_levels() -> None:
    with pytest.raises(ConfigError):
        parse_config({"topics": {"file_chunk": "devices/{device_id}/files/{file_id}/chunk"}}, "<test>")
    with pytest.raises(ConfigError):
        parse_config({"topics": {"file_status": "devices/{device_id}/files/{file_id}/manifest"}}, "<test>")


@pytest.mark.parametrize(("payload", "reason"), [
    (b"not json", "malformed"), (b"[]", "malformed"), (manifest(v=2), "bad_version"),
    (manifest(name="../x"), "bad_name"), (manifest(name=".hidden"), "bad_name"), (manifest(size=2 << 20), "too_large"),
    (manifest(size=-1), "malformed"), (manifest(size=True), "malformed"), (manifest(chunk_size=1023), "malformed"),
    (manifest(chunk_size=(1 << 20) + 1), "too_large"), (manifest(sha256="AB" * 32), "malformed"),
    (manifest(meta={"k": "v" * 5000}), "malformed"), (manifest(content_type=""), "malformed"),
    (b" " * 9000, "too_large"),
])
def test_a_bad_manifest_is_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(FileRejected) as info:
        decode_device_manifest(payload, 1 << 20)
    assert info.value.reason == reason


def test_status_messages() -> None:
    assert json.loads(encode_status("missing", [0, 1, 2, 7])) == {"state": "missing", "chunks": [[0, 2], [7, 7]],
                                                                  "manifest": False}
    assert json.loads(encode_status("failed", reason="too_large")) == {"state": "failed", "reason": "too_large"}
    assert json.loads(encode_status("complete")) == {"state": "complete"}


class Calls(list[tuple[str, str]]):
    def __call__(self, path: Path, name: str, _ct: str, _meta: Mapping[str, Any], device: str) -> None:
        assert path.read_bytes() == DATA
        self.append((name, device))


def receiver(tmp_path: Path, limits: Limits = LIMITS, on_file: Any = None, used: int = 0,
             clock: FakeClock[float] | None = None) -> DeviceReceiver:
    return DeviceReceiver(tmp_path / "devices", DeviceFileTopics(TopicsSection()), limits,
                          on_file if on_file is not None else Calls(), lambda: used, clock or time.time)


def ask(r: DeviceReceiver, payload: bytes, device: str = "d1", file_id: str = "f1") -> dict[str, Any]:
    (topic, answer), = r.handle(FileMessage("manifest", device, file_id), payload)
    assert topic == f"devices/{device}/files/{file_id}/status"
    result: dict[str, Any] = json.loads(answer)
    return result


def chunk(r: DeviceReceiver, index: int, data: bytes | None = None) -> list[dict[str, Any]]:
    part = DATA[index * 1024:(index + 1) * 1024] if data is None else data
    return [json.loads(a) for _t, a in r.handle(FileMessage("chunk", "d1", "f1", index), part)]


def test_a_restarted_gateway_resumes_an_upload_from_disk(tmp_path: Path) -> None:
    first = receiver(tmp_path)
    assert ask(first, manifest()) == {"state": "accepted", "chunks": [[0, 4]], "manifest": False}
    assert chunk(first, 0) == [] and chunk(first, 3) == [] and chunk(first, 3) == []
    assert first.duplicates == 1
    assert chunk(first, 9) == [] and chunk(first, 1, b"short") == []  # outside the file, wrong length: counted
    assert first.rejected == {"bad_chunk": 2}
    calls = Calls()
    second = receiver(tmp_path, on_file=calls)
    second.load()
    assert ask(second, manifest()) == {"state": "missing", "chunks": [[1, 2], [4, 4]], "manifest": False}
    assert [chunk(second, i) for i in (1, 2, 4)] == [[], [], [{"state": "complete"}]]
    assert calls == [("a.bin", "d1")]
    assert [p.name for p in (tmp_path / "devices" / "d1").iterdir()] == ["f1.done"]


def test_an_upload_whose_chunks_were_all_in_at_a_crash_is_finished_by_the_next_manifest(tmp_path: Path) -> None:
    work = tmp_path / "devices" / "d1"
    upload = DeviceUpload.open(work, "f1", decode_device_manifest(manifest(), 1 << 20))
    for i in range(5):
        upload.write(i, DATA[i * 1024:(i + 1) * 1024])  # the gateway stopped before it checked the whole
    calls = Calls()
    r = receiver(tmp_path, on_file=calls)
    r.load()
    assert ask(r, manifest()) == {"state": "complete"} and calls == [("a.bin", "d1")]


def test_limits_budget_busy_and_disabled(tmp_path: Path) -> None:
    full = receiver(tmp_path, used=LIMITS.max_disk_bytes - 100)
    assert ask(full, manifest()) == {"state": "failed", "reason": "no_space"}
    many = receiver(tmp_path)
    for n in range(8):
        assert ask(many, manifest(), file_id=f"f{n}")["state"] == "accepted"
    assert ask(many, manifest(), file_id="f9") == {"state": "failed", "reason": "busy"}
    assert ask(many, manifest(), device="d2")["state"] == "accepted"  # another device is not held up
    off = receiver(tmp_path, limits=Limits(False, 1 << 20, 1 << 24, 600.0))
    assert ask(off, manifest()) == {"state": "failed", "reason": "disabled"}
    assert off.handle(FileMessage("manifest", "d1", "f1"), manifest()) == []  # unasked answers: once a second
    assert off.rejected["disabled"] == 2
    assert receiver(tmp_path).handle(FileMessage("manifest", "..", "f1"), manifest()) == []


def test_a_device_flooding_zero_byte_files_is_held_to_its_hourly_count(tmp_path: Path) -> None:
    empty = manifest(name="e.bin", size=0, sha256=hashlib.sha256(b"").hexdigest())
    clock, calls = FakeClock(time.time()), Calls()
    limits = Limits(True, 1 << 20, 1 << 24, 600.0, max_files_per_hour=3)
    r = DeviceReceiver(tmp_path / "devices", DeviceFileTopics(TopicsSection()), limits,
                       lambda path, name, _ct, _meta, device: calls.append((name, device)), lambda: 0, clock)
    assert [ask(r, empty, file_id=f"z{n}") for n in range(3)] == [{"state": "complete"}] * 3
    assert ask(r, empty, file_id="z3") == {"state": "failed", "reason": "busy"}
    assert ask(r, manifest(), file_id="big") == {"state": "failed", "reason": "busy"}  # any file, not only empty
    assert ask(r, empty, device="d2", file_id="z0") == {"state": "complete"}  # another device is not held up
    assert ask(r, empty, file_id="z0") == {"state": "complete"}  # a repeated manifest hands nothing on
    assert (len(calls), r.files, r.rejected["busy"]) == (4, 4, 2)
    clock.advance(3600.5)  # an hour after the first ones
    assert ask(r, empty, file_id="z4") == {"state": "complete"} and len(calls) == 5
    assert parse_config({}, "<test>").files.max_device_files_per_hour == 60


def test_a_refusal_by_the_callback_reaches_the_device_and_leaves_nothing(tmp_path: Path) -> None:
    def refuse(*_args: Any) -> None:
        raise FileRejected("no_space", "the outbox is full")

    r = receiver(tmp_path, on_file=refuse)
    ask(r, manifest())
    assert [chunk(r, i) for i in range(5)][-1] == [{"state": "failed", "reason": "no_space"}]
    assert not [p for p in (tmp_path / "devices").rglob("*") if p.is_file()]


def test_idle_uploads_expire_and_are_counted(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    r = receiver(tmp_path, clock=clock)
    ask(r, manifest())
    chunk(r, 0)
    assert r.expire() == 0
    clock.advance(LIMITS.timeout_s + 1)
    assert r.expire() == 1 and r.rejected["expired"] == 1 and r.under_way == 0
    assert DeviceUpload.under_way(tmp_path / "devices" / "d1") == []
    assert chunk(r, 1) == [{"state": "missing", "chunks": [], "manifest": True}]


def test_the_default_acl_confines_file_topics_to_their_device() -> None:
    cfg = parse_config({}, "<test>")
    grants = acl_policy(cfg).grants("d1")
    assert grants.may_publish("devices/d1/files/f1/manifest") and grants.may_publish("devices/d1/files/f1/chunk/0")
    assert not grants.may_publish("devices/d2/files/f1/chunk/0")
    assert not grants.may_publish("devices/d1/files/f1/status")
    assert grants.may_subscribe("devices/d1/files/+/status") and not grants.may_subscribe("devices/+/files/+/status")
    assert not grants.may_subscribe("devices/d1/files/+/chunk/+")
    off = acl_policy(parse_config({"files": {"device_uploads": False}}, "<test>")).grants("d1")
    assert not off.may_publish("devices/d1/files/f1/manifest") and not off.may_subscribe("devices/d1/files/+/status")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
    st.sampled_from(["name", "size", "sha256", "chunk_size", "content_type", "meta", "v"]),
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80) | st.lists(st.integers()))))
def test_any_manifest_payload_is_a_manifest_or_a_counted_refusal(payload: bytes) -> None:
    reason = None
    try:
        decode_device_manifest(payload, 1 << 20)
    except FileRejected as exc:
        reason = exc.reason
    assert reason is None or reason in DEVICE_FILE_REASONS


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="devices/fil+#chunkmanifest0123.-_ \x00", max_size=60))
def test_any_topic_parses_or_is_left_to_ingest(topic: str) -> None:
    msg = DeviceFileTopics(TopicsSection()).parse(topic)
    assert msg is None or (msg.part in ("manifest", "chunk") and "/" not in msg.device + msg.file_id)


def test_a_full_intake_queue_drops_and_counts_but_telemetry_passes() -> None:
    telemetry: list[str] = []

    async def nowhere(_t: str, _p: bytes) -> None:
        return None

    intake = DeviceIntake(receiver(Path("/nonexistent")), nowhere, max_queued=2)
    route = intake.route(lambda topic, _p: telemetry.append(topic))
    for i in range(3):
        route(f"devices/d1/files/f1/chunk/{i}", b"x")
    route("devices/d1/telemetry", b"{}")
    assert len(intake) == 2 and intake.receiver.rejected == {"overflow": 1}
    assert telemetry == ["devices/d1/telemetry"]
