"""Shared fixtures: repository paths and a clean GANTRY_* environment for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


FIXTURES = REPO_ROOT / "tests" / "fixtures"  # carried by the repository: a bare clone passes `make test`


def tokenizer_fixture(name: str) -> Path:
    """A real tokenizer's files (tests/fixtures/tokenizers/<name>, provenance in its SOURCE.md)."""
    path = FIXTURES / "tokenizers" / name
    if not path.is_dir():
        pytest.fail(f"tokenizer fixture {path} is missing from the repository")
    return path


@pytest.fixture(autouse=True)
def _clean_gantry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read GANTRY_* variables and .env; tests must not inherit the developer's."""
    for key in list(os.environ):
        if key.startswith("GANTRY_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
