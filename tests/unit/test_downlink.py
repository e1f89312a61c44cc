"""bridge.protocol.commands: command parsing and validation; bridge.uplink.downlink: dispatch by topic."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.mqtt.types import Message
from bridge.protocol.commands import (
    BAD_ARGS,
    BAD_DEVICE,
    BAD_EXPIRY,
    BAD_ID,
    BAD_JSON,
    BAD_NAME,
    BAD_TOPIC,
    RETAINED,
    TOO_LARGE,
    Command,
    CommandLimits,
    CommandRejected,
    parse_command,
)
from bridge.protocol.topics import CloudTopics
from bridge.uplink.downlink import DownlinkRouter

NOW = 1_700_000_000.0
LIMITS = CommandLimits(max_bytes=4096)


def parse(suffix: str, body: Any, **kw: Any) -> Command | CommandRejected:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_command(suffix, payload, NOW, LIMITS, **kw)


def rejected(result: Command | CommandRejected) -> CommandRejected:
    assert isinstance(result, CommandRejected), result
    return result


def test_valid_command_with_ttl_becomes_absolute_expiry() -> None:
    cmd = parse("dev-1/set_rate", {"id": "c-1", "args": {"rate_hz": 5}, "ttl_s": 30})
    assert cmd == Command("dev-1", "set_rate", "c-1", {"rate_hz": 5}, NOW + 30)
    assert json.loads(cmd.local_payload()) == {"id": "c-1", "args": {"rate_hz": 5}, "expires": NOW + 30}


def test_minimal_command_and_integer_id() -> None:
    cmd = parse("dev-1/ping", {"id": 7})
    assert cmd == Command("dev-1", "ping", 7, {}, None)
    assert json.loads(cmd.local_payload()) == {"id": 7, "args": {}}
    assert not cmd.expired(NOW + 1e9)


def test_earlier_of_expires_and_ttl_wins() -> None:
    cmd = parse("d/ping", {"id": "x", "expires": NOW + 5, "ttl_s": 60})
    assert isinstance(cmd, Command) and cmd.expires == NOW + 5
    cmd = parse("d/ping", {"id": "x", "expires": NOW + 60, "ttl_s": 5})
    assert isinstance(cmd, Command) and cmd.expires == NOW + 5
    assert cmd.expired(NOW + 5) and not cmd.expired(NOW + 4.9)


@pytest.mark.parametrize(("suffix", "reason", "device", "name"), [
    ("a/b/ping", BAD_TOPIC, "a", "b/ping"),
    ("dev-1", BAD_TOPIC, "dev-1", ""),
    ("", BAD_TOPIC, "", ""),
    ("/ping", BAD_DEVICE, "", "ping"),
    ("dev-1/", BAD_NAME, "dev-1", ""),
    ("+/ping", BAD_DEVICE, "+", "ping"),
    ("#/ping", BAD_DEVICE, "#", "ping"),
    ("dev-1/+", BAD_NAME, "dev-1", "+"),
    ("dev-1/#", BAD_NAME, "dev-1", "#"),
    ("dev 1/ping", BAD_DEVICE, "dev 1", "ping"),
    ("dév/ping", BAD_DEVICE, "dév", "ping"),
    ("x" * 10_000 + "/ping", BAD_DEVICE, "x" * 64, "ping"),
    ("dev-1/" + "n" * 10_000, BAD_NAME, "dev-1", "n" * 64),
    ("d" * 65 + "/ping", BAD_DEVICE, "d" * 64, "ping"),
    ("../ping", BAD_DEVICE, "..", "ping"),
    ("./ping", BAD_DEVICE, ".", "ping"),
    ("dev-1/..", BAD_NAME, "dev-1", ".."),
])
def test_bad_topic_levels_are_rejected_with_truncated_values(suffix: str, reason: str, device: str, name: str) -> None:
    r = rejected(parse(suffix, {"id": "c-9"}))
    assert (r.reason, r.device, r.name, r.id) == (reason, device, name, "c-9")


def test_sixty_four_characters_are_allowed() -> None:
    assert isinstance(parse("d" * 64 + "/" + "n" * 64, {"id": 1}), Command)


@pytest.mark.parametrize(("body", "reason", "cid"), [
    (b"not json", BAD_JSON, None),
    (b"\xff\xfe\x00", BAD_JSON, None),
    (b'{"id": "a", "args": {"x": NaN}}', BAD_JSON, None),
    ([1, 2], BAD_JSON, None),
    ({}, BAD_ID, None),
    ({"id": ""}, BAD_ID, None),
    ({"id": True}, BAD_ID, None),
    ({"id": 1.5}, BAD_ID, None),
    ({"id": None}, BAD_ID, None),
    ({"id": "i" * 65}, BAD_ID, None),
    ({"id": 2**70}, BAD_ID, None),
    ({"id": "a", "args": [1]}, BAD_ARGS, "a"),
    ({"id": "a", "args": "x"}, BAD_ARGS, "a"),
    ({"id": "a", "extra": 1}, BAD_ARGS, "a"),
    ({"id": "a", "expires": "soon"}, BAD_EXPIRY, "a"),
    ({"id": "a", "expires": True}, BAD_EXPIRY, "a"),
    ({"id": "a", "ttl_s": -1}, BAD_EXPIRY, "a"),
    ({"id": "a", "ttl_s": "1"}, BAD_EXPIRY, "a"),
])
def test_bad_payloads_are_rejected_with_the_id_when_readable(body: Any, reason: str, cid: Any) -> None:
    r = rejected(parse("dev-1/ping", body))
    assert (r.reason, r.id, r.device, r.name) == (reason, cid, "dev-1", "ping")


def test_oversized_payload_is_rejected_but_its_id_is_read() -> None:
    body = {"id": "big", "args": {"blob": "x" * 5000}}
    r = rejected(parse("dev-1/ping", body))
    assert (r.reason, r.id) == (TOO_LARGE, "big")
    assert "4096" in r.detail


def test_retained_command_is_rejected() -> None:
    r = rejected(parse("dev-1/ping", {"id": "r"}, retained=True))
    assert (r.reason, r.id) == (RETAINED, "r")


def test_topic_problems_win_over_payload_problems() -> None:
    r = rejected(parse("a/b/c", b"garbage"))
    assert (r.reason, r.id) == (BAD_TOPIC, None)


def msg(topic: str, payload: bytes = b'{"id": 1}', retain: bool = False) -> Message:
    return Message(topic, payload, 1, retain)


def test_router_dispatches_commands_and_config_by_topic() -> None:
    commands: list[Command | CommandRejected] = []
    configs: list[Message] = []
    router = DownlinkRouter(CloudTopics("gw-1"), LIMITS, clock=lambda: NOW,
                            on_command=commands.append, on_config=configs.append)
    assert router.subscriptions() == [("edge/gw-1/commands/#", 1), ("edge/gw-1/config", 1)]
    router(msg("edge/gw-1/commands/dev-1/ping"))
    router(msg("edge/gw-1/commands/a/b/ping"))
    router(msg("edge/gw-1/commands"))
    router(msg("edge/gw-1/commands/dev-1/ping", retain=True))
    router(msg("edge/gw-1/config", b"{}"))
    router(msg("edge/gw-1/config/status"))
    router(msg("edge/gw-2/commands/dev-1/ping"))
    assert commands[0] == Command("dev-1", "ping", 1)
    assert [c.reason for c in commands[1:] if isinstance(c, CommandRejected)] == [BAD_TOPIC, BAD_TOPIC, RETAINED]
    assert [m.topic for m in configs] == ["edge/gw-1/config"]
    assert router.ignored == 2


def test_router_subscribes_only_for_handlers_that_are_set() -> None:
    router = DownlinkRouter(CloudTopics("gw-1"), LIMITS, clock=lambda: NOW)
    assert router.subscriptions() == []
    router(msg("edge/gw-1/commands/dev-1/ping"))
    assert router.ignored == 1
    router.on_config = lambda m: None
    assert router.subscriptions() == [("edge/gw-1/config", 1)]


def test_a_retained_message_is_refused_as_retained_whatever_else_is_wrong() -> None:
    assert rejected(parse("a/b/c", {"id": "x"}, retained=True)).reason == RETAINED
    assert rejected(parse("../ping", b"garbage", retained=True)).reason == RETAINED


def test_empty_messages_on_command_topics_are_cleared_not_answered() -> None:
    commands: list[Command | CommandRejected] = []
    configs: list[Message] = []
    router = DownlinkRouter(CloudTopics("gw-1"), LIMITS, clock=lambda: NOW,
                            on_command=commands.append, on_config=configs.append)
    router(msg("edge/gw-1/commands/dev-1/ping", b"", retain=True))  # an operator clearing a retained command
    router(msg("edge/gw-1/commands/dev-1/ping", b""))  # the same, live on MQTT 3.1.1 (flag cleared)
    router(msg("edge/gw-1/commands/a/b/c", b""))
    router(msg("edge/gw-1/config", b"", retain=True))  # the config pusher ignores and counts these itself
    assert commands == [] and router.cleared == 3
    assert [m.payload for m in configs] == [b""]


def test_upload_receipts_are_routed_only_when_a_handler_is_set() -> None:
    topics = CloudTopics("gw1")
    got: list[str] = []
    router = DownlinkRouter(topics, LIMITS, clock=lambda: NOW, on_file_receipt=lambda m: got.append(m.topic))
    assert router.subscriptions() == [("edge/gw1/files/up/+/receipt", 1)]
    receipt = f"edge/gw1/files/up/{'a' * 32}/receipt"
    for topic in (receipt, f"edge/gw1/files/down/{'a' * 32}/receipt", f"edge/gw1/files/up/{'a' * 32}/chunk"):
        router(Message(topic, b"{}", 1, False))
    assert got == [receipt] and router.ignored == 2
    plain = DownlinkRouter(topics, LIMITS, clock=lambda: NOW)
    plain(Message(receipt, b"{}", 1, False))
    assert plain.subscriptions() == [] and plain.ignored == 1


def test_router_hands_download_messages_to_the_file_handler() -> None:
    files: list[tuple[str, str, bytes]] = []
    router = DownlinkRouter(CloudTopics("gw-1"), LIMITS, clock=lambda: NOW,
                            on_file=lambda file_id, part, payload: files.append((file_id, part, payload)))
    assert router.subscriptions() == [("edge/gw-1/files/down/+/manifest", 1), ("edge/gw-1/files/down/+/chunk", 1)]
    fid = "ab" * 16
    router(msg(f"edge/gw-1/files/down/{fid}/manifest", b"m"))
    router(msg(f"edge/gw-1/files/down/{fid}/chunk", b"c"))
    router(msg("edge/gw-1/files/down/not-an-id/chunk", b"x"))  # the handler checks the id: counted there
    router(msg(f"edge/gw-1/files/down/{fid}/receipt", b"r"))  # receipts are for uploads
    router(msg(f"edge/gw-1/files/down/{fid}/chunk/extra", b"e"))
    router(msg(f"edge/gw-1/files/up/{fid}/chunk", b"u"))
    assert files == [(fid, "manifest", b"m"), (fid, "chunk", b"c"), ("not-an-id", "chunk", b"x")]
    assert router.ignored == 3
