"""The code's shape, checked: which of our packages may import which, each third-party library behind
its one adapter module, module and function sizes, and the module map in docs/DEVELOPMENT.md.

Imports are read from the syntax tree, so an import inside a function (a lazy import) counts like
one at the top of the module; relative imports are resolved to absolute names."""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "bridge", "device_sim")  # ours; everything else is stdlib or third-party

# Of our packages, the only ones a package may import (its own modules are always allowed). The most
# specific entry applies: bridge.uplink follows its own line, bridge.cloud the "bridge" one.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "bridge.protocol": (),  # pure: the wire contract both sides share
    "bridge.mqtt": ("bridge.protocol",),
    "bridge.uplink": ("bridge.protocol", "bridge.mqtt"),
    "bridge.transfer": ("bridge.protocol",),  # files on disk for the file-transfer protocol, both ends
    "bridge": ("bridge",),  # bridge never imports gateway (nor device_sim)
    "device_sim": (),  # a real device program: it obeys the documented contract like any device
    "gateway": ("gateway", "bridge.protocol", "bridge.mqtt", "bridge.uplink", "bridge.transfer"),  # never bridge.cloud
}

# COMPOSITION_ROOTS and ADAPTERS name modules without ".py": "gateway/cli" is gateway/cli.py, or every
# module of the package gateway/cli/ once it is split. The allowlists further down name files.

# The composition roots: the `edge-gateway` entry point (which also carries the cloud tools' commands)
# and the lab put the gateway and the cloud side together, so only they may import both.
COMPOSITION_ROOTS = frozenset({"gateway/cli", "gateway/lab"})
ROOTS_MAY_ALSO_IMPORT = ("bridge.cloud",)

# Third-party library -> the modules allowed to import it (its adapter).
ADAPTERS: dict[str, frozenset[str]] = {
    "amqtt": frozenset({"gateway/source/broker"}),
    "paho": frozenset({"bridge/mqtt/connection", "device_sim/publisher"}),
    "diskcache": frozenset({"gateway/store/rows"}),
    "msgpack": frozenset({"bridge/protocol/codec", "device_sim/payloads"}),
    "zstandard": frozenset({"bridge/protocol/codec"}),
    "matplotlib": frozenset({"bridge/cloud/plot"}),
    "psycopg": frozenset({"bridge/cloud/pg_store"}),
    "cryptography": frozenset({"gateway/source/pki"}),
    "prometheus_client": frozenset({"gateway/observe/metrics"}),
}
# Third-party libraries any module may use: the vocabulary of the code (typed config, CLIs, terminal
# output, TOML and Python 3.10 backports), not infrastructure to hide. A new library goes in one table.
ANYWHERE = frozenset({"pydantic", "click", "rich", "tomli", "taskgroup", "exceptiongroup"})

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Modules and functions over the limits today, each to be split. The list can only shrink: a test
# fails when an entry is no longer oversized, so remove it then.
KNOWN_OVERSIZE: frozenset[str] = frozenset()
KNOWN_LONG_FUNCTIONS: frozenset[str] = frozenset()

DEVELOPMENT_MD = ROOT / "docs" / "DEVELOPMENT.md"
# Modules missing from the module map in docs/DEVELOPMENT.md today; the list can only shrink.
KNOWN_UNMAPPED: frozenset[str] = frozenset()
NOT_IN_MAP = frozenset({"__init__.py", "__main__.py"})  # package glue, not modules with a job


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def product_sources() -> list[Path]:
    return [path for package in PACKAGES for path in sources(package)]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def covers(entry: str, rel_path: str) -> bool:
    """Whether a table entry (a module without ".py") names the file ``rel_path``: the module itself,
    or any module of the package of that name."""
    return rel_path == f"{entry}.py" or rel_path.startswith(f"{entry}/")


