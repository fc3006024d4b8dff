"""Settings ↔ CLI flags ↔ GANTRY_* env ↔ .env.example ↔ models file stay in sync."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser, settings_from_args
from gateway.settings import ModelSpec, Settings, load_models_file
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read ./.env; run from an empty directory so a developer's .env cannot leak in."""
    monkeypatch.chdir(tmp_path)


def serve_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices["serve"]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_serve_has_a_flag_for_every_settings_field():
    actions = {a.dest: a for a in serve_parser()._actions}
    for name in Settings.model_fields:
        assert name in actions, f"no flag for Settings.{name}"
        assert flag(name) in actions[name].option_strings


def test_serve_help_lists_every_flag():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for name in Settings.model_fields:
        assert flag(name) in result.stdout, name
        assert f"GANTRY_{name.upper()}" in result.stdout.replace("\n", "").replace(" ", ""), name


def test_help_shows_no_pydantic_internals():
    help_text = serve_parser().format_help()
    assert "PydanticUndefined" not in help_text


def test_env_example_documents_every_field():
    text = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"GANTRY_{name.upper()}=" in text, name


def test_cli_flags_override_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GANTRY_PORT", "9000")
    monkeypatch.setenv("GANTRY_LOG_LEVEL", "debug")
    parser = build_parser()
    settings = settings_from_args(parser.parse_args(["serve", "--port", "9100"]))
    assert settings.port == 9100
    assert settings.log_level == "debug"  # env still applies where no flag is given
    assert settings_from_args(parser.parse_args(["serve"])).port == 9000


def test_env_overrides_dotenv_and_dotenv_overrides_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / ".env").write_text("GANTRY_PORT=8111\nGANTRY_HOST=0.0.0.0\n", encoding="utf-8")
    assert Settings().port == 8111
    monkeypatch.setenv("GANTRY_PORT", "8222")
    settings = Settings()
    assert settings.port == 8222 and settings.host == "0.0.0.0"


def test_cli_flag_types():
    parser = build_parser()
    args = parser.parse_args(
        [
            "serve",
            "--max-context",
            "2048",
            "--sse-ping-seconds",
            "2.5",
            "--trust-remote-code",
            "--model-aliases",
            "a",
            "b/c",
            "--dtype",
            "float16",
            "--cache-dir",
            "/tmp/gantry-cache",
        ]
    )
    settings = settings_from_args(args)
    assert settings.max_context == 2048
    assert settings.sse_ping_seconds == 2.5
    assert settings.trust_remote_code is True
    assert settings.model_aliases == ["a", "b/c"]
    assert settings.dtype == "float16"
    assert settings.cache_dir == Path("/tmp/gantry-cache")
    assert settings_from_args(parser.parse_args(["serve", "--no-trust-remote-code"])).trust_remote_code is False
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--dtype", "int3"])


def test_models_file_with_two_models_and_aliases(tmp_path: Path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - name: small\n"
        "    source: embedded\n"
        "    aliases: [smol, org/small-instruct]\n"
        "  - name: other\n"
        "    source: /models/other\n"
        "    family: qwen2\n"
        "    max_context: 8192\n",
        encoding="utf-8",
    )
    specs = Settings(models_file=path).model_specs()
    assert [type(s) for s in specs] == [ModelSpec, ModelSpec]
    assert specs[0].ids() == ["small", "smol", "org/small-instruct"]
    assert specs[1].name == "other" and specs[1].family == "qwen2" and specs[1].max_context == 8192
    assert specs[1].aliases == []


def test_models_file_duplicate_id_raises(tmp_path: Path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - {name: a, source: embedded, aliases: [b]}\n  - {name: b, source: embedded}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="twice"):
        load_models_file(path)


