"""Streaming throughput benchmark: Gantry vs `transformers serve` (and vLLM CPU), same model, dtype, machine and run.

    .venv/bin/python bench/run.py                      # fp32: gantry, gantry int8, transformers serve --cb, generate
    .venv/bin/python bench/run.py --dtype bfloat16 --targets gantry tserve-cb generate
    .venv/bin/python bench/run.py --targets gantry tserve   # vs plain transformers serve (serialized: slow)
    .venv/bin/python bench/run.py --targets gantry tserve-cb --levels 8 --rounds 3
    .venv/bin/python bench/run.py --vllm-venv /work/vllm-venv --targets gantry tserve-cb vllm vllm-bind
    .venv/bin/python bench/run.py --targets gantry vllm --vllm-venv DIR --workloads long2k long8k mixed
    .venv/bin/python bench/run.py --vllm-venv DIR --targets gantry vllm-bind --isa-cap avx2   # AVX2 code paths

vLLM CPU runs from its own venv (README: "Benchmark"): `vllm` with its default threads (one OpenMP
thread pinned to core 0), `vllm-bind` with VLLM_CPU_OMP_THREADS_BIND=0-<cores-1>; report the faster.
Workloads: `chat` (short chat prompts at --levels), `long2k` / `long8k` (~2,000 / ~8,000-token prompts,
1 stream), `mixed` (8 streams, prompts of 100-4,000 tokens). Every prompt starts with its own request
number, so no server can answer it from a cache of another's prefix. The CPU's ISA heads every table.

Every target is started as its own server process on a free 127.0.0.1 port (transformers serve gets
the cached safetensors copy of the embedded SmolLM2-135M GGUF: it cannot load a GGUF from a local
path). All servers stay up for the whole run; at each concurrency level the targets take turns,
`--rounds` times, so background noise hits them alike. Each of the N streams sends `--requests`
chat completions back to back (streaming, greedy, `--max-tokens` tokens). Reported per target and
level: TTFT p50/p95, per-stream decode tok/s (tokens after the first / time after the first),
aggregate tok/s (all tokens / wall time), the server's peak RSS over the run (the kernel's VmHWM, reset
after the warm-up: nothing polls while a server is measured), and the ratio of aggregate tok/s to the
reference target. `generate` is in-process `model.generate` (one stream).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.long_prompt import status  # noqa: E402
from bench.workloads import PROMPTS, WORKLOADS, PromptMaker, workload_prompts  # noqa: E402

DEFAULT_CB_ARGS = "--cb-num-blocks 64 --cb-block-size 32 --cb-max-batch-tokens 512"


@dataclass
class Target:
    name: str
    kind: str  # gantry | tserve | vllm | generate
    dtype: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    cpus: set[int] | None = None  # pinned to these cores (its torch threads follow: one per core)
    url: str = ""
    model_id: str = ""
    peak_rss: int = 0
    repo: Path | None = None  # a gantry target's checkout (default: this one)


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


def revision_targets(targets: list[Target], revisions: list[str], log_dir: Path) -> list[Target]:
    """The Gantry targets among `targets` again, as each revision has them (a detached worktree per revision)."""
    extra = []
    for revision in revisions:
        worktree = log_dir / f"revision-{revision}"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), revision], check=True)
        for target in targets:
            if target.kind == "gantry" and target.repo is None:
                extra.append(replace(target, name=f"{target.name} @{revision}", args=list(target.args), repo=worktree))
    return extra


VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2"}
# --isa-cap avx2: torch's dispatch (and Gantry's kernels, which follow it), oneDNN and MKL held to AVX2, plus
# bench/isa_cap/sitecustomize.py for the CPU checks that ignore those (vLLM's choice of build): every server runs
# its AVX2 code on this CPU. Not an AVX2 machine: memory system and clocks stay this one's.
ISA_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
ISA_CAP_SHIM = Path(__file__).resolve().parent / "isa_cap"


def build_targets_map(dtype: str, cb_args: list[str]) -> dict[str, Target]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {
        "vllm": Target("vLLM CPU", "vllm", dtype, env=dict(VLLM_ENV)),
        "vllm-bind": Target(
            "vLLM CPU bind", "vllm", dtype, env={**VLLM_ENV, "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}"}
        ),
        "gantry": Target("gantry", "gantry", dtype, ["--dtype", dtype]),
        "gantry-onednn": Target("gantry onednn", "gantry", dtype, ["--dtype", dtype, "--linear-kernel", "onednn"]),
        "gantry-int8": Target("gantry int8", "gantry", "float32", ["--quantization", "int8"]),
        "gantry-int8-wo": Target(
            "gantry int8 weight-only", "gantry", "float32", ["--quantization", "int8-weight-only"]
        ),
        "gantry-simple": Target("gantry simple", "gantry", dtype, ["--dtype", dtype, "--engine", "simple"]),
        "tserve": Target("transformers serve", "tserve", dtype),
        "tserve-cb": Target(
            "transformers serve --continuous-batching", "tserve", dtype, ["--continuous-batching", *cb_args]
        ),
        "generate": Target("in-process generate", "generate", dtype),
    }


def start(
    target: Target,
    path: Path,
    log_dir: Path,
    vllm_venv: Path | None = None,
    max_len: int = 4096,
    isa_cap: str | None = None,
) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("GANTRY_")} | target.env
    python_path = [str(target.repo or REPO)] if target.kind == "gantry" else []  # this checkout's gateway
    if isa_cap:
        env |= ISA_CAPS[isa_cap]
        python_path.append(str(ISA_CAP_SHIM))
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(python_path)
    if target.kind == "gantry":
        cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level"]
        cmd += ["warning", *target.args]
        target.model_id = "smollm2-135m-instruct"
    elif target.kind == "vllm":
        if vllm_venv is None:
            raise SystemExit("the vllm targets need --vllm-venv DIR")
        # `vllm serve` fails (the package is named vllm-cpu): the api_server module is started directly
        cmd = [str(vllm_venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(path)]
        cmd += ["--dtype", target.dtype, "--max-model-len", str(max_len), "--enforce-eager"]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        target.model_id = str(path)
    else:
        cli = str(Path(sys.executable).with_name("transformers"))
        cmd = [cli, "serve", str(path), "--host", "127.0.0.1", "--port", str(port), "--dtype", target.dtype]
        cmd += ["--device", "cpu", *target.args]
        target.model_id = str(path)
    log = (log_dir / f"{target.name.replace(' ', '_').replace('-', '')}.log").open("wb")
    target.process = popen(cmd, log_dir, env, log, target.cpus)
    target.url = f"http://127.0.0.1:{port}"


def popen(cmd: list[str], cwd: Path, env: dict[str, str], log: Any, cpus: set[int] | None) -> subprocess.Popen:
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # before exec: every thread inherits it
    # a session of its own: `paused` stops the server with every process it starts (vLLM's engine core)
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin, start_new_session=True
    )


@contextlib.contextmanager
def paused(targets: list[Target]):  # type: ignore[no-untyped-def]
    """SIGSTOP these servers' process groups meanwhile, so an idle server's background threads (pollers,
    schedulers, thread pools spinning down) cannot take CPU from the one being measured."""
    groups = [os.getpgid(t.process.pid) for t in targets if t.process is not None and t.process.poll() is None]
    for group in groups:
        os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        for group in groups:
            os.killpg(group, signal.SIGCONT)


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
    async with client.stream("POST", target.url + "/v1/chat/completions", json=body, timeout=3600) as response:
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


async def run_level(
    target: Target, streams: int, requests: int, max_tokens: int, prompts: list[list[str]] | None = None
) -> tuple[list[Sample], float]:
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    if prompts is None:
        prompts = workload_prompts("chat", None, streams, requests, 0)
    async with httpx.AsyncClient(limits=limits, timeout=3600) as client:

        async def worker(index: int) -> list[Sample]:
            out = []
            for prompt in prompts[index]:
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


def server_pids(target: Target) -> list[int]:
    """The server's process and its children (vLLM's engine core), listed once: scanning /proc for children
    while the others are measured cost the benchmark's process ~8 % of a core (20 scans a second)."""
    if target.process is None or target.process.poll() is not None:
        return []
    try:
        proc = psutil.Process(target.process.pid)
        return [proc.pid] + [child.pid for child in proc.children(recursive=True)]
    except psutil.Error:
        return []


