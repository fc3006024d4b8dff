"""Benchmark workloads: the short chat prompts, and long prompts of a given token count (bench/run.py)."""

from __future__ import annotations

import random
from pathlib import Path

PROMPTS = [
    "Write a long story about a dragon who learns to paint.",
    "Write a detailed essay about the history of the Roman Empire.",
    "Explain in detail how airplanes fly, for a curious child.",
    "Write a long poem about the sea at night.",
    "Describe, step by step, how to bake a loaf of bread.",
    "Write a long story about a robot who wants to become a gardener.",
    "Explain photosynthesis in detail.",
    "Describe a walk through a busy market in a big city.",
]


WORKLOADS = {  # name: (prompt tokens (low, high) or None for the chat prompts, fixed stream count or None)
    "chat": (None, None),
    "long2k": ((2000, 2000), 1),
    "long8k": ((8000, 8000), 1),
    "mixed": ((100, 4000), 8),
}
FILLER = (
    "The history of the lighthouse keepers of the northern coast is a long one. Every evening the keeper "
    "climbed the spiral stairs, trimmed the wick, polished the lens and watched the sea until morning. "
)


class PromptMaker:
    """Prompts of about N tokens (the model's own tokenizer): a request number, filler text, a question."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.per_filler = len(self.tokenizer(FILLER)["input_ids"])
        self.count = 0

    def make(self, tokens: int) -> str:
        self.count += 1
        body = FILLER * max(1, tokens // self.per_filler)
        return f"Request {self.count}. {body}\nIn one sentence, what did the keeper do?"


def workload_prompts(name: str, maker: PromptMaker | None, streams: int, requests: int, seed: int) -> list[list[str]]:
    """Per stream, the prompts it sends back to back."""
    span, _ = WORKLOADS[name]
    if span is None or maker is None:
        return [[PROMPTS[(i + r * streams) % len(PROMPTS)] for r in range(requests)] for i in range(streams)]
    rng = random.Random(seed)
    return [[maker.make(rng.randint(*span)) for _ in range(requests)] for _ in range(streams)]