def exists(entry: str) -> bool:
    return (ROOT / f"{entry}.py").is_file() or (ROOT / entry).is_dir()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imports(path: Path) -> frozenset[str]:
    """Every module ``path`` imports, at any depth of the code, as absolute dotted names."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> frozenset[str]:
    """What ``source``, a module of ``package``, imports: top-level, in functions, relative ones resolved."""
    here = package.split(".")
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            if node.module is None:  # from . import x: each name may be a module
                out.update(f"{stem}.{alias.name}" for alias in node.names)
            else:
                out.add(stem)
    return frozenset(out)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def rule_for(module: str) -> tuple[str, tuple[str, ...]]:
    """(the package whose line applies to ``module``, what that line allows)."""
    owner = max((p for p in MAY_IMPORT if within(module, p)), key=len)
    return owner, MAY_IMPORT[owner]


def test_each_package_imports_only_what_its_layer_allows() -> None:
    offenders = []
    for path in product_sources():
        owner, allowed = rule_for(module_name(path))
        if any(covers(root, rel(path)) for root in COMPOSITION_ROOTS):
            allowed = (*allowed, *ROOTS_MAY_ALSO_IMPORT)
        for name in sorted(imports(path)):
            ours = name.split(".")[0] in PACKAGES
            if ours and not within(name, owner) and not any(within(name, p) for p in allowed):
                offenders.append(f"{rel(path)} imports {name}")
    assert offenders == []


def test_the_rules_catch_what_they_forbid() -> None:
    """The table itself: a few imports that must be refused, and some that must pass."""

    def allowed(importer: str, imported: str) -> bool:
        owner, may = rule_for(importer)
        return within(imported, owner) or any(within(imported, p) for p in may)

    assert not allowed("bridge.protocol.codec", "bridge.mqtt.types")
    assert not allowed("bridge.mqtt.connection", "bridge.uplink.forwarder")
    assert not allowed("bridge.uplink.forwarder", "bridge.cloud.sink")
    assert not allowed("bridge.uplink.forwarder", "gateway.store.buffer")
    assert not allowed("bridge.cloud.sink", "gateway.config")
    assert not allowed("gateway.service", "bridge.cloud.sink")
    assert not allowed("device_sim.cli", "bridge.protocol.topics")
    assert allowed("bridge.cloud.sink", "bridge.protocol.codec")
    assert allowed("gateway.service", "bridge.uplink.link")
    assert all(exists(root) for root in COMPOSITION_ROOTS)
    assert covers("gateway/cli", "gateway/cli.py") and covers("gateway/cli", "gateway/cli/run.py")
    assert not covers("gateway/cli", "gateway/cli_common.py")


def test_relative_and_lazy_imports_are_seen() -> None:
    source = ("import json\nfrom . import topics\nfrom .codec import x\nfrom ..mqtt.types import y\n"
              "def f() -> None:\n    from gateway import service\n")
    assert imports_in(source, "bridge.protocol") == {
        "json", "bridge.protocol.topics", "bridge.protocol.codec", "bridge.mqtt.types", "gateway"}
    assert any(within(name, "bridge.cloud") for name in imports(ROOT / "gateway" / "cli.py"))  # lazy ones


def test_third_party_libraries_stay_behind_their_adapter() -> None:
    offenders = []
    for path in product_sources():
        for name in imports(path):
            top = name.split(".")[0]
            if top in ADAPTERS and not any(covers(entry, rel(path)) for entry in ADAPTERS[top]):
                offenders.append(f"{rel(path)} imports {name}")
    assert offenders == []


def test_every_third_party_library_has_a_place_in_the_tables() -> None:
    """A new dependency is a decision: behind an adapter (ADAPTERS) or usable anywhere (ANYWHERE)."""
    ours_or_std = {*PACKAGES, *sys.stdlib_module_names, "__future__"}
    unplaced = sorted({f"{name.split('.')[0]} (in {rel(path)})" for path in product_sources()
                       for name in imports(path)
                       if name.split(".")[0] not in ours_or_std | ADAPTERS.keys() | ANYWHERE})
    assert unplaced == []


def test_every_adapter_exists() -> None:
    for entries in ADAPTERS.values():
        for entry in entries:
            assert exists(entry), entry
    assert not ADAPTERS.keys() & ANYWHERE


def test_each_package_has_modules() -> None:
    for package in PACKAGES:
        assert sources(package), package


def module_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def long_functions(path: Path) -> dict[str, int]:
    return long_functions_in(path.read_text(encoding="utf-8"), rel(path))


def long_functions_in(source: str, label: str) -> dict[str, int]:
    """``label::qualified.name`` -> lines, for each function (nested ones too) over the limit."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        out[f"{label}::{name}"] = length
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def test_no_module_is_over_the_size_limit() -> None:
    oversize = {rel(p): module_lines(p) for p in product_sources() if module_lines(p) > MAX_MODULE_LINES}
    assert {name: n for name, n in oversize.items() if name not in KNOWN_OVERSIZE} == {}


