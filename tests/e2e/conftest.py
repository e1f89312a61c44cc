from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.downlink_support import CloudOperator
from tests.support import Mosquitto


@pytest.fixture
async def operator(mosquitto: Mosquitto) -> AsyncIterator[CloudOperator]:
    """A cloud-side client on mosquitto that sends commands and collects the gateway's answers."""
    op = await CloudOperator.connect(mosquitto.url)
    try:
        yield op
    finally:
        await op.close()
