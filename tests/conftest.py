"""Shared fixtures: repository paths and a clean GANTRY_* environment for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """shared/ (docs and tokenizer fixtures) sits beside the checkout; GANTRY_SHARED_DIR overrides."""
    return Path(os.environ.get("GANTRY_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


def tokenizer_fixture(name: str) -> Path:
    path = shared_dir() / "fixtures" / "tokenizers" / name
    if not path.is_dir():
        pytest.fail(f"tokenizer fixture {path} is missing (set GANTRY_SHARED_DIR)")
    return path


@pytest.fixture(autouse=True)
def _clean_gantry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read GANTRY_* variables and .env; tests must not inherit the developer's."""
    for key in list(os.environ):
        if key.startswith("GANTRY_") and key != "GANTRY_SHARED_DIR":
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
