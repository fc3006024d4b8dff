"""What a front gateway costs: N concurrent streams straight at a Gantry upstream vs through a front Gantry
that forwards to it (`kind: upstream`), same upstream process, same run, turns alternated.

    .venv/bin/python bench/upstream.py                          # 8 streams, 20 rounds, 64 tokens each
    .venv/bin/python bench/upstream.py --streams 8 --rounds 5 --max-tokens 128
    .venv/bin/python bench/upstream.py --pin    # the front (and this client) on a core of its own

Reported: aggregate tokens/s of each path (all tokens / wall time, averaged over rounds), their ratio
(front / direct), and TTFT p50 of each and the difference (what the front adds to the first token).
On a machine shared with other work the figures are noisy: compare within one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as base  # noqa: E402 (bench/run.py: the streaming client and server helpers)


def start_front(upstream_url: str, model: str, log_dir: Path, cpus: set[int] | None) -> base.Target:
    models = log_dir / "front-models.yaml"
    entry = f"  - name: remote-smol\n    kind: upstream\n    replicas: [{{url: '{upstream_url}', model: {model}}}]\n"
    models.write_text("models:\n" + entry, encoding="utf-8")
    port = base.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")} | {"HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning", "--models-file", str(models)]
    target = base.Target("front", "gantry", "float32", cpus=cpus)
    log = (log_dir / "front.log").open("wb")
    target.process = base.popen(cmd, log_dir, env, log, cpus)
    target.url, target.model_id = f"http://127.0.0.1:{port}", "remote-smol"
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1, help="requests per stream per round")
    parser.add_argument(
        "--rounds", type=int, default=20, help="a round's 8 TTFTs are alike: fewer than ~20 rounds give a noisy p50"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the upstream on all cores but the last, the front and this client on the last one: the front "
        "as deployed on cores of its own, not competing with the model for them",
    )
    args = parser.parse_args()
    upstream_cpus = front_cpus = None
    if args.pin:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("--pin needs at least 2 cores")
        upstream_cpus, front_cpus = set(cores[:-1]), {cores[-1]}
        os.sched_setaffinity(0, front_cpus)

    log_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-upstream-"))
    direct = base.Target("direct", "gantry", args.dtype, ["--dtype", args.dtype], cpus=upstream_cpus)
    base.start(direct, Path("."), log_dir)
    targets = [direct]
    try:
        base.wait_ready(direct)
        front = start_front(direct.url, direct.model_id, log_dir, front_cpus)
        targets.append(front)
        base.wait_ready(front)
        base.say(f"warm-up; logs in {log_dir}")
        for target in targets:
            asyncio.run(base.run_level(target, 2, 1, 8))
        ttft: dict[str, list[float]] = {"direct": [], "front": []}
        rate: dict[str, list[float]] = {"direct": [], "front": []}
        for round_no in range(args.rounds):
            for target in targets if round_no % 2 == 0 else targets[::-1]:  # alternate who goes first
                samples, aggregate = asyncio.run(base.run_level(target, args.streams, args.requests, args.max_tokens))
                ttft[target.name] += [s.ttft for s in samples]
                rate[target.name].append(aggregate)
                base.say(f"round {round_no + 1} {target.name:6}: {aggregate:7.1f} tok/s aggregate")
        direct_rate, front_rate = statistics.mean(rate["direct"]), statistics.mean(rate["front"])
        direct_p50, front_p50 = statistics.median(ttft["direct"]), statistics.median(ttft["front"])
        pinned = f"; upstream on cores {sorted(upstream_cpus)}, front on {sorted(front_cpus)}" if args.pin else ""
        base.say(f"\n{args.streams} concurrent streams x {args.rounds} rounds, {args.max_tokens} tokens each{pinned}")
        base.say(
            f"aggregate tok/s  direct {direct_rate:.1f}  front {front_rate:.1f}  ratio {front_rate / direct_rate:.3f}"
        )
        base.say(
            f"TTFT p50 ms      direct {direct_p50 * 1000:.1f}  front {front_p50 * 1000:.1f}  "
            f"added {(front_p50 - direct_p50) * 1000:+.1f}"
        )
    finally:
        for target in targets:
            if target.process is not None and target.process.poll() is None:
                target.process.terminate()
                target.process.wait(timeout=30)


if __name__ == "__main__":
    main()
