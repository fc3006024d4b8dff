"""Streaming throughput benchmark: Gantry vs `transformers serve`, same model, dtype, machine and run.

    .venv/bin/python bench/run.py                      # fp32: gantry, gantry int8, transformers serve --cb, generate
    .venv/bin/python bench/run.py --dtype bfloat16 --targets gantry tserve-cb generate
    .venv/bin/python bench/run.py --targets gantry tserve   # vs plain transformers serve (serialized: slow)
    .venv/bin/python bench/run.py --targets gantry tserve-cb --levels 8 --rounds 3

Every target is started as its own server process on a free 127.0.0.1 port (transformers serve gets
the cached safetensors copy of the embedded SmolLM2-135M GGUF: it cannot load a GGUF from a local
path). All servers stay up for the whole run; at each concurrency level the targets take turns,
`--rounds` times, so background noise hits them alike. Each of the N streams sends `--requests`
chat completions back to back (streaming, greedy, `--max-tokens` tokens). Reported per target and
level: TTFT p50/p95, per-stream decode tok/s (tokens after the first / time after the first),
aggregate tok/s (all tokens / wall time), the server's peak RSS over the run, and the ratio of
aggregate tok/s to the reference target. `generate` is in-process `model.generate` (one stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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


DEFAULT_CB_ARGS = "--cb-num-blocks 64 --cb-block-size 32 --cb-max-batch-tokens 512"


@dataclass
class Target:
    name: str
    kind: str  # gantry | tserve | generate
    dtype: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    url: str = ""
    model_id: str = ""
    peak_rss: int = 0


@dataclass
class Sample:
    ttft: float
    decode_tps: float
    tokens: int


def say(*parts: object) -> None:
    print(*parts, flush=True)  # noqa: T201 (a command-line tool)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_dir() -> Path:
    """The cached safetensors directory of the embedded model (dequantized once from the GGUF)."""
    from gateway.engine.loader import materialize
    from gateway.settings import EMBEDDED_MODEL, EMBEDDED_MODEL_NAME, ModelSpec, Settings

    spec = ModelSpec(name=EMBEDDED_MODEL_NAME, source=EMBEDDED_MODEL)
    return materialize(spec, Settings(_env_file=None).cache_dir)


def build_targets(names: list[str], dtype: str, cb_args: list[str]) -> list[Target]:
    known = build_targets_map(dtype, cb_args)
    return [known[name] for name in names]


def build_targets_map(dtype: str, cb_args: list[str]) -> dict[str, Target]:
    return {
        "gantry": Target("gantry", "gantry", dtype, ["--dtype", dtype]),
        "gantry-int8": Target("gantry int8", "gantry", "float32", ["--quantization", "int8"]),
        "gantry-simple": Target("gantry simple", "gantry", dtype, ["--dtype", dtype, "--engine", "simple"]),
        "tserve": Target("transformers serve", "tserve", dtype),
        "tserve-cb": Target(
            "transformers serve --continuous-batching", "tserve", dtype, ["--continuous-batching", *cb_args]
        ),
        "generate": Target("in-process generate", "generate", dtype),
    }


def start(target: Target, path: Path, log_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("GANTRY_")} | target.env
    if target.kind == "gantry":
        cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level"]
        cmd += ["warning", *target.args]
        target.model_id = "smollm2-135m-instruct"
    else:
        cli = str(Path(sys.executable).with_name("transformers"))
        cmd = [cli, "serve", str(path), "--host", "127.0.0.1", "--port", str(port), "--dtype", target.dtype]
        cmd += ["--device", "cpu", *target.args]
        target.model_id = str(path)
    log = (log_dir / f"{target.name.replace(' ', '_').replace('-', '')}.log").open("wb")
    target.process = subprocess.Popen(cmd, cwd=log_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    target.url = f"http://127.0.0.1:{port}"


def wait_ready(target: Target, timeout: float = 300) -> None:
    health = "/health/ready" if target.kind == "gantry" else "/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert target.process is not None
        if target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited early (see its log)")
        try:
            if httpx.get(target.url + health, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{target.name} not ready after {timeout}s")


async def stream_once(client: httpx.AsyncClient, target: Target, prompt: str, max_tokens: int) -> Sample:
    body = {
        "model": target.model_id,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", target.url + "/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
    if first is None or last is None:
        raise RuntimeError(f"{target.name}: no content streamed")
    decode = (tokens - 1) / (last - first) if last > first and tokens > 1 else float("nan")
    return Sample(ttft=first - started, decode_tps=decode, tokens=tokens)


async def run_level(target: Target, streams: int, requests: int, max_tokens: int) -> tuple[list[Sample], float]:
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:

        async def worker(index: int) -> list[Sample]:
            out = []
            for r in range(requests):
                prompt = PROMPTS[(index + r * streams) % len(PROMPTS)]
                out.append(await stream_once(client, target, prompt, max_tokens))
            return out

        started = time.perf_counter()
        results = await asyncio.gather(*[worker(i) for i in range(streams)])
        wall = time.perf_counter() - started
    samples = [s for per_stream in results for s in per_stream]
    return samples, sum(s.tokens for s in samples) / wall


class GenerateBaseline:
    """In-process `model.generate` (greedy, one stream) at the target dtype, timed per token."""

    def __init__(self, path: Path, dtype: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()
        self.model.generation_config = GenerationConfig()

    def run(self, prompt: str, max_tokens: int) -> Sample:
        from transformers.generation.streamers import BaseStreamer

        stamps: list[float] = []

        class Clock(BaseStreamer):
            def put(self, value):  # the prompt first, then one call per generated token
                stamps.append(time.perf_counter())

            def end(self):
                pass

        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        started = time.perf_counter()
        with self.torch.inference_mode():
            self.model.generate(ids, max_new_tokens=max_tokens, do_sample=False, streamer=Clock())
        token_stamps = stamps[1:]
        tokens = len(token_stamps)
        decode = (tokens - 1) / (token_stamps[-1] - token_stamps[0]) if tokens > 1 else float("nan")
        return Sample(ttft=token_stamps[0] - started, decode_tps=decode, tokens=tokens)


def watch_rss(targets: list[Target], stop: threading.Event) -> None:
    while not stop.is_set():
        for target in targets:
            if target.process is None or target.process.poll() is not None:
                continue
            try:
                proc = psutil.Process(target.process.pid)
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                target.peak_rss = max(target.peak_rss, rss)
            except psutil.Error:
                pass
        stop.wait(0.05)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["gantry", "gantry-int8", "tserve-cb", "generate"],
        choices=list(build_targets_map("float32", [])),
    )
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 4, 8], help="concurrent streams")
    parser.add_argument("--requests", type=int, default=2, help="requests per stream, back to back")
    parser.add_argument("--rounds", type=int, default=3, help="turns per target and level (medians reported)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--reference", default="tserve-cb", help="target whose aggregate tok/s is the ratio base")
    parser.add_argument(
        "--cb-args",
        default=DEFAULT_CB_ARGS,
        help="extra flags for transformers serve --continuous-batching (its paged KV cache otherwise sizes "
        "itself from free RAM, and attention over a multi-GB cache made it ~30x slower on CPU)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    path = model_dir()
    targets = build_targets(args.targets, args.dtype, args.cb_args.split())
    servers = [t for t in targets if t.kind != "generate"]
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gantry-bench-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    say(
        f"model: {path}\ndtype: {args.dtype}  levels: {args.levels}  requests/stream: {args.requests}  "
        f"rounds: {args.rounds}  max_tokens: {args.max_tokens}  logs: {log_dir}"
    )
    stop = threading.Event()
    watcher = threading.Thread(target=watch_rss, args=(servers, stop), daemon=True)
    results: dict[tuple[str, int], dict] = {}
    try:
        for target in servers:
            start(target, path, log_dir)
        for target in servers:
            wait_ready(target)
            asyncio.run(run_level(target, 1, 1, 8))  # warm-up (lazy loads, first-call costs)
        watcher.start()
        baseline = next((GenerateBaseline(path, args.dtype) for t in targets if t.kind == "generate"), None)
        if baseline is not None:
            baseline.run(PROMPTS[0], 8)
        for level in args.levels:
            collected: dict[str, list] = {t.name: [] for t in targets}
            for _ in range(args.rounds):
                for target in targets:
                    if target.kind == "generate":
                        if level == 1 and baseline is not None:
                            samples = [
                                baseline.run(PROMPTS[r % len(PROMPTS)], args.max_tokens) for r in range(args.requests)
                            ]
                            wall = sum(s.ttft + (s.tokens - 1) / s.decode_tps for s in samples)
                            collected[target.name].append((samples, sum(s.tokens for s in samples) / wall))
                        continue
                    collected[target.name].append(asyncio.run(run_level(target, level, args.requests, args.max_tokens)))
            for target in targets:
                if not collected[target.name]:
                    continue
                samples = [s for round_samples, _ in collected[target.name] for s in round_samples]
                results[(target.name, level)] = {
                    "ttft_p50": pct([s.ttft for s in samples], 0.5),
                    "ttft_p95": pct([s.ttft for s in samples], 0.95),
                    "stream_tps": statistics.median(s.decode_tps for s in samples),
                    "aggregate_tps": statistics.median(agg for _, agg in collected[target.name]),
                    "tokens": statistics.mean(s.tokens for s in samples),
                }
            say(f"level {level} done")
    finally:
        stop.set()
        for target in servers:
            if target.process is not None and target.process.poll() is None:
                target.process.send_signal(signal.SIGINT)
        for target in servers:
            if target.process is not None:
                try:
                    target.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    target.process.kill()
    report(targets, args, results)
    if args.json:
        rows = [{"target": name, "streams": level, **values} for (name, level), values in results.items()]
        peaks = {t.name: t.peak_rss for t in servers}
        args.json.write_text(json.dumps({"dtype": args.dtype, "results": rows, "peak_rss": peaks}, indent=2))


def report(targets: list[Target], args: argparse.Namespace, results: dict) -> None:
    reference = next((t.name for t in targets if args.reference in (t.name, t.kind)), None)
    ref_key = {"tserve-cb": "transformers serve --continuous-batching", "tserve": "transformers serve"}
    reference = ref_key.get(args.reference, reference)
    lines = [
        f"| target ({args.dtype}) | streams | TTFT p50 ms | TTFT p95 ms | per-stream tok/s | aggregate tok/s "
        f"| ×{args.reference} | tokens/req | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in args.levels:
        base = results.get((reference, level), {}).get("aggregate_tps") if reference else None
        for target in targets:
            values = results.get((target.name, level))
            if values is None:
                continue
            ratio = f"{values['aggregate_tps'] / base:.2f}" if base else "–"
            rss = f"{target.peak_rss / 2**20:.0f}" if target.peak_rss else "–"
            lines.append(
                f"| {target.name} | {level} | {values['ttft_p50'] * 1000:.0f} | {values['ttft_p95'] * 1000:.0f} "
                f"| {values['stream_tps']:.1f} | {values['aggregate_tps']:.1f} | {ratio} "
                f"| {values['tokens']:.0f} | {rss} |"
            )
    say("\n".join(lines))
    gen = results.get(("in-process generate", 1))
    ours = results.get(("gantry", 1))
    if gen and ours:
        say(
            f"\nsingle-stream decode: gantry {ours['stream_tps']:.1f} tok/s vs in-process generate "
            f"{gen['stream_tps']:.1f} tok/s = {ours['stream_tps'] / gen['stream_tps']:.3f}×"
        )


if __name__ == "__main__":
    main()