def reset_peak_rss(targets: list[Target]) -> dict[str, list[int]]:
    """Set every server process's peak (VmHWM) to its RSS now; returns the processes to read at the end."""
    pids = {target.name: server_pids(target) for target in targets}
    for pid in (pid for listed in pids.values() for pid in listed):
        with contextlib.suppress(OSError):  # then the peak counts from the process's start
            Path(f"/proc/{pid}/clear_refs").write_text("5")
    return pids


def read_peak_rss(targets: list[Target], pids: dict[str, list[int]]) -> None:
    """Each server's peak RSS since the reset, from the kernel (no polling: nothing runs beside the servers
    while they are measured); a server of several processes gets the sum of their peaks (≥ the peak sum)."""
    for target in targets:
        total = 0
        for pid in pids.get(target.name, []):
            with contextlib.suppress(OSError, KeyError):
                total += status("VmHWM", pid)
        target.peak_rss = total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--targets",
        nargs="+",
        default=None,
        choices=list(build_targets_map("float32", [])),
        help="default: gantry gantry-int8 tserve-cb generate, plus vllm vllm-bind with --vllm-venv",
    )
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 4, 8], help="concurrent streams (chat)")
    parser.add_argument("--workloads", nargs="+", default=["chat"], choices=list(WORKLOADS))
    parser.add_argument("--requests", type=int, default=2, help="requests per stream, back to back")
    parser.add_argument("--rounds", type=int, default=3, help="turns per target and level (medians reported)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--reference",
        nargs="+",
        default=["tserve-cb", "vllm", "vllm-bind"],
        help="targets whose aggregate tok/s are ratio bases (those present)",
    )
    parser.add_argument("--vllm-venv", type=Path, help="venv with vllm-cpu installed (README: Benchmark)")
    parser.add_argument(
        "--vllm-max-model-len", type=int, default=None, help="default 4096, or 8192 with the long8k workload"
    )
    parser.add_argument(
        "--cb-args",
        default=DEFAULT_CB_ARGS,
        help="extra flags for transformers serve --continuous-batching (its paged KV cache otherwise sizes "
        "itself from free RAM, and attention over a multi-GB cache made it ~30x slower on CPU)",
    )
    parser.add_argument("--ready-timeout", type=float, default=300)
    parser.add_argument(
        "--pause-others",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop (SIGSTOP) the other servers while one is measured",
    )
    parser.add_argument(
        "--revision",
        nargs="+",
        default=[],
        help="also run the `gantry` and `gantry-int8` targets (those chosen) of these earlier commits, each from a "
        "git worktree, in the same run: a regression shows as a same-run ratio",
    )
    parser.add_argument(
        "--isa-cap",
        choices=list(ISA_CAPS),
        help="hold every server (and in-process generate) to this vector ISA on a wider CPU: AVX2 code paths "
        "measured on an AVX-512 machine (torch dispatch, oneDNN, MKL, vLLM's build, Gantry's kernels)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    if args.targets is None:
        args.targets = ["gantry", "gantry-int8", "tserve-cb", "generate"]
        args.targets += ["vllm", "vllm-bind"] if args.vllm_venv else []
    if args.vllm_max_model_len is None:
        args.vllm_max_model_len = 8192 if "long8k" in args.workloads else 4096
    return args


def main() -> None:
    from bench.isa import describe_isa

    args = parse_args()
    if args.isa_cap:  # before torch is imported here (in-process generate, the ISA line)
        os.environ.update(ISA_CAPS[args.isa_cap])
    isa = describe_isa() + (f"; capped to {args.isa_cap.upper()} (--isa-cap)" if args.isa_cap else "")
    path = model_dir()
    targets = build_targets(args.targets, args.dtype, args.cb_args.split())
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gantry-bench-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    targets += revision_targets(targets, args.revision, log_dir)
    servers = [t for t in targets if t.kind != "generate"]
    say(
        f"CPU: {isa}\nmodel: {path}\ndtype: {args.dtype}  levels: {args.levels}  workloads: {args.workloads}  "
        f"requests/stream: {args.requests}  rounds: {args.rounds}  max_tokens: {args.max_tokens}  logs: {log_dir}"
    )
    results: dict[tuple[str, str, int], dict] = {}
    maker = PromptMaker(path) if any(w != "chat" for w in args.workloads) else None
    rss_pids: dict[str, list[int]] = {}
    try:
        started = {}
        for target in servers:
            start(target, path, log_dir, args.vllm_venv, args.vllm_max_model_len, args.isa_cap)
            started[target.name] = time.monotonic()
        for target in servers:
            wait_ready(target, args.ready_timeout)
            say(f"{target.name} ready after {time.monotonic() - started[target.name]:.1f} s (started together)")
        for target in servers:  # warm-up once all are loaded (lazy loads, first calls, gantry's thread tuner)
            with paused([t for t in servers if t is not target] if args.pause_others else []):
                asyncio.run(run_level(target, 1, 1, 8))
                asyncio.run(run_level(target, 8, 1, 16))
        rss_pids = reset_peak_rss(servers)
        baseline = next((GenerateBaseline(path, args.dtype) for t in targets if t.kind == "generate"), None)
        if baseline is not None:
            baseline.run(PROMPTS[0], 8)
        for workload in args.workloads:
            fixed = WORKLOADS[workload][1]
            for level in [fixed] if fixed else args.levels:
                collected: dict[str, list] = {t.name: [] for t in targets}
                for round_index in range(args.rounds):
                    # the same prompts for every target in a round; new ones (new request numbers) each round
                    prompts = workload_prompts(workload, maker, level, args.requests, seed=round_index)
                    for target in targets:
                        if target.kind == "generate":
                            if workload == "chat" and level == 1 and baseline is not None:
                                samples = [baseline.run(p, args.max_tokens) for p in prompts[0]]
                                wall = sum(s.ttft + (s.tokens - 1) / s.decode_tps for s in samples)
                                collected[target.name].append((samples, sum(s.tokens for s in samples) / wall))
                            continue
                        run = run_level(target, level, args.requests, args.max_tokens, prompts)
                        others = [t for t in servers if t is not target] if args.pause_others else []
                        with paused(others):
                            collected[target.name].append(asyncio.run(run))
                for target in targets:
                    if not collected[target.name]:
                        continue
                    samples = [s for round_samples, _ in collected[target.name] for s in round_samples]
                    results[(workload, target.name, level)] = {
                        "ttft_p50": pct([s.ttft for s in samples], 0.5),
                        "ttft_p95": pct([s.ttft for s in samples], 0.95),
                        "stream_tps": statistics.median(s.decode_tps for s in samples),
                        "aggregate_tps": statistics.median(agg for _, agg in collected[target.name]),
                        "tokens": statistics.mean(s.tokens for s in samples),
                    }
                say(f"{workload} level {level} done")
    finally:
        read_peak_rss(servers, rss_pids)  # before the servers exit
        for target in servers:
            if target.process is not None and target.process.poll() is None:
                target.process.send_signal(signal.SIGINT)
        for target in servers:
            if target.process is not None:
                try:
                    target.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    target.process.kill()
        for worktree in {t.repo for t in servers if t.repo is not None}:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
    for workload in args.workloads:
        report(targets, args, results, workload, isa)
    if args.json:
        rows = [{"workload": w, "target": name, "streams": level, **v} for (w, name, level), v in results.items()]
        peaks = {t.name: t.peak_rss for t in servers}
        args.json.write_text(
            json.dumps({"dtype": args.dtype, "cpu_isa": isa, "results": rows, "peak_rss": peaks}, indent=2)
        )


def report(targets: list[Target], args: argparse.Namespace, results: dict, workload: str, isa: str) -> None:
    known = build_targets_map(args.dtype, [])
    references = [known[key].name for key in args.reference if key in known and key in args.targets]
    ratio_heads = "".join(f" ×{name} |" for name in references)
    lines = [
        f"\nworkload {workload}, CPU {isa}, {args.dtype}",
        f"| target | streams | TTFT p50 ms | TTFT p95 ms | per-stream tok/s | aggregate tok/s |{ratio_heads}"
        " tokens/req | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(references) + "---:|---:|",
    ]
    levels = sorted({level for (w, _, level) in results if w == workload})
    for level in levels:
        bases = [results.get((workload, name, level), {}).get("aggregate_tps") for name in references]
        for target in targets:
            values = results.get((workload, target.name, level))
            if values is None:
                continue
            ratios = "".join(f" {values['aggregate_tps'] / base:.2f} |" if base else " – |" for base in bases)
            rss = f"{target.peak_rss / 2**20:.0f}" if target.peak_rss else "–"
            lines.append(
                f"| {target.name} | {level} | {values['ttft_p50'] * 1000:.0f} | {values['ttft_p95'] * 1000:.0f} "
                f"| {values['stream_tps']:.1f} | {values['aggregate_tps']:.1f} |{ratios} "
                f"{values['tokens']:.0f} | {rss} |"
            )
    say("\n".join(lines))
    gen = results.get((workload, "in-process generate", 1))
    ours = results.get((workload, "gantry", 1))
    if gen and ours:
        say(
            f"\nsingle-stream decode: gantry {ours['stream_tps']:.1f} tok/s vs in-process generate "
            f"{gen['stream_tps']:.1f} tok/s = {ours['stream_tps'] / gen['stream_tps']:.3f}× (CPU {isa})"
        )


if __name__ == "__main__":
    main()
