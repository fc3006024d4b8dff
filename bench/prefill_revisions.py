"""Long-prompt prefill of this checkout against an earlier revision of Gantry, over HTTP, in one run.

    .venv/bin/python bench/prefill_revisions.py --revision f80dbe5 --tokens 8000
    .venv/bin/python bench/prefill_revisions.py --revision f80dbe5 --tokens 2000 --rounds 3 --json out.json

"Prefill time <= 0.6x today's" compares with the server as it was when that was measured, not with
this checkout's own unchunked path (bench/long_prompt.py does that one). Both servers run the embedded
SmolLM2-135M in fp32 with their defaults: the revision from a `git worktree` of it, on this venv. They
take turns (the other one SIGSTOPped); each sends the same ~N-token prompt to /v1/completions with
max_tokens 1, greedy, and reports the request's time, the server's peak RSS rise (VmHWM after a reset
via /proc/<pid>/clear_refs, minus VmRSS before) and the one generated token, which must agree.
f80dbe5 is where the chunked-prefill work branched off (the state issue 16 measured).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.isa import describe_isa  # noqa: E402
from bench.long_prompt import TEXT, status  # noqa: E402
from bench.run import Target, model_dir, paused, say, start, wait_ready  # noqa: E402


def prompt_text(tokens: int) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    text = TEXT
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += TEXT
    return text


def measure(target: Target, text: str, timeout: float) -> dict:
    assert target.process is not None
    pid = target.process.pid
    before = status("VmRSS", pid)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    body = {"model": target.model_id, "prompt": text, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    response = httpx.post(target.url + "/v1/completions", json=body, timeout=timeout)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    answer = response.json()
    return {
        "seconds": seconds,
        "peak_rise_bytes": status("VmHWM", pid) - before,
        "prompt_tokens": answer["usage"]["prompt_tokens"],
        "text": answer["choices"][0]["text"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revision", default="f80dbe5", help="the earlier Gantry to compare with")
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    path = model_dir()
    text = prompt_text(args.tokens)
    log_dir = Path(tempfile.mkdtemp(prefix="gantry-prefill-"))
    worktree = log_dir / "revision"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.revision], check=True)
    targets = [
        Target(f"gantry {args.revision}", "gantry", "float32", ["--dtype", "float32"], repo=worktree),
        Target("gantry (this checkout)", "gantry", "float32", ["--dtype", "float32"]),
    ]
    runs: list[dict] = []
    try:
        for target in targets:
            start(target, path, log_dir)
        for target in targets:
            wait_ready(target)
        for target in targets:  # warm-up: a short prompt through every path once
            measure(target, TEXT * 4, args.timeout)
        say(f"CPU {describe_isa()}; prompt of ~{args.tokens} tokens; logs in {log_dir}")
        for _ in range(args.rounds):
            for target in targets:
                with paused([t for t in targets if t is not target]):
                    run = {"target": target.name, **measure(target, text, args.timeout)}
                runs.append(run)
                rise = run["peak_rise_bytes"] / 2**20
                say(
                    f"{target.name:24s} {run['seconds']:7.1f} s  peak RSS rise {rise:7.1f} MiB"
                    f"  prompt {run['prompt_tokens']} tokens, token {run['text']!r}"
                )
    finally:
        for target in targets:
            if target.process is not None:
                target.process.terminate()
                target.process.wait(timeout=60)
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
    old, new = ([r for r in runs if r["target"] == t.name] for t in targets)
    ratio = statistics.median(r["seconds"] for r in new) / statistics.median(r["seconds"] for r in old)
    same = {r["text"] for r in runs}
    say(f"this checkout / {args.revision} prefill time: {ratio:.2f}; same token: {len(same) == 1}")
    if args.json:
        summary = {"revision": args.revision, "isa": describe_isa(), "time_ratio": ratio, "runs": runs}
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
