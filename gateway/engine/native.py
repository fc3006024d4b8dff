"""Small C kernels compiled on this machine for its own vector ISA, once per CPU, compiler and source.

Why compile here instead of shipping wheels: each kernel is one short C file (gateway/engine/*.c) whose
speed depends on the vector width of the CPU it runs on (AVX2, AVX-512, ...); `-march=native` gives
every machine its own build, cached under the cache directory by a hash of the source, the flags and
the CPU's flags (a cache shared across machines never mixes them). Without a C compiler or OpenMP a
kernel is simply not built (`build_library` returns None) and its caller keeps torch's operation.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

COMPILE_TIMEOUT_S = 60


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


# torch's dispatch level (ATEN_CPU_CAPABILITY) -> what our kernels must leave out to stay at or below it
_CAPPED_ISA_FLAGS = {"AVX2": ["-march=haswell"], "DEFAULT": ["-mno-avx"]}


def _isa_cap_flags() -> list[str]:
    """Our kernels follow a cap put on torch's dispatch: `ATEN_CPU_CAPABILITY=avx2` on an AVX-512 CPU (against
    AVX-512 down-clocking, or to measure the AVX2 code paths) keeps them on AVX2 too, not on what -march=native
    alone would pick: AVX2 and FMA only (Haswell's set, what torch's AVX2 kernels assume), so also no 256-bit
    AVX-VNNI: int8 runs its AVX2 code, as on an AVX2-only CPU (Zen 1-3)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        return []
    return _CAPPED_ISA_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])


def _compile_flags() -> list[str]:
    arch = "-march=native" if platform.machine().lower() in ("x86_64", "amd64", "i686") else "-mcpu=native"
    # -ffp-contract=fast: every code path of a kernel fuses multiply-add the same way (the rowwise kernel's tiles
    # give a row the same bits in any tile shape because of it)
    return ["-O3", arch, *_isa_cap_flags(), "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC"]


def _cpu_fingerprint() -> str:
    """What `-march=native` compiles for: the CPU's flags (a cache shared across machines must not mix them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {torch.backends.cpu.get_cpu_capability()}"


def build_library(source: Path, cache_dir: Path) -> tuple[ctypes.CDLL, Path] | None:
    """Compile `source` (once per CPU, compiler and source) and load it; None where that is not possible."""
    compiler = _compiler()
    if compiler is None or not torch.backends.openmp.is_available():
        logger.info("%s unavailable: %s", source.stem, "no C compiler" if compiler is None else "no OpenMP")
        return None
    # the kernels' shared headers (simd.h) count as source: a changed header rebuilds every kernel
    text = b"\0".join(path.read_bytes() for path in [source, *sorted(source.parent.glob("*.h"))])
    flags = [*_compile_flags(), f"-I{source.parent}"]
    key = hashlib.sha256(b"\0".join([text, " ".join([compiler, *flags]).encode(), _cpu_fingerprint().encode()]))
    target = Path(cache_dir) / "kernels" / f"{source.stem}-{key.hexdigest()[:16]}.so"
    try:
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                built = Path(scratch) / target.name
                subprocess.run(
                    [compiler, *flags, str(source), "-o", str(built)],
                    check=True,
                    capture_output=True,
                    timeout=COMPILE_TIMEOUT_S,
                )
                os.replace(built, target)  # atomic: another process may be building the same file
        # torch is imported first, so the library's libgomp.so.1 resolves to torch's own OpenMP runtime
        return ctypes.CDLL(str(target)), target
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        logger.warning("%s not built (%s) %s", source.stem, exc, detail.decode(errors="replace")[-500:])
        return None
