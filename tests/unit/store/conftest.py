from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.store.kits import KINDS, Kit


@pytest.fixture(params=KINDS)
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    kit = Kit(request.param, tmp_path / "buffer")
    yield kit
    kit.close()
