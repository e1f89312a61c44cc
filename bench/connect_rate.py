"""Connect rate of the embedded broker: N devices connecting at once (a gateway restart, a power
cut ending), without authentication, with passwords (first connects hash, reconnects hit the
cache) with generated passwords (1000 iterations) and typed ones (10000), and with client
certificates. Same run, same machine.

    python bench/connect_rate.py [--devices 500]

The connector is a separate process. ``loop_lag_max_ms`` is the worst delay of a 5 ms timer on the
gateway's event loop during the storm: what every device already connected felt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._gateway import bench_gateway  # noqa: E402
from gateway.source.passwords import DEFAULT_ITERATIONS, GENERATED_ITERATIONS, provision  # noqa: E402
from gateway.source.pki import Pki  # noqa: E402


async def storm(port: int, creds: Path, tls: tuple[Path, Path] | None = None) -> dict[str, Any]:
    lag = {"max": 0.0}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lag["max"] = max(lag["max"], time.perf_counter() - t - 0.005)

    sampler = asyncio.create_task(sample())
    args = [str(p) for p in tls] if tls else []
    proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "bench" / "_connector.py"), "127.0.0.1",
                                                str(port), str(creds), *args, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    done.set()
    await sampler
    return {**json.loads(out.decode().strip().splitlines()[-1]), "loop_lag_max_ms": round(lag["max"] * 1000, 1)}


async def run(name: str, creds: Path, rounds: int, **local: Any) -> None:
    pki_dir = local.get("auth", {}).get("pki_dir")
    async with bench_gateway(local_broker=local) as svc:
        assert svc.embedded is not None
        for n in range(rounds):
            if "tls" in local:
                res = await storm(svc.embedded.tls_address.port, creds,
                                  (Pki(Path(pki_dir)).ca_file, Path(pki_dir) / "devices"))
            else:
                res = await storm(svc.embedded.address.port, creds)
            print(json.dumps({"auth": name, "round": "first" if n == 0 else "reconnect", **res}), flush=True)
            await asyncio.sleep(1.0)  # let the broker notice the closed sockets


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=500)
    args = ap.parse_args()
    ids = [f"dev-{n:04d}" for n in range(args.devices)]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        open_creds = base / "none.txt"
        open_creds.write_text("".join(f"{d}:\n" for d in ids))
        await run("none", open_creds, 1, max_connections=-1)
        for iterations in (GENERATED_ITERATIONS, DEFAULT_ITERATIONS):
            creds, passwd = base / f"creds-{iterations}.txt", base / f"passwd-{iterations}"
            provision(passwd, creds, ids, iterations)
            await run(f"password (PBKDF2-SHA512, {iterations} iterations)", creds, 2,
                      auth={"mode": "password", "password_file": str(passwd)})
        pki = Pki(base / "pki")
        pki.ensure_server_cert(["127.0.0.1"])
        for d in ids:
            pki.issue_device(d)
        await run("certificate", open_creds, 2, plain=False,
                  tls={"listen": "127.0.0.1:0", "require_client_cert": True},
                  auth={"mode": "certificate", "pki_dir": str(pki.dir)})


if __name__ == "__main__":
    asyncio.run(main())
