"""docker-compose.yml against the Compose Specification's JSON schema (no Docker engine runs here).

The schema is the one `docker compose config` applies (tests/fixtures/compose/SOURCE.md); a mistake it would
reject — an unknown key, a wrong type — fails here too, and the profiles are the ones the README documents.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.specs import load_models_file

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "tests/fixtures/compose/compose-spec.json").read_text())


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def problems(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_the_compose_file_follows_the_compose_specification():
    assert problems(compose()) == []


@pytest.mark.parametrize(
    ("where", "mistake"),
    [
        ("services/gateway", {"imagee": "typo"}),  # an unknown service key
        ("services/gateway/healthcheck", {"intervall": "10s"}),
        ("services/gateway-gpu/deploy/resources/reservations", {"gpus": 1}),
        ("", {"servics": {}}),  # an unknown top-level key
        ("services/gateway", {"ports": "8000:8000"}),  # a string where a list belongs
    ],
)
def test_mistakes_that_compose_rejects_fail_validation(where: str, mistake: dict[str, Any]):
    document = copy.deepcopy(compose())
    node = document
    for part in filter(None, where.split("/")):
        node = node[part]
    node.update(mistake)
    assert problems(document), f"{mistake} at {where or 'top level'} passed the schema"


def test_profiles_default_gpu_and_vllm():
    services = compose()["services"]
    assert "profiles" not in services["gateway"]  # `docker compose up` starts the CPU gateway
    assert services["gateway-gpu"]["profiles"] == ["gpu"]
    assert services["vllm"]["profiles"] == ["vllm"]
    for name in ("gateway-gpu", "vllm"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    gateway = services["gateway"]
    assert "/health/ready" in " ".join(gateway["healthcheck"]["test"])
    assert any(volume.endswith(":/cache") for volume in gateway["volumes"])
    assert any(volume.startswith("./deploy:/config") for volume in gateway["volumes"])


def test_the_vllm_profile_models_file_registers_vllm_as_an_upstream():
    specs = {spec.name: spec for spec in load_models_file(ROOT / "deploy/models.vllm.yaml")}
    remote = specs["remote-llm"]
    assert remote.kind == "upstream"
    vllm_command = compose()["services"]["vllm"]["command"]
    served_name = vllm_command[vllm_command.index("--served-model-name") + 1]
    assert [replica.model for replica in remote.replicas] == [served_name]
    assert remote.replicas[0].url.startswith("http://vllm:8000")
    assert remote.fallback in specs
