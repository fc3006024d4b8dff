"""GET /v1/models/{id} never shows a server path, wherever a kind's description puts one; /admin still does."""

from __future__ import annotations

import pytest

from gateway.engine.fake import FakeEngine
from gateway.models import ServedModel
from gateway.redact import strip_paths
from gateway.settings import ModelSpec
from tests.unit.helpers import MODEL, make_settings, open_gateway, qwen_pipeline, qwen_tokenizer

pytestmark = pytest.mark.anyio

DETAILS = {
    "weights": "/srv/private/models/llama-7b/model.safetensors",
    "tokenizer_dir": "~/secret/tok",
    "note": "dequantized from /home/alice/models/x.gguf into C:\\cache\\gantry\\x",
    "files": ["./relative/dir/config.json"],
    "engine": "batched",
    "media": "text/plain",
    "hub": "org/model-name",
}


def factory(spec: ModelSpec) -> ServedModel:
    return ServedModel(
        spec=spec,
        pipeline=qwen_pipeline(),
        engine=FakeEngine(),
        context_length=4096,
        vocab_size=len(qwen_tokenizer()),
        details=dict(DETAILS),
    )


async def test_v1_model_details_show_file_names_not_paths(tmp_path) -> None:
    source = str(tmp_path / "weights-dir")
    settings = make_settings(model=source, admin_key="k", state_file=tmp_path / "state.json")
    async with open_gateway(settings=settings, factory=factory) as gw:
        card = (await gw.client.get(f"/v1/models/{MODEL}")).json()
        admin = (await gw.client.get("/admin/models", headers={"authorization": "Bearer k"})).json()
    text = str(card)
    for secret in ("/srv/private", "~/secret", "/home/alice", "C:\\cache", "./relative", str(tmp_path)):
        assert secret not in text, secret
    details = card["details"]
    assert details["weights"] == "model.safetensors" and details["tokenizer_dir"] == "tok"
    assert details["note"] == "dequantized from x.gguf into x" and details["files"] == ["config.json"]
    assert (details["engine"], details["media"], details["hub"]) == ("batched", "text/plain", "org/model-name")
    assert "root" not in card  # a local source is never shown as the root
    assert source in str(admin)  # the operator's view keeps where the model comes from


def test_api_routes_and_urls_are_not_paths() -> None:
    text = "GET /v1/models lists them; see https://example.com/a/b/c"
    assert strip_paths(text) == text


def test_public_details_drop_backend_addresses_but_keep_health():
    from gateway.redact import public_details

    details = {
        "upstream": {
            "healthy_replicas": 1,
            "replicas": [{"url": "http://10.0.0.5:8000/v1", "health": "up", "last_error": "connect to 10.0.0.5"}],
        },
        "source": "/srv/models/secret-dir/model.gguf",
    }
    shown = public_details(details)
    assert shown == {"upstream": {"healthy_replicas": 1, "replicas": [{"health": "up"}]}, "source": "model.gguf"}
