"""`python -m tests.integration.faulty_gateway serve ...`: the real server with two faults planted, for tests.

Both act on one row of the batched engine, through the functions it calls for every row:
- seed JOIN_FAULT_SEED: building the row's generator raises what torch raised for an out-of-range seed
  ("Overflow when unpacking long long"), when the row joins the batch;
- seed STEP_FAULT_SEED: the row gets one more logits processor (the seam grammars use) that raises on its
  third step, in the middle of the batch.
Planted from outside the package: production code has no test-only switch, and no valid request can make
a row fail once the edge validates every parameter.
"""

from __future__ import annotations

from typing import Any

import gateway.engine.sampling as sampling
from gateway.cli import main

JOIN_FAULT_SEED = 1_234_567
STEP_FAULT_SEED = 7_654_321
FAIL_AT_STEP = 3
_request_generator = sampling.request_generator
_row_processors = sampling.row_processors


class FailsAtStep:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.calls += 1
        if self.calls >= FAIL_AT_STEP:
            raise RuntimeError("planted fault: this row fails mid-batch")
        return scores


def request_generator(params: Any, device: Any) -> Any:
    if params.seed == JOIN_FAULT_SEED:
        raise RuntimeError("Overflow when unpacking long long (planted)")
    return _request_generator(params, device)


def row_processors(params: Any, **kwargs: Any) -> list[Any]:
    chain = _row_processors(params, **kwargs)
    return [*chain, FailsAtStep()] if params.seed == STEP_FAULT_SEED else chain


sampling.request_generator = request_generator
sampling.row_processors = row_processors

if __name__ == "__main__":
    main()
