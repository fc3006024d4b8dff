"""Registry settings: keep_alive durations, preload defaults, the state file's default place, the CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.cli import build_parser, settings_from_args
from gateway.registry import ModelRegistry
from gateway.settings import ModelSpec, Settings
from tests.unit.registry_helpers import FakeModels


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("2s", 2.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        (30, 30.0),
        ("0", 0.0),
        (-1, -1.0),
        ("-1", -1.0),
        ("-5m", -1.0),
    ],
)
def test_keep_alive_durations(value, seconds):
    assert ModelSpec(name="m", source="s", keep_alive=value).keep_alive == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "", True, "m5"])
def test_bad_keep_alive_is_rejected(value):
    with pytest.raises(ValidationError):
        ModelSpec(name="m", source="s", keep_alive=value)


def test_only_the_first_model_preloads_unless_set():
    specs = [
        ModelSpec(name="a", source="s"),
        ModelSpec(name="b", source="s"),
        ModelSpec(name="c", source="s", preload=True),
        ModelSpec(name="d", source="s", keep_alive="10s"),
    ]
    registry = ModelRegistry(specs, FakeModels(), keep_alive=-1)
    assert [e.preload for e in registry.entries()] == [True, False, True, False]
    assert [e.keep_alive for e in registry.entries()] == [-1, -1, -1, 10]


def test_state_file_defaults(tmp_path: Path):
    beside = Settings(_env_file=None, models_file=tmp_path / "models.yaml")
    assert beside.registry_state_file() == tmp_path / "models.state.json"
    cached = Settings(_env_file=None, cache_dir=tmp_path / "cache")
    assert cached.registry_state_file() == tmp_path / "cache" / "models.state.json"
    explicit = Settings(_env_file=None, state_file=tmp_path / "x.json", models_file=tmp_path / "models.yaml")
    assert explicit.registry_state_file() == tmp_path / "x.json"


def test_cli_flags_and_env(monkeypatch):
    args = build_parser().parse_args(
        ["serve", "--keep-alive", "5m", "--max-loaded-models", "2", "--wait-for-model-seconds", "30"]
    )
    settings = settings_from_args(args)
    assert (settings.keep_alive, settings.max_loaded_models, settings.wait_for_model_seconds) == (300.0, 2, 30.0)
    monkeypatch.setenv("GANTRY_ADMIN_KEY", "s3cret")
    assert Settings(_env_file=None).admin_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(Settings(_env_file=None))
