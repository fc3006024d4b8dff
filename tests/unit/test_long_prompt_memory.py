"""A long prompt grows the process by about its own KV cache: chunked prefill never holds prompt x prompt work.

The real embedded SmolLM2-135M (fp32) prefills a 4,096-token prompt with max_tokens 1 in 512-token chunks,
in a subprocess (bench/long_prompt.py) whose peak RSS (VmHWM, reset just before) is its own. Before chunking,
one forward over a 2,048-token prompt raised the peak by 220-246 MiB (KV 90 MiB); an ~8k prompt by 2.3-3.1 GB.
The issue's bound is 400 MB at 8k tokens (KV 368 MiB); the 8k run takes over a minute on 2 cores, so it is
`bench/long_prompt.py --tokens 8000` and this test runs at half the length: the KV of the prompt plus 160 MiB
(activations of one chunk, attention over the context, allocator slack). Measured: 59-90 MiB over the KV with
oneDNN-packed layers; 77-120 MiB with the rowwise kernel (9 runs; its process is ~100 MiB smaller before the
prompt, 941 vs 1039 MiB, and its absolute peak lower, ~1226 vs ~1287 MiB: the rise differs, not the memory).
So the issue's 8k bound (~48 MiB over a 352 MiB KV) is not met yet; this guards the chunking itself (one
unchunked 4k forward adds ~600 MiB of attention scores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

TOKENS = 4096
HEADROOM = 160 << 20


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.timeout(1200)  # ~30 s idle; a loaded 2-core machine took 9 minutes
def test_long_prompt_peak_rss_rise_is_its_kv_cache_plus_a_chunk() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "long_prompt.py"), "--tokens", str(TOKENS)]
        + ["--chunk", "512", "--modes", "chunked", "--json", "-"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["tokens"] == TOKENS
    rise, kv = summary["chunked"]["peak_rise_max"], summary["kv_bytes"]
    assert kv > 150 << 20  # the prompt really is long: its KV alone is most of the bound
    assert rise <= kv + HEADROOM, f"peak RSS rose {rise / 2**20:.0f} MiB; KV {kv / 2**20:.0f} MiB"
    assert len(summary["runs"][0]["tokens"]) == 1
