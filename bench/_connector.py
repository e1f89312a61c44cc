"""Connect storm for bench/connect_rate.py: a separate process opening N MQTT 3.1.1 connections at
once (raw asyncio streams: no thread per client) and waiting for every CONNACK.

    python bench/_connector.py HOST PORT CREDENTIALS_FILE [CA_FILE CERT_DIR]

CREDENTIALS_FILE has ``device_id:password`` lines (password may be empty: no login). With CA_FILE
and CERT_DIR each device connects over TLS with CERT_DIR/ID.pem and ID.key. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from pathlib import Path


def _str(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, password: str | None) -> bytes:
    flags = 0x02 | (0xC0 if password else 0)
    body = _str("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + _str(client_id)
    if password:
        body += _str(client_id) + _str(password)
    return bytes([0x10, len(body)]) + body if len(body) < 128 else bytes([0x10, (len(body) & 0x7F) | 0x80,
                                                                         len(body) >> 7]) + body


async def one(host: str, port: int, device: str, password: str | None,
              ctx: ssl.SSLContext | None) -> tuple[bool, float, asyncio.StreamWriter | None]:
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        writer.write(connect_packet(device, password))
        connack = await asyncio.wait_for(reader.readexactly(4), 120)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        return False, time.perf_counter() - start, None
    return connack[3] == 0, time.perf_counter() - start, writer


async def main(host: str, port: int, devices: list[list[str]], ca: str | None, cert_dir: str | None) -> None:

    def ctx_for(device: str) -> ssl.SSLContext | None:
        if ca is None or cert_dir is None:
            return None
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(f"{cert_dir}/{device}.pem", f"{cert_dir}/{device}.key")
        return ctx

    contexts = {d: ctx_for(d) for d, _ in devices}
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(host, port, d, pw or None, contexts[d]) for d, pw in devices))
    elapsed = time.perf_counter() - t0
    latencies = sorted(r[1] for r in results)
    print(json.dumps({"devices": len(devices), "accepted": sum(r[0] for r in results), "seconds": round(elapsed, 3),
                      "connects_s": round(len(devices) / elapsed, 1),
                      "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
                      "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1)}), flush=True)
    for _ok, _t, writer in results:
        if writer is not None:
            writer.close()


if __name__ == "__main__":
    lines = [line.split(":", 1) for line in Path(sys.argv[3]).read_text().splitlines() if line]
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), lines, *(sys.argv[4:6] or (None, None))))
