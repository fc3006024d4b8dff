"""The dequantized-GGUF cache is keyed by content (not path) and cleans up after itself."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import transformers

from gateway.engine import gguf_cache
from gateway.engine.gguf_cache import META, content_key, gguf_cache_dir, prune, stale_entries


def fake_gguf(path: Path, size: int = 5 << 20, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((i * seed + i // 7) % 251 for i in range(size)))
    return path


def test_the_same_file_in_two_clones_shares_one_entry(tmp_path: Path):
    first = fake_gguf(tmp_path / "clone-a" / ".venv" / "model.Q4.gguf")
    second = tmp_path / "clone-b" / ".venv" / "model.Q4.gguf"
    second.parent.mkdir(parents=True)
    shutil.copyfile(first, second)
    os.utime(second, (1, 1))  # another mtime, as a fresh install has
    assert gguf_cache_dir(first, tmp_path / "cache") == gguf_cache_dir(second, tmp_path / "cache")
    assert gguf_cache_dir(first, tmp_path / "cache").name.startswith("model.Q4-")


@pytest.mark.parametrize("offset", [10, 2 << 20, (5 << 20) - 10])  # header, a middle block, the last block
def test_different_content_of_the_same_size_gets_another_key(tmp_path: Path, offset: int):
    original = fake_gguf(tmp_path / "a" / "m.gguf")
    changed = tmp_path / "b" / "m.gguf"
    changed.parent.mkdir()
    data = bytearray(original.read_bytes())
    # A sampled region: the header, or inside one of the evenly spread blocks.
    start = gguf_cache.HEADER_BYTES
    span = len(data) - start - gguf_cache.SAMPLE_BYTES
    blocks = [start + span * i // (gguf_cache.SAMPLES - 1) for i in range(gguf_cache.SAMPLES)]
    if offset >= start:
        offset = min(blocks, key=lambda b: abs(b - offset)) + 5
    data[offset] ^= 0xFF
    changed.write_bytes(bytes(data))
    assert content_key(original) != content_key(changed)


def test_the_key_reads_a_bounded_amount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    big = tmp_path / "big.gguf"
    with big.open("wb") as f:
        f.truncate(3 << 30)  # sparse 3 GiB
    read = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        original_read = handle.read

        def read_counted(n=-1):
            data = original_read(n)
            read.append(len(data))
            return data

        handle.read = read_counted
        return handle

    monkeypatch.setattr(Path, "open", counting_open)
    content_key(big)
    assert sum(read) <= gguf_cache.HEADER_BYTES + gguf_cache.SAMPLES * gguf_cache.SAMPLE_BYTES


def entry(root: Path, name: str, meta: dict | None) -> Path:
    path = root / "gguf" / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if meta is not None:
        (path / META).write_text(json.dumps(meta))
    return path


def test_cleanup_removes_what_no_start_will_use(tmp_path: Path):
    now = time.time()
    mine = {"gguf_name": "model.Q4.gguf", "content": "C1", "transformers": transformers.__version__, "last_used": now}
    keep = entry(tmp_path, "model.Q4-aaaa", mine)
    legacy_same_stem = entry(tmp_path, "model.Q4-0123456789ab", None)
    legacy_other_stem = entry(tmp_path, "other-0123456789ab", None)
    old_transformers = entry(tmp_path, "model.Q4-bbbb", {**mine, "transformers": "4.0.0"})
    other_model_recent = entry(tmp_path, "other-cccc", {**mine, "gguf_name": "other.gguf", "content": "C2"})
    other_model_unused = entry(
        tmp_path, "old-dddd", {**mine, "gguf_name": "old.gguf", "content": "C3", "last_used": now - 40 * 86400}
    )
    dead_staging = entry(tmp_path, "model.Q4-aaaa.tmp-999999999", None)
    live_staging = entry(tmp_path, f"other-eeee.tmp-{os.getpid()}", None)

    stale = set(stale_entries(keep, now=now))
    assert stale == {legacy_same_stem, old_transformers, other_model_unused, dead_staging}
    prune(keep)
    left = {p.name for p in (tmp_path / "gguf").iterdir()}
    assert left == {keep.name, legacy_other_stem.name, other_model_recent.name, live_staging.name}