def test_the_oversize_allowlist_only_shrinks() -> None:
    stale = sorted(name for name in KNOWN_OVERSIZE
                   if not (ROOT / name).is_file() or module_lines(ROOT / name) <= MAX_MODULE_LINES)
    assert stale == [], "no longer oversized: remove from KNOWN_OVERSIZE"


def test_no_function_is_over_the_size_limit() -> None:
    found: dict[str, int] = {}
    for path in product_sources():
        found.update(long_functions(path))
    assert {name: n for name, n in found.items() if name not in KNOWN_LONG_FUNCTIONS} == {}
    stale = sorted(KNOWN_LONG_FUNCTIONS - found.keys())
    assert stale == [], "no longer too long: remove from KNOWN_LONG_FUNCTIONS"


def test_the_function_check_measures_what_it_claims() -> None:
    def function(name: str, lines: int) -> str:  # ``lines`` lines from the def to the last statement
        return f"    def {name}(self) -> None:\n" + "".join(f"        x{i} = {i}\n" for i in range(lines - 1))

    source = "class A:\n" + function("long", MAX_FUNCTION_LINES + 1) + function("short", MAX_FUNCTION_LINES)
    assert long_functions_in(source, "m.py") == {"m.py::A.long": MAX_FUNCTION_LINES + 1}


_MAP_ROW = re.compile(r"^\|\s*(?P<cell>[^|]*`[^|]*)\|", re.MULTILINE)


def mapped_paths() -> list[str]:
    """The paths the module map names: each backticked name in a row's first cell; a bare file name
    (``stats.py``) is in the folder of the path before it in the same cell."""
    text = DEVELOPMENT_MD.read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    out: list[str] = []
    for row in _MAP_ROW.finditer(section):
        folder = ""
        for name in re.findall(r"`([^`]+)`", row["cell"]):
            if "/" in name.rstrip("/"):
                folder = name.rstrip("/").rsplit("/", 1)[0] + "/"
                out.append(name)
            elif name.endswith("/"):
                out.append(name)
            else:
                out.append(folder + name)
    return out


def mapped_modules() -> set[str]:
    covered: set[str] = set()
    for name in mapped_paths():
        target = ROOT / name
        covered.update(rel(p) for p in ([*target.rglob("*.py")] if name.endswith("/") else [target]))
    return covered


def unmapped_modules() -> set[str]:
    covered = mapped_modules()
    return {rel(p) for p in product_sources() if p.name not in NOT_IN_MAP and rel(p) not in covered}


def test_every_module_is_in_the_module_map() -> None:
    assert sorted(unmapped_modules() - KNOWN_UNMAPPED) == []


def test_the_unmapped_allowlist_only_shrinks() -> None:
    assert sorted(KNOWN_UNMAPPED - unmapped_modules()) == [], "now mapped: remove from KNOWN_UNMAPPED"


def test_every_path_the_module_map_names_exists() -> None:
    paths = mapped_paths()
    assert len(paths) > 20  # the map was found and read
    assert [name for name in paths if not (ROOT / name).exists()] == []
