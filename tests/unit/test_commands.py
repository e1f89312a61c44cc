"""gateway.control.commands: allowlist, duplicates, holding, expiry, response matching (injected clocks)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol.commands import RETAINED, Command, CommandRejected
from gateway.config import DownlinkSection
from gateway.control.answered import AnsweredCommands
from gateway.control.commands import CommandRouter, device_response
from gateway.source.access import topic_matches
from tests.support import FakeClock


class Rig:
    def __init__(self, present: set[str] | None = None, **cfg: Any) -> None:
        self.clock = FakeClock(1000.0)
        self.present = present if present is not None else set()
        self.sent: list[tuple[str, bytes]] = []
        self.answers: list[dict[str, Any]] = []
        self.router = CommandRouter(
            DownlinkSection(**cfg), "devices/{device_id}/commands/{name}", deliver=self.deliver,
            answer=lambda rec: self.answers.append(asdict(rec)), has_subscriber=lambda t, _level: t in self.present,
            wall=self.clock, monotonic=self.clock,
        )

    async def deliver(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))

    async def settle(self) -> None:
        """One pass of the router's loop: release / expire held commands, deliver."""
        self.router.tick()
        await self.router.flush()


async def test_allowlist_duplicates_and_delivery() -> None:
    rig = Rig(present={"devices/d1/commands/ping"})
    r = rig.router
    r.handle(Command("d1", "ping", "a"))
    r.handle(Command("d1", "ping", "a"))  # QoS 1 redelivery
    r.handle(Command("d1", "self_destruct", "b"))
    r.handle(CommandRejected("x", "y/z", None, "bad_topic", "levels"))
    await rig.settle()
    assert rig.sent == [("devices/d1/commands/ping", b'{"id":"a","args":{}}')]
    assert [(a["id"], a["status"], a["result"]["reason"]) for a in rig.answers] == [
        ("b", "rejected", "not_allowed"), (None, "rejected", "bad_topic")]
    assert r.counters.duplicates == 1 and r.counters.forwarded == 1
    rig.clock.now += 0.25
    rec = r.device_response("d1", {"id": "a", "status": "ok", "result": {"ts": 1}})
    assert rec is not None and (rec.command, rec.rtt_ms, rec.source, rec.status) == ("ping", 250.0, "device", "ok")
    again = r.device_response("d1", {"id": "a", "status": "ok"})  # no longer tracked
    assert again is not None and (again.command, again.rtt_ms) == (None, None)
    assert r.counters.responses_matched == 1 and r.counters.responses_unmatched == 1


async def test_held_command_expires_or_gives_up_or_is_released() -> None:
    rig = Rig(hold_offline_s=10)
    r = rig.router
    r.handle(Command("d1", "ping", "exp", expires=1005.0))
    r.handle(Command("d2", "ping", "gone"))
    r.handle(Command("d3", "ping", "later"))
    assert r.held == 3
    rig.clock.now = 1006.0
    await rig.settle()
    assert [(a["id"], a["status"]) for a in rig.answers] == [("exp", "expired")]
    rig.present.add("devices/d3/commands/ping")
    r.presence_changed()
    await rig.settle()
    assert rig.sent == [("devices/d3/commands/ping", b'{"id":"later","args":{}}')]
    rig.clock.now = 1010.0
    await rig.settle()
    assert [(a["id"], a["status"]) for a in rig.answers][1:] == [("gone", "undeliverable")]
    assert r.held == 0


async def test_stopping_answers_every_held_command() -> None:
    rig = Rig(hold_offline_s=60)
    rig.router.handle(Command("d1", "ping", "h"))
    stop = asyncio.Event()
    stop.set()
    await rig.router.run(stop)
    assert [(a["id"], a["status"], a["result"]["reason"]) for a in rig.answers] == [
        ("h", "undeliverable", "the gateway is stopping")]
    # the uplink stays up a little longer than the router: a late command still gets its answer
    rig.present.add("devices/d1/commands/ping")
    rig.router.handle(Command("d1", "ping", "late"))
    assert [(a["id"], a["status"]) for a in rig.answers[1:]] == [("late", "undeliverable")]
    assert rig.sent == [] and rig.router.held == 0


async def test_tracking_is_forgotten_after_track_responses_s() -> None:
    rig = Rig(present={"devices/d1/commands/ping"}, track_responses_s=5)
    rig.router.handle(Command("d1", "ping", 1))
    await rig.settle()
    rig.clock.now += 6
    await rig.settle()
    assert rig.router.counters.forgotten == 1
    answer = rig.router.device_response("d1", {"id": 1, "status": "ok"})
    assert answer is not None and answer.rtt_ms is None


def test_device_response_with_a_bad_status_becomes_an_error() -> None:
    rec = device_response("d1", {"id": "x", "status": "weird", "result": 5})
    assert rec.status == "error" and rec.result["device_result"] == 5
    assert device_response("d1", {"status": "ok"}).id is None


def test_topic_matches() -> None:
    assert topic_matches("devices/+/commands/+", "devices/d1/commands/ping")
    assert topic_matches("devices/#", "devices/d1/commands/ping")
    assert topic_matches("#", "devices/d1")
    assert not topic_matches("devices/+/commands/+", "devices/d1/commands")
    assert not topic_matches("devices/d2/commands/+", "devices/d1/commands/ping")
    assert not topic_matches("#", "$SYS/x")
    assert topic_matches("devices/d1/commands/ping", "devices/d1/commands/ping")


