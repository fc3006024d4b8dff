"""The dequantized-GGUF cache: <cache_dir>/gguf/<stem>-<key>/ holds a GGUF as safetensors + tokenizer.

transformers dequantizes a GGUF on every load (10-60 s for SmolLM2-135M); done once, later starts read the
safetensors in a second or two.

The key is the file's content identity and the transformers version (which does the dequantization), never its
path: every clone or venv holding the same GGUF shares one entry. Hashing all of a multi-GB file would cost more
than it saves, so the identity is the size plus a BLAKE2 digest of the first MiB (GGUF header: architecture,
quantization, tensor table, start of the vocabulary) and 16 blocks of 64 KiB spread evenly over the rest, the last
block included: ~2 MiB read whatever the size. Two different models — another fine-tune, another quantization —
differ in the header or in the weights everywhere, so they differ at the sampled offsets; a file edited in place
outside every sample keeping its size is not a case a model file meets.

Cleanup, after each dequantization and on each start: entries of the same GGUF content for another transformers
version, entries written by older Gantry versions (keyed by path: no metadata file) for a GGUF of the same stem,
staging directories of processes that died, and entries unused for STALE_AFTER_DAYS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import transformers

logger = logging.getLogger(__name__)

HEADER_BYTES = 1 << 20
SAMPLE_BYTES = 64 << 10
SAMPLES = 16
STALE_AFTER_DAYS = 30
META = "gantry-cache.json"
HEARTBEAT_SECONDS = 5.0


def content_key(gguf: Path) -> str:
    """Size + digest of the header and sampled blocks (see the module docstring for why that is enough)."""
    size = gguf.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with gguf.open("rb") as f:
        digest.update(f.read(HEADER_BYTES))
        if size > HEADER_BYTES:
            span = size - HEADER_BYTES - SAMPLE_BYTES
            for i in range(SAMPLES):
                f.seek(HEADER_BYTES + max(0, span) * i // (SAMPLES - 1))
                digest.update(f.read(SAMPLE_BYTES))
    return f"{size}-{digest.hexdigest()}"


def gguf_cache_dir(gguf: Path, cache_root: Path) -> Path:
    """The cache entry of this GGUF content under this transformers version."""
    version_key = hashlib.blake2b(f"{content_key(gguf)}:{transformers.__version__}".encode(), digest_size=8)
    return Path(cache_root) / "gguf" / f"{gguf.stem}-{version_key.hexdigest()}"


def ensure_dequantized(gguf: Path, cache_root: Path) -> Path:
    """The cached safetensors directory for `gguf`, dequantizing it first if needed."""
    target = gguf_cache_dir(gguf, cache_root)
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _dequantize(gguf, target)
    _write_meta(target, gguf)
    prune(target)
    return target


def _write_meta(target: Path, gguf: Path) -> None:
    """Records what the entry holds and when it was last used (for the cleanup)."""
    meta = {
        "gguf_name": gguf.name,
        "content": content_key(gguf),
        "transformers": transformers.__version__,
        "last_used": time.time(),
    }
    try:
        (target / META).write_text(json.dumps(meta), encoding="utf-8")
    except OSError as exc:  # a read-only cache still serves
        logger.debug("could not update %s: %s", target / META, exc)


def _read_meta(entry: Path) -> dict[str, Any] | None:
    try:
        return json.loads((entry / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def stale_entries(keep: Path, now: float | None = None) -> list[Path]:
    """Entries beside `keep` that no start will use again (see the module docstring)."""
    now = time.time() if now is None else now
    mine = _read_meta(keep) or {}
    stem = mine.get("gguf_name", "").removesuffix(".gguf")
    stale = []
    for entry in keep.parent.iterdir():
        if entry == keep or not entry.is_dir():
            continue
        if ".tmp-" in entry.name:
            pid = entry.name.rsplit(".tmp-", 1)[1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                stale.append(entry)
            continue
        meta = _read_meta(entry)
        if meta is None:  # written before entries had metadata: keyed by path, superseded by `keep`
            if stem and entry.name.rsplit("-", 1)[0] == stem:
                stale.append(entry)
        elif meta.get("content") == mine.get("content") and meta.get("transformers") != mine.get("transformers"):
            stale.append(entry)
        elif now - float(meta.get("last_used", now)) > STALE_AFTER_DAYS * 86400:
            stale.append(entry)
    return stale


def prune(keep: Path) -> None:
    for entry in stale_entries(keep):
        shutil.rmtree(entry, ignore_errors=True)
        logger.info("removed stale dequantized-weights cache entry %s", entry.name)


@contextmanager
def heartbeat(what: str) -> Iterator[None]:
    """Log `what` with the elapsed time every few seconds while the block runs: a long step the log shows alive
    (tqdm's bar, where a library draws one, is a single unreadable line in a log file)."""
    started, done = time.monotonic(), threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            logger.info("%s ... %.0f s", what, time.monotonic() - started)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        logger.info("%s: done in %.1f s", what, time.monotonic() - started)


def _dequantize(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF once through transformers and keep it as a safetensors directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    size_mb = gguf.stat().st_size / 2**20
    logger.info("dequantizing %s (%.0f MiB; first start only) into %s", gguf.name, size_mb, target)
    with heartbeat(f"dequantize {gguf.name} 1/3: tokenizer from the GGUF vocabulary"):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with heartbeat(f"dequantize {gguf.name} 2/3: weights"):
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already plain tensors; the GGUF quantizer is only a marker that blocks saving.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    with heartbeat(f"dequantize {gguf.name} 3/3: writing safetensors"):
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic: a half-written cache is never picked up
    logger.info("cached dequantized weights of %s (%.1f s)", gguf.name, time.monotonic() - started)
