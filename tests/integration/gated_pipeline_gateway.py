"""`python -m tests.integration.gated_pipeline_gateway serve ...`: the real server, where a pipeline entry
named `gated-*` finishes loading only once the file named by $PIPELINE_TEST_GATE exists (at most 120 s).

It makes "while a pipeline loads" a state the test holds open instead of a race with a fast tiny model.
Planted from outside the package: production code has no test-only switch."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gateway.cli import main
from gateway.pipelines.kind import PipelineKind

_load = PipelineKind.load


def gated_load(self: PipelineKind, spec):  # noqa: ANN001 (the real signature's)
    if spec.name.startswith("gated-"):
        gate = Path(os.environ["PIPELINE_TEST_GATE"])
        deadline = time.monotonic() + 120
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return _load(self, spec)


PipelineKind.load = gated_load  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
