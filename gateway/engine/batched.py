"""Continuous-batching engine: concurrent requests share every forward pass of the model.

One dedicated thread per model runs the scheduler loop over the model's own forward and a shared
KV cache (`BatchKVCache`). Each iteration:

1. drops rows whose request was cancelled (client gone, `abort`), freeing their slots;
2. admits waiting requests into free slots (≤ max_running) and prefills them together in one
   forward (packed on the lean stack, else left-padded); their first token is sampled from the
   prefill logits and sent at once;
   a prompt longer than `prefill_chunk_tokens` is prefilled alone, one chunk per iteration
   (gateway/engine/chunked_prefill.py), in the same forward as the running rows' decode step where
   the lean stack runs (a mixed step), so they keep decoding while it fills;
3. runs one decode step for every active row (one token each), samples every row with its own
   parameters (`sampling.sample`), decodes text incrementally and retires rows that stopped.

Requests join and leave between steps. A beam-search request (num_beams > 1) runs whole between two
steps, in this same thread, through transformers' `generate` (gateway/engine/beam.py): it is the one
thread that touches the model, so no lock is needed and no forward pass ever overlaps another; the
batch's rows wait meanwhile (one beam search at a time; its length is bounded by its max_new_tokens).
Deltas go to each request's asyncio queue through one
`call_soon_threadsafe` per event loop per step. transformers' own continuous batching
(`init_continuous_batching`) is not used: it takes temperature/top-k/top-p from the first request's
generation config and has no per-request seeds, penalties, bias, logits processors or logprobs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import torch

from gateway.engine.admission import Admission
from gateway.engine.base import queued_deltas
from gateway.engine.batched_prefill import PrefillSteps
from gateway.engine.beam import run_beam_search
from gateway.engine.chunked_prefill import ChunkScheduler
from gateway.engine.decode_attention import DecodeAttention
from gateway.engine.decode_layers import DecodeLayers
from gateway.engine.kvcache import BatchKVCache, attention_mask_dtype, forward_last_logits
from gateway.engine.lean_path import LeanPath
from gateway.engine.rows import Outbox, Seq
from gateway.engine.sampling import sample
from gateway.engine.speed import output_vocab_size
from gateway.engine.threads import ThreadTuner
from gateway.engine.token_logprobs import TokenLogprobs
from gateway.engine.types import GenerationDelta, GenerationRequest
from gateway.errors import EngineError
from gateway.gc_heap import MALLOC_THRESHOLDS, release_free_memory
from gateway.openmp_pool import release_openmp_workers

logger = logging.getLogger(__name__)

COALESCE_GAP_S = 0.005  # an idle engine waits this long for another request of the same burst ...
COALESCE_MAX_S = 0.030  # ... but no longer than this in all


class BatchedEngine(PrefillSteps):
    """Engine protocol over one causal LM with continuous batching (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_running: int = 16,
        max_queued: int = 64,
        max_prefill_tokens: int = 2048,
        pad_token_id: int | None = None,
        prefill_chunk_tokens: int = 0,
        lean: bool = True,
        decode_attention: DecodeAttention | None = None,
        decode_layers: DecodeLayers | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_running = max_running
        self.max_prefill_tokens = max_prefill_tokens
        self.pad_token_id = pad_token_id  # for beam search's finished beams
        self.admission = Admission(max_running=max_running, max_queued=max_queued, name=name)
        self.device = next(model.parameters()).device
        self.vocab_size = output_vocab_size(model)
        config = model.config.get_text_config(decoder=True)
        self._mask_dtype = attention_mask_dtype(model)
        self.cache = BatchKVCache(config.num_hidden_layers, self.device)
        self.lean = LeanPath(
            model, self.cache, self._forward, allowed=lean, attention=decode_attention, layers=decode_layers
        )
        self.tuner = ThreadTuner()
        self.chunking = ChunkScheduler(prefill_chunk_tokens)
        self._active: list[Seq] = []  # row i of the cache is _active[i]
        self._waiting: deque[Seq] = deque()
        self._beams: deque[Seq] = deque()  # beam-search requests, run one at a time between steps
        self._seqs: dict[str, Seq] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.logprobs = TokenLogprobs(tokenizer)
        self.steps = 0  # decode steps run (for tests and stats)
        self.shared_prefix_tokens = 0  # prompt tokens not recomputed thanks to a shared prefix
        self.dropped: deque[tuple[str, int]] = deque(maxlen=256)  # (request id, step) of recent cancellations
        self.prefill_batches: deque[int] = deque(maxlen=256)  # requests per recent prefill forward
        self.batch_size = 0  # rows in the last decode step (0 when idle), for /metrics
        self._thread = threading.Thread(target=self._loop, name=f"batched-{name}", daemon=True)
        self._thread.start()

    # ---- Engine protocol (event loop side) ------------------------------------------------------------
    def reserve(self, n: int) -> None:
        """Hold n places before a stream starts; raises OverloadedError (HTTP 429) when full."""
        if self._closed:
            raise EngineError("The engine is shutting down.")
        self.admission.reserve(n)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        if self._closed:
            raise EngineError("The engine is shutting down.")
        self.admission.enter()  # raises OverloadedError before anything is yielded
        seq = Seq(request=request, loop=asyncio.get_running_loop())
        self._seqs[request.request_id] = seq
        with self._cond:
            (self._beams if request.params.num_beams > 1 else self._waiting).append(seq)
            self._cond.notify()
        try:
            async with aclosing(queued_deltas(seq.queue)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            seq.cancelled = True  # a no-op once finished; otherwise the next step drops the row
            self._seqs.pop(request.request_id, None)
            self.admission.leave()

    async def abort(self, request_id: str) -> None:
        seq = self._seqs.get(request_id)
        if seq is not None:
            seq.cancelled = True
            with self._cond:
                self._cond.notify()

    async def close(self) -> None:
        with self._cond:
            self._closed = True
            for seq in [*self._active, *self._waiting, *self._beams, *self._prefilling()]:
                seq.cancelled = True
            self._cond.notify()
        for _ in range(1000):  # the step in progress finishes, then the thread exits (no executor thread)
            if not self._thread.is_alive():
                break
            await asyncio.sleep(0.01)

    def _prefilling(self) -> list[Seq]:
        current = self.chunking.current
        return [] if current is None else [current.seq]

    def stats(self) -> dict[str, int]:
        return {
            "running": len(self._active),
            "waiting": len(self._waiting) + len(self._beams),
            "in_flight": self.admission.in_flight,
        }

    def metrics_snapshot(self) -> dict[str, float]:
        """Read by /metrics at scrape time from another thread: plain reads of sizes, no lock."""
        running = len(self._active)
        return {
            "running": running,
            # queued in the engine, plus admitted by the services but not handed over yet
            "waiting": max(0, self.admission.in_flight - running),
            "batch_size": self.batch_size,
            "kv_cache_bytes": self.cache.nbytes(),
        }

    # ---- engine thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                if not self._waiting and not self._active and not self._beams and self.chunking.current is None:
                    MALLOC_THRESHOLDS.long_prompt(self, False)
                    self.batch_size = 0
                    release_free_memory()  # going idle: return the burst's freed heap to the OS
                    release_openmp_workers()  # and its OpenMP workers, which would slow other threads' regions
                    logger.debug("idle after %d steps; thread tuning %s", self.steps, self.tuner.describe())
                with self._cond:
                    while (
                        not self._closed
                        and not self._waiting
                        and not self._active
                        and not self._beams
                        and not self._prefilling()
                    ):
                        self._cond.wait()
                    if not self._active and not self._prefilling():
                        self._coalesce()
                    if self._closed:
                        break
                    admitted, dropped = self._take_waiting()
                    beam = self._beams.popleft() if self._beams else None
                out = Outbox()
                for seq in dropped:
                    out.add(seq, GenerationDelta(finish_reason="abort"))
                try:
                    self._drop_cancelled(out)
                    if admitted:
                        self._prefill(admitted, out)
                        out.flush()  # first tokens go out before the decode step
                    decoded = False
                    MALLOC_THRESHOLDS.long_prompt(self, self.chunking.current is not None)
                    if self.chunking.current is not None:
                        decoded = self._prefill_chunk(out)
                        out.flush()
                    if self._active and not decoded:
                        self._decode(out)
                except Exception as exc:
                    # Per-row work (sampling state, processors, sampling, detokenization, prompt logprobs)
                    # fails only its own row (`_fail_row`). What reaches here broke the shared forward or
                    # the cache itself: every row's KV state is then suspect, so the whole batch ends with
                    # the error and the cache starts clean; the thread lives on for the next requests.
                    logger.exception("batched step failed for %s", self.name)
                    for seq in {*self._active, *admitted, *self._prefilling()}:
                        if not seq.failed:
                            out.add(seq, exc)
                    self._active.clear()
                    self.chunking.current = None
                    self.cache.reset()
                out.flush()
                if beam is not None:
                    self._run_beam(beam, out)
                    out.flush()
            out = Outbox()
            with self._cond:
                for seq in [*self._active, *self._waiting, *self._beams, *self._prefilling()]:
                    out.add(seq, GenerationDelta(token_ids=seq.pending, finish_reason="abort"))
                self._active.clear()
                self.chunking.current = None
                self._waiting.clear()
                self._beams.clear()
            out.flush()
            self.cache.reset()
            self.tuner.restore()
            MALLOC_THRESHOLDS.long_prompt(self, False)

    def _run_beam(self, seq: Seq, out: Outbox) -> None:
        """One beam-search request, whole (see the module docstring); its errors are its own."""
        if seq.cancelled:
            out.add(seq, GenerationDelta(finish_reason="abort"))
            return
        # Thread count chosen per beam step by measured speed, like prefill and decode (gateway/engine/threads.py):
        # on a busy CPU the wrong one makes each step ~10x slower.
        threads = self.tuner.choose("beam", 1)
        started = time.perf_counter()

        def on_step() -> None:
            nonlocal threads, started
            now = time.perf_counter()
            self.tuner.record("beam", threads, now - started, 1)
            threads, started = self.tuner.choose("beam", 1), time.perf_counter()

        try:
            delta = run_beam_search(
                self.model,
                self.tokenizer,
                seq.request,
                pad_token_id=self.pad_token_id,
                cancelled=lambda: seq.cancelled or self._closed,
                on_step=on_step,
            )
        except Exception as exc:
            self._fail_row(seq, exc, out)
            return
        out.add(seq, delta)

    def _coalesce(self) -> None:
        """Idle engine, first request in: wait a moment for the rest of a burst (under the lock).

        Requests of a burst reach the engine a millisecond or two apart (the event loop prepares them
        one by one). Prefilled together they share one forward (and their common prompt prefix);
        otherwise the first one's prefill delays all the others. Requests already admitted by the
        services (`reserve`) but not here yet are part of the burst: they are waited for as well.
        """
        deadline = time.monotonic() + COALESCE_MAX_S
        seen = len(self._waiting)
        while not self._closed and seen < self.max_running:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(min(COALESCE_GAP_S, left))
            if len(self._waiting) == seen and not self.admission.reserved:  # nobody else is coming: go
                break
            seen = len(self._waiting)

    def _take_waiting(self) -> tuple[list[Seq], list[Seq]]:
        """(requests that fit in the free slots and the prefill token budget, cancelled waiting ones)."""
        dropped = [seq for seq in self._waiting if seq.cancelled]
        if dropped:
            self._waiting = deque(seq for seq in self._waiting if not seq.cancelled)
        free = self.max_running - len(self._active) - len(self._prefilling())
        taken = self.chunking.take(self._waiting, free, self.max_prefill_tokens)
        for seq in taken:
            seq.request.timing.start()  # its queue wait ends here
        return taken, dropped

    def _drop_cancelled(self, out: Outbox) -> None:
        for row in range(len(self._active) - 1, -1, -1):
            seq = self._active[row]
            if seq.cancelled:
                out.add(seq, GenerationDelta(token_ids=seq.pending, finish_reason="abort"))
                self.dropped.append((seq.request.request_id, self.steps))
                self._remove(row)
        current = self.chunking.current
        if current is not None and current.seq.cancelled:
            out.add(current.seq, GenerationDelta(finish_reason="abort"))
            self.dropped.append((current.seq.request.request_id, self.steps))
            self.chunking.cancel(self.cache)

    def _remove(self, row: int) -> None:
        self.cache.remove_row(row)
        last = self._active.pop()
        if row < len(self._active):
            self._active[row] = last

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return forward_last_logits(self.model, self.cache, input_ids, position_ids, mask, self._mask_dtype)

    def _fail_row(self, seq: Seq, exc: Exception, out: Outbox) -> None:
        """End one request with its own error; the rest of the batch carries on."""
        logger.warning("request %s failed in the engine: %s: %s", seq.request.request_id, type(exc).__name__, exc)
        seq.failed = True
        out.add(seq, exc)

    def _decode(self, out: Outbox) -> None:
        self.cache.lookahead = self._lookahead(self._active)
        input_ids, position_ids, mask = self.cache.begin_decode()
        self.batch_size = len(self._active)
        logits = self.tuner.run("decode", 1, self.lean.decode, input_ids, position_ids, mask)
        self.cache.end_decode()
        self.steps += 1
        self._advance(list(self._active), logits, 0, out)

    def _advance(self, seqs: list[Seq], logits: torch.Tensor, first_row: int, out: Outbox) -> None:
        """Sample one token for rows first_row.. (= seqs), stream it, and retire the rows that finished."""
        rows = [seq.sampling for seq in seqs]
        result = sample(logits, rows, lambda i: seqs[i].history, overwrite=True)  # type: ignore[misc]
        self.cache.tokens[first_row : first_row + len(seqs)] = result.tokens
        finished: list[int] = []
        for i, seq in enumerate(seqs):
            try:
                if i in result.errors:  # this row's own logits processor raised
                    raise result.errors[i]
                delta = self._step_row(seq, result.token_list[i], result.logprobs[i])
            except Exception as exc:
                self._fail_row(seq, exc, out)
                finished.append(first_row + i)
                continue
            if delta is not None:
                out.add(seq, delta)
                if delta.finish_reason is not None:
                    finished.append(first_row + i)
        for row in sorted(finished, reverse=True):
            self._remove(row)

    def _step_row(self, seq: Seq, token: int, logprob: tuple[float, list] | None) -> GenerationDelta | None:
        """Record one sampled token of a row; the delta to send (None while its text is held back)."""
        seq.generated += 1
        seq.history.append(token)
        params = seq.request.params
        stop = token in params.stop_token_ids
        text = "" if stop else seq.detok.push(token)  # type: ignore[union-attr]
        finish = "stop" if stop else ("length" if seq.generated >= params.max_new_tokens else None)
        seq.pending.append(token)
        if logprob is not None:
            seq.pending_logprobs.append(self.logprobs.token(token, logprob[0], logprob[1]))
        if finish is not None:
            text += seq.detok.flush()  # type: ignore[union-attr]
        elif not text and logprob is None:
            return None  # text held back (incomplete character): send these ids with the next piece
        delta = GenerationDelta(
            text=text,
            token_ids=seq.pending,
            logprobs=seq.pending_logprobs if params.logprobs is not None else None,
            finish_reason=finish,  # type: ignore[arg-type]
        )
        seq.pending, seq.pending_logprobs = [], []
        return delta
