"""A load that cannot work says why, clearly and without filesystem paths; expected 503s are not ERROR lines."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.engine.loader import materialize
from gateway.registry import load_failure_cause
from gateway.settings import ModelSpec
from tests.unit.helpers import assert_envelope, open_gateway, served_factory

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("source", "gguf_file", "message"),
    [
        ("/no/such/dir/model.Q4.gguf", None, "file not found: /no/such/dir/model.Q4.gguf"),
        ("./no-such-model.gguf", None, "file not found: "),
        ("./no-such-dir", None, "directory not found: "),
        ("/no/such/dir", None, "directory not found: /no/such/dir"),
        ("/tmp", "missing.gguf", "file not found: /tmp/missing.gguf"),
    ],
)
def test_a_missing_local_source_is_file_not_found_not_a_hub_error(tmp_path, source, gguf_file, message):
    with pytest.raises(FileNotFoundError) as caught:
        materialize(ModelSpec(name="m", source=source, gguf_file=gguf_file), tmp_path)
    assert str(caught.value).startswith(message), str(caught.value)
    assert load_failure_cause(caught.value).startswith("the model file or directory was not found (")
    assert "/" not in load_failure_cause(caught.value)


def test_the_cause_keeps_the_message_but_not_the_paths():
    cause = load_failure_cause(OSError("Unable to open /home/me/.cache/gantry/gguf/m-1/model.safetensors: corrupt"))
    assert cause == "OSError: Unable to open model.safetensors: corrupt"
    windows = load_failure_cause(ValueError("bad header in C:\\Users\\me\\m.gguf.\nTraceback (most recent call"))
    assert windows == "ValueError: bad header in m.gguf."
    assert len(load_failure_cause(RuntimeError("x" * 5000))) <= 300


async def test_ready_says_why_the_load_failed_without_paths():
    def broken(spec):
        raise OSError("Unable to open /secret/place/model.safetensors: truncated file")

    async with open_gateway(factory=broken) as gw:
        response = await gw.client.get("/health/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "failed"
        message = body["error"]["message"]
        assert "OSError: Unable to open model.safetensors: truncated file" in message
        assert "/secret" not in response.text


async def test_requests_during_a_load_are_not_logged_as_errors(caplog: pytest.LogCaptureFixture):
    release = asyncio.Event()
    from gateway.engine.fake import FakeEngine

    build = served_factory(FakeEngine())

    def slow(spec):
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        return build(spec)

    loop = asyncio.get_running_loop()
    async with open_gateway(factory=slow, load=False) as gw:
        loading = asyncio.ensure_future(gw.app.state.registry.load_all())
        with caplog.at_level(logging.DEBUG, logger="gateway.errors"):
            for _ in range(5):
                assert_envelope(await gw.chat(), 503, code="model_loading", extra={"estimated_time"})
        release.set()
        await asyncio.wait_for(loading, timeout=10)
    records = [r for r in caplog.records if r.name == "gateway.errors"]
    assert len(records) == 5 and all(r.levelno < logging.INFO for r in records)
