"""Layering rules: each third-party library behind one adapter module; bridge/ and device_sim/
import nothing from gateway/; device_sim imports nothing from bridge/ either."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# library -> modules (a path ending in "/": every module of that adapter package) allowed to import it
ADAPTERS = {
    "amqtt": {"gateway/source/broker/"},
    "paho": {"bridge/mqtt/connection/", "device_sim/publisher.py"},
    "diskcache": {"gateway/store/buffer.py"},
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
                if top in ADAPTERS and not any(rel == allowed or (allowed.endswith("/") and rel.startswith(allowed))
                                               for allowed in ADAPTERS[top]):
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
            assert (ROOT / rel).is_dir() if rel.endswith("/") else (ROOT / rel).is_file(), rel


def test_the_protocol_is_pure_and_the_cloud_side_stays_apart_from_the_gateway() -> None:
    """bridge.protocol imports nothing of ours outside itself; bridge.cloud imports nothing from gateway;
    of gateway, only the composition roots (cli.py, lab.py) import bridge.cloud."""
    roots = {"gateway/cli.py", "gateway/lab.py"}
    offenders = []
    for package, banned in (("bridge/protocol", ("gateway", "device_sim", "bridge.mqtt", "bridge.uplink",
                                                 "bridge.cloud")),
                            ("bridge/cloud", ("gateway",)), ("gateway", ("bridge.cloud",))):
        for path in sources(package):
            rel = path.relative_to(ROOT).as_posix()
            for name in imports(path):
                if rel not in roots and any(name == b or name.startswith(f"{b}.") for b in banned):
                    offenders.append(f"{rel} imports {name}")
    assert offenders == []
