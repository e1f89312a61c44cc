"""The MQTT 3.1.1 retain check in the uplink adapter: a live message under a checked prefix is
handed on after the broker's retained copy (real brokers: tests/e2e/test_command_answers.py), and
flagged as retained when the link drops before the check completes (a stand-in broker that never
answers the check's SUBSCRIBE, then hangs up)."""

from __future__ import annotations

import asyncio
from typing import Literal

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Message
from tests.e2e.fake_broker import read_packet
from tests.support import Mosquitto, eventually


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    return bytes([0x30, len(body)]) + body  # QoS 0, no retain flag, short body


async def test_a_message_whose_check_cannot_finish_is_handed_on_as_retained() -> None:
    subscribed = asyncio.Event()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, _body = await read_packet(reader)
                if head >> 4 == 1:  # CONNECT -> CONNACK, then a "live" command
                    writer.write(b"\x20\x02\x00\x00" + publish_packet("cmd/d1/ping", b'{"id":1}'))
                elif head >> 4 == 8:  # the check's SUBSCRIBE: no SUBACK, the link goes down
                    subscribed.set()
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    got: list[Message] = []
    conn = await MqttConnection.open(f"mqtt://127.0.0.1:{port}", ClientSettings(
        client_id="check", protocol="3.1.1", retain_check_prefixes=("cmd/",)), on_message=got.append)
    try:
        await eventually(lambda: bool(got))
        assert subscribed.is_set()
        assert [(m.topic, m.payload, m.retain) for m in got] == [("cmd/d1/ping", b'{"id":1}', True)]
    finally:
        await conn.close()
        server.close()
        await server.wait_closed()


async def test_outside_the_prefixes_and_on_mqtt5_nothing_waits(mosquitto: Mosquitto) -> None:
    protocols: tuple[Literal["3.1.1", "5"], ...] = ("3.1.1", "5")
    for protocol in protocols:
        got: list[Message] = []
        conn = await MqttConnection.open(mosquitto.url, ClientSettings(
            client_id=f"check-{protocol}", protocol=protocol, retain_check_prefixes=("cmd/",),
            retain_as_published=True), on_message=got.append)
        pub = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="pub", protocol="3.1.1"))
        try:
            await conn.subscribe([("cmd/#", 1), ("other/#", 1)])
            await pub.publish("other/x", b"a", 1, retain=True)
            await pub.publish("cmd/d1/ping", b"b", 1, retain=True)  # live, published retained
            await pub.publish("cmd/d1/ping", b"c", 1)

            def live_one_arrived(got: list[Message] = got) -> bool:
                return ("cmd/d1/ping", b"c", False) in [(m.topic, m.payload, m.retain) for m in got]

            await eventually(live_one_arrived)
            seen = [(m.topic, m.payload, m.retain) for m in got]
            if protocol == "5":  # Retain As Published: the flag survives live delivery, no check
                assert seen == [("other/x", b"a", True), ("cmd/d1/ping", b"b", True), ("cmd/d1/ping", b"c", False)]
            else:  # the broker cleared the flags; outside the prefix nothing is checked
                assert seen[0] == ("other/x", b"a", False)
                # the check found "b" retained on its topic: the flagged copy comes before the live one
                assert seen.index(("cmd/d1/ping", b"b", True)) < seen.index(("cmd/d1/ping", b"b", False))
                assert ("cmd/d1/ping", b"c", True) not in seen
        finally:
            await pub.publish("cmd/d1/ping", b"", 1, retain=True)
            await pub.publish("other/x", b"", 1, retain=True)
            await pub.close()
            await conn.close()
