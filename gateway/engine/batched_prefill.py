"""How rows join the continuous batch: prefill of admitted prompts, and the chunks of a long one.

Part of `BatchedEngine` (gateway/engine/batched.py), split out to keep that file readable: these methods
run on the engine thread and use its cache, tuner, lean path and rows. A group of short prompts is
prefilled in one forward, packed on the lean stack (else left-padded; a prefix they all share computed
once); a long prompt is prefilled a chunk per step (gateway/engine/chunked_prefill.py), in the running
rows' decode forward where it can.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from gateway.engine.detok import IncrementalDetokenizer
from gateway.engine.rows import Outbox, Seq, shared_prefix
from gateway.engine.sampling import RowSampling
from gateway.engine.types import GenerationDelta

logger = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 8  # shorter common prompt prefixes are prefilled with the rest


class PrefillSteps:
    """Mixin of `BatchedEngine`: its prefill methods (attributes and `_advance`, `_fail_row`, `_forward`,
    `_prefilling` are the engine's)."""

    # the engine's state these methods use (set in BatchedEngine.__init__)
    model: Any
    cache: Any
    chunking: Any
    lean: Any
    tuner: Any
    tokenizer: Any
    logprobs: Any
    device: torch.device
    vocab_size: int
    _active: list[Seq]
    _waiting: Any
    shared_prefix_tokens: int
    prefill_batches: Any
    batch_size: int
    steps: int

    def _start_row(self, seq: Seq, out: Outbox) -> bool:
        """Prompt logprobs and the row's own sampling state; False when it needs no decoding."""
        params = seq.request.params
        if params.prompt_logprobs is not None:
            ids = list(seq.request.prompt_ids)
            out.add(seq, GenerationDelta(prompt_logprobs=self.logprobs.prompt(self.model, ids, params.prompt_logprobs)))
        if params.max_new_tokens <= 0:
            out.add(seq, GenerationDelta(finish_reason="length"))
            return False
        seq.history = list(seq.request.prompt_ids)
        seq.sampling = RowSampling.build(
            params, prompt_len=len(seq.history), vocab_size=self.vocab_size, device=self.device
        )
        seq.detok = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=params.skip_special_tokens)
        return True

    def _prefill(self, seqs: list[Seq], out: Outbox) -> None:
        ready: list[Seq] = []
        for seq in seqs:
            try:
                if self._start_row(seq, out):
                    ready.append(seq)
            except Exception as exc:  # e.g. a seed torch cannot take, a processor factory that raises
                self._fail_row(seq, exc, out)
        if not ready:
            return
        started = time.perf_counter()
        lengths = [len(seq.history) for seq in ready]
        self.cache.lookahead = self._lookahead([*self._active, *ready, *self._prefilling()])
        if len(ready) == 1 and self.chunking.is_long(lengths[0]):  # prefilled a chunk per step from now on
            self.chunking.start(self.cache, ready[0], ready[0].history)
            self.prefill_batches.append(1)
            return
        shared = shared_prefix([seq.history for seq in ready]) if len(ready) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        width = max(lengths) - shared
        if shared:  # e.g. the system prompt of a burst of chat requests: computed once, copied to each row
            position_ids, mask = self.cache.begin_shared_prefix(lengths, shared)
            self.shared_prefix_tokens += shared * (len(ready) - 1)
        if self.lean.mixes:  # packed, no padding (lean_forward.py: a fifth of a chat burst's prefill was padding)
            self.cache.begin_prefill(lengths, shared)
            prefix, suffixes = ready[0].history[:shared], [seq.history[shared:] for seq in ready]
            logits = self.tuner.run(
                "prefill", sum(lengths) - shared * (len(ready) - 1), self.lean.prefill, prefix, suffixes
            )
            if shared:
                self.cache.copy_shared_prefix(len(ready), lengths, shared)
        else:
            if shared:
                prefix_ids = torch.tensor([ready[0].history[:shared]], dtype=torch.long, device=self.device)
                self.tuner.run("prefill", shared, self._forward, prefix_ids, position_ids, mask)
                self.cache.copy_shared_prefix(len(ready), lengths, shared)
            position_ids, mask = self.cache.begin_prefill(lengths, shared)
            input_ids = torch.tensor(
                [[0] * (width - (len(seq.history) - shared)) + seq.history[shared:] for seq in ready],
                dtype=torch.long,
                device=self.device,
            )
            logits = self.tuner.run("prefill", len(ready) * width, self._forward, input_ids, position_ids, mask)
        self.cache.end_prefill(lengths, shared)
        logger.debug(
            "prefill: %d rows joined %d, width %d after %d shared, %.1f ms",
            len(ready),
            self.cache.rows,
            width,
            shared,
            (time.perf_counter() - started) * 1000,
        )
        self.prefill_batches.append(len(ready))
        first = len(self._active)
        self._active.extend(ready)
        self._advance(ready, logits, first, out)

    def _prefill_chunk(self, out: Outbox) -> bool:
        """One chunk of the long prompt in progress; when it was the last, the row joins and gets its first token.

        With rows decoding, the chunk goes in the same forward as their decode step where it can (a mixed
        step: every weight read once for both, so their tokens come at ~the rate the prompt allows); True
        when that step is done. Otherwise the chunk runs alone, cut to a couple of decode steps' time."""
        seq = self.chunking.current.seq  # type: ignore[union-attr]
        self.cache.lookahead = self._lookahead([*self._active, seq])
        waiting, decode_s = len(self._waiting), self.tuner.cost("decode")  # requests queued behind the prompt
        if self._active and self.lean.mixes:
            size = self.chunking.mixed_size(len(self._active), self.lean.row_limit, decode_s, waiting)
            if size:
                self._mixed_step(seq, size, out)
                return True
        size = self.chunking.size(bool(self._active), decode_s, self.tuner.cost("prefill"), waiting)
        logits = self.chunking.step(self.cache, self._chunk_forward, size)
        if logits is not None:
            first = len(self._active)
            self._active.append(seq)
            self._advance([seq], logits, first, out)
        return False

    def _mixed_step(self, seq: Seq, size: int, out: Outbox) -> None:
        """The running rows' decode step and a chunk of the pending prompt in one lean forward."""
        rows = len(self._active)
        input_ids, position_ids, mask = self.cache.begin_decode()
        decode = (input_ids, position_ids, mask, self.cache.target)
        chunk = self.chunking.next_chunk(self.cache, size)  # targets after the decode step's column growth
        self.batch_size = rows
        started = time.perf_counter()
        work = (chunk.input_ids, chunk.position_ids, chunk.prefix, chunk.target)
        logits = self.tuner.run("mixed", rows + chunk.size, self.lean.mixed, decode, work, like="decode")
        self.chunking.record_mixed(time.perf_counter() - started, self.tuner.cost("decode"), chunk.size)
        self.cache.end_decode()
        self.steps += 1
        seqs = list(self._active)
        if self.chunking.finish_chunk(self.cache, chunk):  # the prompt is in: its row samples its first token
            self._active.append(seq)
            seqs.append(seq)
        else:
            logits = logits[:rows]
        self._advance(seqs, logits, 0, out)

    def _chunk_forward(self, work: int, *args: Any) -> torch.Tensor:
        return self.tuner.run("prefill", work, self.lean.chunk, *args)

    @staticmethod
    def _lookahead(seqs: list[Seq]) -> int:
        """Decode steps these rows may still take: the cache grows no further than that."""
        return max(seq.request.params.max_new_tokens - seq.generated for seq in seqs)
