"""Unit tests drive the real app through create_app(factory=...) with FakeEngine behind the Engine protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.engine.decode_attention import DecodeAttention, build_decode_attention
from gateway.engine.decode_layers import DecodeLayers, build_decode_layers
from gateway.engine.int8_vnni import VnniKernel, build_vnni_kernel
from gateway.engine.rowwise import RowwiseKernel, build_rowwise_kernel
from tests.unit.helpers import Gateway, open_gateway

T = TypeVar("T")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _built_or_skip(build: Callable[[Path], T | None], tmp_path_factory: pytest.TempPathFactory, otherwise: str) -> T:
    built = build(tmp_path_factory.mktemp("kernels"))
    if built is None:
        pytest.skip(f"no C compiler with OpenMP on this machine: {otherwise}")
    return built


@pytest.fixture(scope="session")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> RowwiseKernel:
    """The rowwise Linear kernel, built once for the session in a temporary cache directory."""
    return _built_or_skip(build_rowwise_kernel, tmp_path_factory, "the loader keeps the oneDNN layout")


@pytest.fixture(scope="session")
def decode_attention(tmp_path_factory: pytest.TempPathFactory) -> DecodeAttention:
    """The decode attention kernel, built once for the session in a temporary cache directory."""
    return _built_or_skip(build_decode_attention, tmp_path_factory, "decode steps keep SDPA")


@pytest.fixture(scope="session")
def decode_layers(tmp_path_factory: pytest.TempPathFactory) -> DecodeLayers:
    """The fused decode layers' library, built once for the session in a temporary cache directory."""
    return _built_or_skip(build_decode_layers, tmp_path_factory, "decode steps keep the torch stack")


@pytest.fixture(scope="session")
def vnni(tmp_path_factory: pytest.TempPathFactory) -> VnniKernel:
    """The int8 kernel with int8 activations, built once for the session; skipped on a CPU without AVX-512 VNNI
    or AVX2."""
    built = build_vnni_kernel(tmp_path_factory.mktemp("kernels"))
    if built is None:
        pytest.skip("no AVX-512 VNNI or AVX2 on this CPU (or no C compiler): int8 layers stay weight-only")
    return built


@pytest.fixture
async def gw(anyio_backend: str) -> AsyncIterator[Gateway]:
    """A ready app with the default FakeEngine script ["Hello", " world", "!"]."""
    async with open_gateway() as gateway:
        yield gateway
