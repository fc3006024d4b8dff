"""Unit tests drive the real app through create_app(factory=...) with FakeEngine behind the Engine protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.engine.decode_attention import DecodeAttention, build_decode_attention
from gateway.engine.rowwise import RowwiseKernel, build_rowwise_kernel
from tests.unit.helpers import Gateway, open_gateway


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> RowwiseKernel:
    """The rowwise Linear kernel, built once for the session in a temporary cache directory."""
    built = build_rowwise_kernel(tmp_path_factory.mktemp("kernels"))
    if built is None:
        pytest.skip("no C compiler with OpenMP on this machine: the loader keeps the oneDNN layout")
    return built


@pytest.fixture(scope="session")
def decode_attention(tmp_path_factory: pytest.TempPathFactory) -> DecodeAttention:
    """The decode attention kernel, built once for the session in a temporary cache directory."""
    built = build_decode_attention(tmp_path_factory.mktemp("kernels"))
    if built is None:
        pytest.skip("no C compiler with OpenMP on this machine: decode steps keep SDPA")
    return built


@pytest.fixture
async def gw(anyio_backend: str) -> AsyncIterator[Gateway]:
    """A ready app with the default FakeEngine script ["Hello", " world", "!"]."""
    async with open_gateway() as gateway:
        yield gateway