@pytest.mark.parametrize(("topic_filter", "counts"), [
    ("devices/d1/commands/+", True), ("devices/d1/commands/#", True), ("devices/d1/#", True),
    ("devices/d1/commands/ping", True), ("+/d1/commands/+", True),
    ("devices/+/commands/ping", False), ("devices/+/commands/+", False), ("devices/#", False), ("#", False),
    ("+/+/commands/ping", False), ("devices/d2/commands/+", False),
])
def test_presence_counts_only_filters_that_name_the_device(topic_filter: str, counts: bool) -> None:
    topic = "devices/d1/commands/ping"
    assert topic_matches(topic_filter, topic) is (topic_filter != "devices/d2/commands/+")
    assert topic_matches(topic_filter, topic, literal_level=1) is counts


@given(st.lists(st.sampled_from(["a", "d1", "+", "#"]), min_size=1, max_size=5),
       st.lists(st.sampled_from(["a", "d1"]), min_size=1, max_size=5), st.integers(0, 5))
def test_a_literal_level_only_narrows_matching(want: list[str], got: list[str], level: int) -> None:
    topic_filter, topic = "/".join(want), "/".join(got)
    narrowed = topic_matches(topic_filter, topic, literal_level=level)
    assert narrowed <= topic_matches(topic_filter, topic)
    if narrowed:
        assert want[level] == got[level]


def rejected(device: str, cid: Any, reason: str = RETAINED) -> CommandRejected:
    return CommandRejected(device, "ping", cid, reason, "detail")


async def test_a_retained_command_is_answered_once_and_one_without_id_never() -> None:
    rig = Rig(present={"devices/d1/commands/ping"})
    r = rig.router
    r.handle(rejected("d1", "r1"))
    r.handle(rejected("d1", "r1"))  # handed out again on the next subscribe
    r.handle(Command("d1", "ping", "r1"))  # the same command live (a 3.1.1 broker cleared the flag)
    r.handle(rejected("d1", None))  # no id: nobody to answer
    await rig.settle()
    assert [(a["id"], a["status"], a["result"]["reason"]) for a in rig.answers] == [("r1", "rejected", "retained")]
    assert rig.sent == []
    assert r.counters.duplicates == 2 and r.counters.ignored == {"retained_without_id": 1}


async def test_settled_commands_are_not_answered_again_after_a_restart(tmp_path: Path) -> None:
    def router(rig: Rig) -> AnsweredCommands:
        answered = AnsweredCommands(tmp_path / "answered.jsonl")
        answered.open()
        rig.router = CommandRouter(
            DownlinkSection(hold_offline_s=0), "devices/{device_id}/commands/{name}", deliver=rig.deliver,
            answer=lambda rec: rig.answers.append(asdict(rec)), has_subscriber=lambda t, _l: t in rig.present,
            answered=answered, wall=rig.clock, monotonic=rig.clock)
        return answered

    first = Rig(present={"devices/d1/commands/ping"})
    answered = router(first)
    first.router.handle(Command("d1", "ping", "fwd"))  # forwarded: the device answers it
    first.router.handle(Command("d2", "ping", 7))  # d2 is offline: undeliverable
    first.router.handle(Command("d1", "dance", "no"))  # not allowed
    await first.settle()
    assert len(first.sent) == 1 and len(first.answers) == 2
    answered.close()

    second = Rig(present={"devices/d1/commands/ping"})
    answered = router(second)
    for cmd in (Command("d1", "ping", "fwd"), Command("d2", "ping", 7), Command("d1", "dance", "no")):
        second.router.handle(cmd)  # redelivered after the restart
    second.router.handle(rejected("d2", 7))  # or retained
    await second.settle()
    assert second.sent == [] and second.answers == [] and second.router.counters.duplicates == 4
    second.router.handle(Command("d2", "ping", 8))  # a new id is a new command
    assert [a["id"] for a in second.answers] == [8]
    answered.close()


events = st.lists(st.tuples(st.sampled_from(["d1", "d2"]), st.integers(0, 3), st.booleans(), st.booleans()),
                  max_size=30)


@settings(max_examples=150, deadline=None)
@given(events)
def test_every_command_gets_exactly_one_answer_and_a_retained_one_never_runs(
        tmp_path_factory: pytest.TempPathFactory, seq: list[tuple[str, int, bool, bool]]) -> None:
    """Any interleaving of live and retained copies of commands, with restarts in between: each
    ``(device, id)`` is settled once (answered by the gateway, or forwarded for the device to answer),
    and one whose first copy was retained never reaches the device."""
    path = tmp_path_factory.mktemp("answered") / "answered.jsonl"

    async def scenario() -> None:
        rig = Rig(present={"devices/d1/commands/ping"})
        answered: AnsweredCommands | None = None

        def restart() -> None:
            nonlocal answered
            if answered is not None:
                answered.close()
            answered = AnsweredCommands(path)
            answered.open()
            rig.router = CommandRouter(
                DownlinkSection(hold_offline_s=0), "devices/{device_id}/commands/{name}", deliver=rig.deliver,
                answer=lambda rec: rig.answers.append(asdict(rec)), has_subscriber=lambda t, _l: t in rig.present,
                answered=answered, wall=rig.clock, monotonic=rig.clock)

        restart()
        first_retained: dict[tuple[str, int], bool] = {}
        for device, cid, retained, restart_before in seq:
            if restart_before:
                restart()
            first_retained.setdefault((device, cid), retained)
            rig.router.handle(rejected(device, cid) if retained else Command(device, "ping", cid))
            await rig.settle()
        assert answered is not None
        answered.close()
        settled = [(a["device"], a["id"]) for a in rig.answers]
        for topic, payload in rig.sent:
            settled.append((topic.split("/")[1], json.loads(payload)["id"]))
        assert sorted(settled) == sorted(first_retained)  # each exactly once
        for topic, payload in rig.sent:
            assert not first_retained[(topic.split("/")[1], json.loads(payload)["id"])]

    asyncio.run(scenario())
