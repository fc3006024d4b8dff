"""Long-prompt prefill: time and peak RSS rise of one N-token prompt (max_tokens 1), chunked vs not.

    .venv/bin/python bench/long_prompt.py --tokens 8000                  # chunked (512) vs one forward
    .venv/bin/python bench/long_prompt.py --tokens 2048 --rounds 3 --chunk 256
    .venv/bin/python bench/long_prompt.py --tokens 4096 --modes chunked --json out.json
    .venv/bin/python bench/long_prompt.py --tokens 4096 --with-stream   # + another stream's inter-token gaps

The embedded SmolLM2-135M (fp32 unless --dtype) is loaded in this process and driven through the
batched engine directly (no HTTP). Modes alternate within each round, so background load hits them
alike; each run resets the peak (VmHWM, via /proc/self/clear_refs) after the previous run's memory was
handed back, and reports the rise over the RSS before it. The first generated token of every run is
printed too: chunked and unchunked must agree. With --with-stream, a short greedy request is decoding
when the long prompt arrives: its inter-token gaps before (normal) and during the prefill are reported
(p95 and their ratio; the peak-RSS figure then includes that stream's own small KV).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEXT = (
    "The history of the lighthouse keepers of the northern coast is a long one. Every evening the keeper "
    "climbed the spiral stairs, trimmed the wick, polished the lens and watched the sea until morning. "
)


def status(key: str, pid: int | str = "self") -> int:
    """A /proc/<pid>/status figure in bytes (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def cpu_isa() -> str:
    """AVX2 / AVX-512 / AMX from /proc/cpuinfo flags (the same line bench/run.py prints)."""
    from bench.isa import describe_isa

    return describe_isa()


def load(dtype: str, linear_kernel: str = "auto"):  # type: ignore[no-untyped-def]
    from gateway.engine.loader import hide_triton_without_gpu, load_model, load_tokenizer, materialize
    from gateway.engine.speed import bound_onednn_caches
    from gateway.settings import EMBEDDED_MODEL, EMBEDDED_MODEL_NAME, ModelSpec, Settings

    hide_triton_without_gpu()
    bound_onednn_caches()
    spec = ModelSpec(name=EMBEDDED_MODEL_NAME, source=EMBEDDED_MODEL, dtype=dtype, linear_kernel=linear_kernel)
    cache_dir = Settings(_env_file=None).cache_dir
    path = materialize(spec, cache_dir)
    tokenizer = load_tokenizer(spec, path)
    return load_model(spec, path, tokenizer, trust_remote_code=False, cache_dir=cache_dir), tokenizer


def prompt_ids(tokenizer, tokens: int) -> list[int]:  # type: ignore[no-untyped-def]
    ids: list[int] = []
    text = TEXT
    while len(ids) < tokens:
        ids = tokenizer(text)["input_ids"]
        text += TEXT
    return ids[:tokens]


async def one(engine, ids: list[int], max_tokens: int) -> list[int]:  # type: ignore[no-untyped-def]
    from gateway.engine.types import GenerationRequest, SamplingParams

    request = GenerationRequest(uuid.uuid4().hex, ids, SamplingParams(max_new_tokens=max_tokens, temperature=0.0))
    out: list[int] = []
    async for delta in engine.generate(request):
        out += delta.token_ids
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else float("nan")


async def with_stream(engine, ids: list[int], max_tokens: int, other: list[int]) -> tuple[list[int], dict]:  # type: ignore[no-untyped-def]
    """The long request while another stream decodes: (its tokens, the other's gap p95 before/during)."""
    from contextlib import aclosing

    from gateway.engine.types import GenerationRequest, SamplingParams

    stamps: list[float] = []
    request = GenerationRequest(uuid.uuid4().hex, other, SamplingParams(max_new_tokens=100_000, temperature=0.0))

    async def stream() -> None:
        async with aclosing(engine.generate(request)) as deltas:
            async for delta in deltas:
                stamps.extend(time.perf_counter() for _ in delta.token_ids)

    task = asyncio.create_task(stream())
    while len(stamps) < 40:
        await asyncio.sleep(0.01)
    submitted = time.perf_counter()
    tokens = await one(engine, ids, max_tokens)
    done = time.perf_counter()
    await engine.abort(request.request_id)
    await task
    gaps = [(b - a, a, b) for a, b in zip(stamps, stamps[1:], strict=False)]
    normal = [g for g, _, end in gaps if end < submitted][5:]  # after the stream's own first steps
    during = [g for g, start, end in gaps if end > submitted and start < done]  # incl. a stall across it
    return tokens, {
        "gap_p95_normal": p95(normal),
        "gap_p95_during": p95(during),
        "gap_p50_normal": statistics.median(normal),
        "gap_p50_during": statistics.median(during),
        "gaps_during": len(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--chunk", type=int, default=512, help="prefill_chunk_tokens of the chunked mode")
    parser.add_argument("--modes", nargs="+", default=["chunked", "unchunked"], choices=["chunked", "unchunked"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--linear-kernel", default="auto", choices=["auto", "rowwise", "onednn", "torch"])
    parser.add_argument("--with-stream", action="store_true", help="another stream decodes meanwhile")
    parser.add_argument("--json", help="write the results here ('-' = stdout, one JSON line at the end)")
    args = parser.parse_args()

    import torch

    from gateway.engine.batched import BatchedEngine
    from gateway.gc_heap import MALLOC_THRESHOLDS, release_free_memory
    from gateway.openmp_pool import release_openmp_workers

    MALLOC_THRESHOLDS.install()  # as the server does at start

    loaded, tokenizer = load(args.dtype, args.linear_kernel)
    engine = BatchedEngine(  # with the C kernels the loader built, as the server runs it
        loaded.model,
        tokenizer,
        name="long-prompt",
        decode_attention=loaded.decode_attention,
        decode_layers=loaded.decode_layers,
    )
    # loading and the engine's start-up checks ran parallel ops on this thread: its OpenMP workers would slow
    # every region of the engine's own thread (gateway/openmp_pool.py; figures before this ran ~1.6x slower)
    release_openmp_workers()
    ids = prompt_ids(tokenizer, args.tokens)
    isa = cpu_isa()
    print(  # noqa: T201
        f"model SmolLM2-135M {args.dtype}, attention {loaded.model.config._attn_implementation}, "
        f"prompt {len(ids)} tokens, torch threads {torch.get_num_threads()}, CPU {isa}",
        flush=True,
    )
    engine.chunking.chunk_tokens = args.chunk
    asyncio.run(one(engine, ids[: 2 * args.chunk + 7], 2))  # warm-up: kernels, allocator pools, both paths
    runs: list[dict] = []
    for _ in range(args.rounds):
        for mode in args.modes:
            engine.chunking.chunk_tokens = args.chunk if mode == "chunked" else 0
            gc.collect()
            release_free_memory()
            before = status("VmRSS")
            reset_peak()
            started = time.perf_counter()
            gaps: dict = {}
            if args.with_stream:
                tokens, gaps = asyncio.run(with_stream(engine, ids, args.max_tokens, ids[:24]))
            else:
                tokens = asyncio.run(one(engine, ids, args.max_tokens))
            seconds = time.perf_counter() - started
            rise = status("VmHWM") - before
            runs.append({"mode": mode, "seconds": seconds, "peak_rise_bytes": rise, "tokens": tokens, **gaps})
            line = f"{mode:9s} {seconds:7.1f} s  peak RSS rise {rise / 2**20:7.1f} MiB  tokens {tokens}"
            if gaps:
                line += (
                    f"  other stream gap p95 {gaps['gap_p95_normal'] * 1000:.0f} ms normal, "
                    f"{gaps['gap_p95_during'] * 1000:.0f} ms during ({gaps['gaps_during']} gaps; "
                    f"p50 {gaps['gap_p50_normal'] * 1000:.0f} / {gaps['gap_p50_during'] * 1000:.0f} ms)"
                )
            print(line, flush=True)  # noqa: T201
    asyncio.run(engine.close())
    kv = 2 * loaded.model.config.num_hidden_layers * loaded.model.config.num_key_value_heads
    kv *= loaded.model.config.hidden_size // loaded.model.config.num_attention_heads * loaded.dtype.itemsize
    summary: dict = {"tokens": len(ids), "chunk": args.chunk, "isa": isa, "kv_bytes": kv * len(ids), "runs": runs}
    for mode in args.modes:
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            "seconds_median": statistics.median(r["seconds"] for r in mine),
            "peak_rise_max": max(r["peak_rise_bytes"] for r in mine),
        }
    if len(args.modes) == 2:
        ratio = summary["chunked"]["seconds_median"] / summary["unchunked"]["seconds_median"]
        print(f"chunked/unchunked prefill time: {ratio:.2f} (KV of the prompt {kv * len(ids) / 2**20:.0f} MiB)")  # noqa: T201
        summary["time_ratio"] = ratio
    if args.json == "-":
        print(json.dumps(summary))  # noqa: T201
    elif args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
