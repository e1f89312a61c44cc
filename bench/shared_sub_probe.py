"""What an MQTT 5 broker does with the messages of a shared-subscription member that dies: the ones
it had received but not acknowledged (in flight), and the ones published while it is gone.

    python bench/shared_sub_probe.py [--url mqtt://HOST:PORT] [--count N]

Without ``--url`` it starts a stock mosquitto (Debian's defaults: ``max_queued_messages 1000``,
``max_inflight_messages 20``) on a free port. Two members, ``probe-a`` and ``probe-b``, join
``$share/probe/probe/<run>/#`` with QoS 1 on persistent sessions (clean start off, session expiry
300 s) and manual acknowledgements:

1. N messages are published. B acknowledges what it gets; A acknowledges nothing.
2. A's connection is dropped without DISCONNECT, as a killed process' would be; its last will
   tells the probe that the broker has noticed.
3. N more messages are published (all PUBACKed, so the broker has routed them) while A is away.
4. A comes back with the same client id and acknowledges everything.

It prints, as JSON, which messages each member got in each phase, what A got back, and what never
arrived. Against mosquitto 2.0.11 (docs/INTEROP.md): nothing moves to B; A's unacknowledged and
its share of the messages published while it was away wait in A's session and arrive when A
returns, each once. ``tests/e2e/test_shared_sub_mosquitto.py`` asserts that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._bridge import MosquittoProcess, free_port  # noqa: E402
from bridge.mqtt.connection import MqttConnection  # noqa: E402
from bridge.mqtt.types import ClientSettings, Message, Will  # noqa: E402


class Member:
    """One shared-subscription member on a persistent session; records the numbers it receives and,
    when ``acking``, acknowledges each (also those redelivered before CONNACK handling finished)."""

    def __init__(self, url: str, client_id: str, topic: str, *, acking: bool, group: str = "probe",
                 marker: str | None = None) -> None:
        self.url, self.client_id, self.acking = url, client_id, acking
        self.filter = f"$share/{group}/{topic}/#"
        self.marker = marker  # a plain (not shared) topic: what arrives there follows what was sent before
        self.marks: set[bytes] = set()
        self.got: list[int] = []
        self.conn: MqttConnection | None = None
        self._early: list[Message] = []
        self.session_present = False

    def _on(self, message: Message) -> None:
        if message.topic == self.marker:
            self.marks.add(message.payload)
        else:
            self.got.append(int(message.payload))
        if not self.acking:
            return
        if self.conn is None:
            self._early.append(message)
        else:
            self.conn.ack(message)

    async def join(self, will_topic: str | None = None) -> None:
        settings = ClientSettings(client_id=self.client_id, protocol="5", clean_start=False,
                                  session_expiry_s=300, manual_ack=True,
                                  will=Will(will_topic, b"gone", 1, False) if will_topic else None)
        self.conn = await MqttConnection.open(self.url, settings, on_message=self._on)
        self.session_present = self.conn.info.session_present
        for message in self._early:
            self.conn.ack(message)
        self._early.clear()
        await self.conn.subscribe([(self.filter, 1)] + ([(self.marker, 1)] if self.marker else []))


@dataclass
class Observation:
    broker: str
    count: int
    first_a: list[int] = field(default_factory=list)  # phase 1, A: received, never acknowledged
    first_b: list[int] = field(default_factory=list)
    b_while_a_away: list[int] = field(default_factory=list)  # phase 3, what B got
    a_session_present: bool = False
    a_on_return: list[int] = field(default_factory=list)  # phase 4, everything A got after coming back
    b_after_return: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # published, acknowledged to the publisher, never received
    twice: list[int] = field(default_factory=list)  # received by B and by A after its return

    def summary(self) -> dict[str, object]:
        second = set(range(self.count + 1, 2 * self.count + 1))
        returned = set(self.a_on_return)
        return {
            "unacked_in_flight_went_to_b": sorted(set(self.first_a) & set(self.b_while_a_away + self.b_after_return)),
            "unacked_in_flight_redelivered_to_returning_a": sorted(set(self.first_a) & returned),
            "queued_for_away_a_delivered_on_return": len(second & returned),
            "published_while_a_away_went_to_b": len(second & set(self.b_while_a_away)),
            "missing": len(self.missing),
            "received_twice": len(self.twice),
        }


async def until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every 20 ms until true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def probe(url: str, count: int = 20, *, broker: str = "", timeout: float = 10.0) -> Observation:
    """Run the four phases against the broker at ``url`` (see the module docstring)."""
    run = uuid.uuid4().hex[:8]
    topic, will_topic = f"probe/{run}", f"probe-will/{run}"
    obs = Observation(broker or url, count)
    marker = f"probe-mark/{run}"
    a = Member(url, f"probe-a-{run}", topic, acking=False)
    b = Member(url, f"probe-b-{run}", topic, acking=True, marker=marker)
    will_seen = asyncio.Event()
    pub = await MqttConnection.open(url, ClientSettings(client_id=f"probe-pub-{run}", protocol="5", max_inflight=100),
                                    on_message=lambda m: will_seen.set())
    try:
        await pub.subscribe([(will_topic, 1)])
        await a.join(will_topic)
        await b.join()

        async def publish(numbers: range) -> None:  # a window at a time (the broker's receive maximum)
            window = pub.info.inflight_window
            for start in range(numbers.start, numbers.stop, window):
                await asyncio.gather(*(pub.publish(f"{topic}/x", str(i).encode(), 1)
                                       for i in range(start, min(start + window, numbers.stop))))

        await publish(range(1, count + 1))
        await until(lambda: len(a.got) + len(b.got) >= count, timeout)
        obs.first_a, obs.first_b = sorted(a.got), sorted(b.got)
        assert a.conn is not None
        a.conn.abort("probe: member killed")
        await asyncio.wait_for(will_seen.wait(), timeout)  # the broker knows A is gone
        b.got.clear()
        await publish(range(count + 1, 2 * count + 1))
        everything = set(range(1, 2 * count + 1))
        # a marker on B's own (not shared) topic, published after the burst, reaches B after all of
        # the burst the broker gave B, and after anything it moved from A to B when A went away
        await pub.publish(marker, b"away", 1)
        await until(lambda: b"away" in b.marks, timeout)
        obs.b_while_a_away = sorted(b.got)
        b.got.clear()
        a2 = Member(url, a.client_id, topic, acking=True, marker=marker)
        await a2.join()
        obs.a_session_present = a2.session_present

        def received() -> set[int]:
            return set(obs.first_b) | set(obs.b_while_a_away) | set(b.got) | set(a2.got)

        # likewise: A's session hands it what it kept before the marker published after A's return
        await pub.publish(marker, b"back", 1)
        await until(lambda: b"back" in a2.marks and b"back" in b.marks, timeout)
        obs.a_on_return, obs.b_after_return = sorted(a2.got), sorted(b.got)
        obs.missing = sorted(everything - received())
        obs.twice = sorted(set(a2.got) & (set(obs.first_b) | set(obs.b_while_a_away) | set(b.got)))
        for m in (a2, b):
            if m.conn is not None:
                await m.conn.close()
    finally:
        await pub.close()
    return obs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an MQTT 5 broker with shared subscriptions (default: start mosquitto)")
    parser.add_argument("--count", type=int, default=20, help="messages per phase")
    args = parser.parse_args()
    if args.url:
        obs = asyncio.run(probe(args.url, args.count))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            broker = MosquittoProcess(f"listener {port} 127.0.0.1\nallow_anonymous true\n", port, Path(tmp))
            try:
                broker.wait_listening()
                obs = asyncio.run(probe(f"mqtt://127.0.0.1:{port}", args.count, broker="mosquitto (stock config)"))
            finally:
                broker.stop()
    print(json.dumps({"summary": obs.summary(), **asdict(obs)}, indent=1))


if __name__ == "__main__":
    main()
