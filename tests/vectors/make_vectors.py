"""Regenerate the golden envelope files. Run only when the format version changes:

    python -m tests.vectors.make_vectors
"""

from __future__ import annotations

import json
from pathlib import Path

from bridge.codec import decode_batch, encode_batch
from bridge.model import Reading

HERE = Path(__file__).resolve().parent

READINGS = [
    Reading("dev-0001", "temperature", 1700000000000, 21.37, 17),
    Reading("dev-0001", "temperature", 1700000001000, 21.4, 18),
    Reading("dev-0001", "temperature", 1700000002000, 21.38, 19),
    Reading("dev-0001", "humidity", 1700000000000, 45.5, 17),
    Reading("dev-0002", "current", 1700000000250, -0.125, None),
    Reading("dev-0002", "current", 1700000000750, 0.1, None),
    Reading("dev-0002", "ratio", 1700000000250, 0.3333333333333333, None),
]


def main() -> None:
    cases = [("batch_v1_none", "none", False), ("batch_v1_zlib", "zlib", False), ("batch_v1_zlib_replay", "zlib", True)]
    for name, compression, replay in cases:
        env = encode_batch("gw-test", 7, READINGS, created_ms=1700000003000, compression=compression, replay=replay)  # type: ignore[arg-type]
        (HERE / f"{name}.bin").write_bytes(env)
        b = decode_batch(env)
        doc = {
            "gateway": b.gateway, "seq": b.seq, "created_ms": b.created_ms, "replay": b.replay,
            "compression": b.compression,
            "readings": [[r.device, r.metric, r.ts_ms, r.value, r.seq] for r in b.readings],
        }
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