def test_models_file_unknown_key_and_empty_list_raise(tmp_path: Path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {name: a, source: embedded, temperture: 1}\n", encoding="utf-8")
    with pytest.raises(ValueError):
        load_models_file(path)
    path.write_text("models: []\n", encoding="utf-8")
    with pytest.raises(ValueError):
        load_models_file(path)


def test_example_models_file_parses():
    specs = load_models_file(REPO_ROOT / "models.example.yaml")
    ids = [i for s in specs for i in s.ids()]
    assert len(ids) == len(set(ids))


def test_tilde_is_expanded(monkeypatch: pytest.MonkeyPatch):
    assert Settings(cache_dir="~/gantry-x").cache_dir == Path.home() / "gantry-x"
    monkeypatch.setenv("GANTRY_CACHE_DIR", "~/gantry-y")
    assert Settings().cache_dir == Path.home() / "gantry-y"
    args = build_parser().parse_args(["serve", "--cache-dir", "~/gantry-z", "--models-file", "~/m.yaml"])
    settings = settings_from_args(args)
    assert settings.cache_dir == Path.home() / "gantry-z"
    assert settings.models_file == Path.home() / "m.yaml"


def test_single_model_spec_from_settings():
    spec = Settings(model="Qwen/Qwen2.5-0.5B-Instruct", model_aliases=["qwen"]).single_model_spec()
    assert spec.name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert spec.ids() == ["Qwen/Qwen2.5-0.5B-Instruct", "qwen"]
    assert Settings().single_model_spec().name == "smollm2-135m-instruct"
    assert Settings(model="/x/y/model.Q4.gguf").single_model_spec().name == "model.Q4"


def test_sampling_defaults_from_flag_env_and_models_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    args = build_parser().parse_args(["serve", "--sampling", '{"temperature": 0.7, "top_k": 40}'])
    assert settings_from_args(args).single_model_spec().sampling.values() == {"temperature": 0.7, "top_k": 40}
    monkeypatch.setenv("GANTRY_SAMPLING", '{"top_p": 0.5}')
    assert Settings().single_model_spec().sampling.values() == {"top_p": 0.5}
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {name: a, source: embedded, sampling: {min_p: 0.1}}\n", encoding="utf-8")
    assert load_models_file(path)[0].sampling.values() == {"min_p": 0.1}
    for bad in ('{"temperature": 5}', '{"seed": 1}', "not json"):
        with pytest.raises(ValueError):
            Settings(sampling=bad)


def test_sampling_defaults_precedence():
    from gateway.engine.factory import sampling_defaults

    authors = {"temperature": 0.6, "top_p": 0.95, "do_sample": True}
    assert sampling_defaults(ModelSpec(name="m", source="/m"), authors) == {"temperature": 0.6, "top_p": 0.95}
    spec = ModelSpec(name="m", source="/m", sampling={"temperature": 0.1})
    assert sampling_defaults(spec, authors) == {"temperature": 0.1, "top_p": 0.95}
    embedded = ModelSpec(name="m", source="embedded")
    assert sampling_defaults(embedded, {}) == {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}
    assert sampling_defaults(embedded.model_copy(update={"sampling": spec.sampling}), {})["temperature"] == 0.1


def test_help_shows_defaults_as_a_user_types_them():
    help_text = " ".join(serve_parser().format_help().split())
    for python_repr in ("SamplingDefaults(", "PosixPath(", "WindowsPath(", "default: None", "default: '"):
        assert python_repr not in help_text, python_repr
    assert "default: ~/.cache/gantry]" in help_text or f"default: {Path.home()}" not in help_text
    assert "[env GANTRY_HOST; default: 127.0.0.1]" in help_text
    assert "[env GANTRY_COMPILE; default: off]" in help_text


def test_help_lists_the_families_and_rejects_unknown_ones():
    from adapters import AdapterRegistry

    help_text = " ".join(serve_parser().format_help().split())
    families = AdapterRegistry().names()
    assert f"One of: {', '.join(families)}." in help_text
    assert build_parser().parse_args(["serve", "--family", families[0]]).family == families[0]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--family", "no-such-family"])


@pytest.mark.parametrize(
    ("argv0", "prog"),
    [
        ("/x/.venv/lib/python3.11/site-packages/gateway/__main__.py", "python -m gateway"),
        ("/x/.venv/bin/gantry", "gantry"),
    ],
)
def test_usage_names_the_command_as_it_was_invoked(argv0, prog):
    from gateway.cli import invoked_as

    assert invoked_as(argv0) == prog
    assert build_parser(invoked_as(argv0)).format_usage().startswith(f"usage: {prog} ")


def test_python_m_gateway_help_says_python_m_gateway():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.stdout.startswith("usage: python -m gateway serve "), result.stdout[:80]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("args", "env", "flags"),
    [
        ([], {}, []),
        ([], {"GANTRY_PORT": "9000", "PORT": "7000", "HOST": "0.0.0.0"}, []),  # GANTRY_PORT applies in the server
        (["PORT=9000"], {}, ["--port", "9000"]),
        (["HOST=0.0.0.0", "PORT=9001"], {"GANTRY_PORT": "9000"}, ["--host", "0.0.0.0", "--port", "9001"]),
    ],
)
def test_make_serve_passes_host_and_port_only_when_given(args, env, flags, tmp_path):
    child_env = {**{k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}, **env}
    # A fresh stamp, newer than pyproject.toml: with STAMP=Makefile, make remade the Makefile itself (even under
    # -n) whenever pyproject.toml was newer, building a venv and pip-installing the project.
    stamp = tmp_path / "installed"
    stamp.touch()
    result = subprocess.run(
        ["make", "-n", "serve", f"STAMP={stamp}", *args], cwd=REPO_ROOT, env=child_env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    [command] = [line for line in result.stdout.splitlines() if "-m gateway serve" in line]
    assert command.split()[command.split().index("serve") + 1 :] == flags
