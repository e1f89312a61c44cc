"""The store's modules keep to their one job: only rows touches diskcache or SQLite, and the
ledger (order, leases, replay) is pure."""

from __future__ import annotations

import ast
from pathlib import Path

STORE = Path(__file__).resolve().parents[3] / "gateway" / "store"


def imports(name: str) -> set[str]:
    tree = ast.parse((STORE / name).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_only_rows_touches_the_database() -> None:
    touching = {path.name for path in STORE.glob("*.py") if imports(path.name) & {"diskcache", "sqlite3"}}
    assert touching == {"rows.py"}


def test_the_ledger_is_pure() -> None:
    ours = {name for name in imports("ledger.py") if name.split(".")[0] in ("gateway", "bridge")}
    assert ours == {"bridge.uplink.store"}
    assert not imports("ledger.py") & {"os", "pathlib", "shutil", "json", "logging"}
