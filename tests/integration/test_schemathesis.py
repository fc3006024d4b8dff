"""schemathesis fuzzes a real server from the server's own OpenAPI document (bounded, reproducible).

Checks: no 5xx, no status code or content type the document does not declare, and every response (SSE events
included, through their `contentSchema`) matching its documented schema. The server runs a tiny random-weight
SmolLM2 (real tokenizer and chat template) with a 256-token context, so no generated `max_tokens` can make one
case take more than a second or two; the embedded 135M model would need minutes for the same run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import RunningServer, start_server, stop_server

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = 100  # per operation; the GET routes run out of distinct inputs early: 303 cases in all (seed 0)
SEED = 0  # the same cases every run: CI cannot turn red because a new random case was drawn


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from tests.adapters.tiny_models import build_family_model

    root = tmp_path_factory.mktemp("schemathesis")
    model = build_family_model("smollm2", root / "tiny-smollm2")
    args = ("--model", str(model), "--served-model-name", "tiny", "--max-context", "256", "--device", "cpu")
    running = start_server(root, *args)
    yield running
    stop_server(running)


@pytest.mark.slow
def test_schemathesis_finds_no_violation(tiny_server: RunningServer, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{tiny_server.url}/openapi.json",
        f"--checks={CHECKS}",
        "--phases=examples,fuzzing",
        f"--max-examples={MAX_EXAMPLES}",
        f"--seed={SEED}",
        "--workers=1",
        "--request-timeout=60",
        "--generation-database=none",
        "--output-sanitize=false",  # else fields named like "*token*" print as [Filtered] in the failures
        "--no-color",
        # POST /generate runs the distilgpt2 tutorial's 5-beam search to 200 tokens: seconds per case, minutes for
        # a fuzz run. Its shapes and errors are checked in tests/unit/test_compat_routes.py and
        # tests/integration/test_tutorial_clients.py; POST / (sampling, bounded by the 256-token window) stays in.
        "--exclude-path=/generate",
    ]
    # cwd: no schemathesis.toml or .hypothesis directory from the checkout is read or written.
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    failures = output[output.find("=== FAILURES ===") :] if "=== FAILURES ===" in output else output[-6000:]
    assert run.returncode == 0, f"schemathesis found problems (exit {run.returncode}):\n{failures[:20000]}"
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated.group(1)) >= 100, f"schemathesis ran too few cases:\n{output[-3000:]}"
