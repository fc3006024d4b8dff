"""Assemble a served model: files → tokenizer → family → weights → prompt pipeline → engine."""

from __future__ import annotations

import logging
import time
from typing import Any

from adapters import AdapterRegistry, PromptPipeline
from gateway.engine.admission import Admission, AdmittedEngine
from gateway.engine.hf import HFEngine
from gateway.engine.loader import hide_triton_without_gpu, load_model, load_tokenizer, materialize, read_config
from gateway.engine.speed import bound_onednn_caches
from gateway.models import ServedModel
from gateway.progress import report
from gateway.settings import EMBEDDED_DEFAULT_MAX_TOKENS, EMBEDDED_MODEL, EMBEDDED_SAMPLING, ModelSpec

logger = logging.getLogger(__name__)

_SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def sampling_defaults(spec: ModelSpec, generation_config: dict[str, Any]) -> dict[str, float]:
    """Values used where a request leaves a sampling field unset: the spec's, over the model card's for
    the embedded model, over the model authors' generation_config."""
    authors = {k: generation_config[k] for k in _SAMPLING_DEFAULT_KEYS if generation_config.get(k) is not None}
    card = EMBEDDED_SAMPLING if spec.source == EMBEDDED_MODEL else {}
    return {**authors, **card, **spec.sampling.values()}


def model_max_tokens(spec: ModelSpec, generation_config: dict[str, Any]) -> int | None:
    """The model's own cap for requests without max_tokens (the spec's setting wins over it): the
    authors' generation_config max_new_tokens (as vLLM takes it; its max_length is transformers' 20 by
    default, so it is not read), else the embedded model's small default, else none."""
    authors = generation_config.get("max_new_tokens")
    if isinstance(authors, int) and authors > 0:
        return authors
    return EMBEDDED_DEFAULT_MAX_TOKENS if spec.source == EMBEDDED_MODEL else None


def build_engine(
    spec: ModelSpec,
    model: Any,
    tokenizer: Any,
    *,
    pad_token_id: int | None,
    decode_attention: Any = None,
    decode_layers: Any = None,
) -> tuple[Any, str]:
    """The engine the spec asks for: batched (continuous batching) where the model supports it."""
    if spec.engine in ("auto", "batched"):
        from gateway.engine.batch_support import batched_support
        from gateway.engine.batched import BatchedEngine

        reason = batched_support(model)
        if reason is None:
            engine = BatchedEngine(
                model,
                tokenizer,
                name=spec.name,
                max_running=spec.max_running,
                max_queued=spec.max_queued,
                pad_token_id=pad_token_id,
                prefill_chunk_tokens=spec.prefill_chunk_tokens,
                lean=not spec.compile,  # a compiled forward is the faster one to keep
                decode_attention=decode_attention,
                decode_layers=decode_layers,
            )
            return engine, "batched"
        if spec.engine == "batched":
            raise ValueError(f"engine=batched cannot serve {spec.name}: {reason}")
        logger.info("model %s: per-request engine (batched engine unsupported: %s)", spec.name, reason)
    simple = HFEngine(model, tokenizer, name=spec.name, pad_token_id=pad_token_id)
    # one generation at a time: running 1, the rest waits in the worker's queue up to max_queued
    return AdmittedEngine(simple, Admission(max_running=1, max_queued=spec.max_queued, name=spec.name)), "simple"


def build_served_model(spec: ModelSpec, *, cache_dir: Any, adapters: AdapterRegistry | None = None) -> ServedModel:
    started = time.monotonic()
    hide_triton_without_gpu()
    bound_onednn_caches()  # before this process builds its first oneDNN primitive
    adapters = adapters or AdapterRegistry()
    report("files (download / GGUF dequantization on first use)", 0.0)
    model_dir = materialize(spec, cache_dir)
    config = read_config(model_dir)
    borrower = adapters.external_tokenizer_family(config=config, explicit=spec.family)
    if borrower is not None and not spec.tokenizer:
        raise ValueError(
            f"{spec.name}: the {borrower.name} family ships no tokenizer; give one with --tokenizer "
            "(OpenELM uses Llama-2's, e.g. a local copy of meta-llama/Llama-2-7b-hf)."
        )
    report("tokenizer", 0.25)
    tokenizer = load_tokenizer(spec, model_dir)
    adapter = adapters.resolve(
        config=config,
        tokenizer=tokenizer,
        model_name=spec.name if spec.source == EMBEDDED_MODEL else spec.source,
        explicit=spec.family,
    )
    report("weights to device", 0.4)
    loaded = load_model(
        spec,
        model_dir,
        tokenizer,
        trust_remote_code=spec.trust_remote_code or adapter.trust_remote_code,
        cache_dir=cache_dir,
    )
    pipeline = PromptPipeline.build(
        tokenizer,
        adapter,
        config=loaded.config,
        generation_config=loaded.generation_config,
        chat_template_override=spec.chat_template.read_text(encoding="utf-8") if spec.chat_template else None,
        allow_plain_chat=spec.plain_chat_template,
    )
    report("engine", 0.9)
    engine, kind = build_engine(
        spec,
        loaded.model,
        tokenizer,
        pad_token_id=pipeline.pad_token_id,
        decode_attention=loaded.decode_attention,
        decode_layers=loaded.decode_layers,
    )
    lean = getattr(engine, "lean", None)  # lean_path.LeanPath of the batched engine
    served = ServedModel(
        spec=spec,
        pipeline=pipeline,
        engine=engine,
        context_length=loaded.context_length,
        vocab_size=engine.vocab_size,
        sampling_defaults=sampling_defaults(spec, loaded.generation_config),
        model_max_tokens=model_max_tokens(spec, loaded.generation_config),
        details={
            "device": str(loaded.device),
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "engine": kind,
            "forward": getattr(lean, "path", "model"),
            "decode_attention": getattr(lean, "attention", "model"),
            "decode_layers": getattr(lean, "decode_layers", "model"),
            **loaded.speed,
        },
    )
    logger.info(
        "model %s ready in %.1f s: %s, context %d, %s engine, default max tokens %s, sampling defaults %s",
        spec.name,
        time.monotonic() - started,
        pipeline.describe(),
        loaded.context_length,
        kind,
        served.default_max_tokens or "the rest of the window",
        served.sampling_defaults or "OpenAI's",
    )
    return served
