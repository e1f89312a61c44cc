"""A few lines of MQTT for stand-in brokers that misbehave on purpose (the real brokers can't)."""

from __future__ import annotations

import asyncio


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT control packet: its first header byte and its body (raises IncompleteReadError at EOF)."""
    head = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return head, await reader.readexactly(length)


def publish_topic_and_id(body: bytes) -> tuple[str, bytes]:
    """Topic and packet id of a QoS 1/2 PUBLISH body."""
    n = int.from_bytes(body[:2], "big")
    return body[2:2 + n].decode(), body[2 + n:4 + n]
