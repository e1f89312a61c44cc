"""Layering rules: each third-party library behind one adapter module; bridge/ and device_sim/
import nothing from gateway/; device_sim imports nothing from bridge/ either."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# library -> modules allowed to import it
ADAPTERS = {
    "amqtt": {"gateway/source/broker.py"},
    "paho": {"bridge/mqtt/connection.py", "device_sim/publisher.py"},
    "diskcache": {"gateway/store/rows.py"},
    "msgpack": {"bridge/protocol/codec.py", "device_sim/payloads.py"},
    "zstandard": {"bridge/protocol/codec.py"},
    "matplotlib": {"bridge/cloud/plot.py"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_third_party_libraries_stay_behind_their_adapter() -> None:
    offenders = []
    for package in ("gateway", "bridge", "device_sim"):
        for path in sources(package):
            rel = path.relative_to(ROOT).as_posix()
            for name in imports(path):
                top = name.split(".")[0]
                if top in ADAPTERS and rel not in ADAPTERS[top]:
                    offenders.append(f"{rel} imports {name}")
    assert offenders == []


def test_bridge_and_device_sim_do_not_import_gateway() -> None:
    offenders = []
    for package, banned in (("bridge", ("gateway",)), ("device_sim", ("gateway", "bridge"))):
        for path in sources(package):
            for name in imports(path):
                if name.split(".")[0] in banned:
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_every_adapter_exists() -> None:
    for modules in ADAPTERS.values():
        for rel in modules:
            assert (ROOT / rel).is_file(), rel
