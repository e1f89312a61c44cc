"""device_sim is a real device program: it imports nothing from gateway/ or bridge/, and each third-party
library lives behind one module (paho → publisher, msgpack → payloads)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "device_sim"
OWNERS = {"paho": {"publisher.py"}, "msgpack": {"payloads.py"}, "amqtt": set(), "diskcache": set()}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_device_sim_imports() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert files
    for path in files:
        imported = _imports(path)
        assert not imported & {"gateway", "bridge"}, path.name
        for library, owners in OWNERS.items():
            if library in imported:
                assert path.name in owners, f"{path.name} imports {library}"
