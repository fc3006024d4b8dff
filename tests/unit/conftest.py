"""Unit tests drive the real app through create_app(factory=...) with FakeEngine behind the Engine protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.helpers import Gateway, open_gateway


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def gw(anyio_backend: str) -> AsyncIterator[Gateway]:
    """A ready app with the default FakeEngine script ["Hello", " world", "!"]."""
    async with open_gateway() as gateway:
        yield gateway
