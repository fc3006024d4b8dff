"""The CPU's vector instruction sets, printed with every benchmark figure (our speed depends on them)."""

from __future__ import annotations

from pathlib import Path


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def describe_isa(cpuinfo: str | None = None) -> str:
    """E.g. 'AVX2' or 'AVX-512 (VNNI, BF16) + AMX (BF16, INT8)'; plus torch's own dispatch level."""
    flags = cpu_flags(cpuinfo)
    if "avx512f" in flags:
        extras = [name for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16")) if flag in flags]
        isa = "AVX-512" + (f" ({', '.join(extras)})" if extras else "")
    elif "avx2" in flags:
        isa = "AVX2"
    elif flags & {"asimd", "sve"}:
        isa = "ARM " + ("SVE" if "sve" in flags else "NEON")
    else:
        isa = "no AVX2"
    if "amx_tile" in flags:
        amx = [name for flag, name in (("amx_bf16", "BF16"), ("amx_int8", "INT8")) if flag in flags]
        isa += " + AMX" + (f" ({', '.join(amx)})" if amx else "")
    try:
        import torch

        isa += f"; torch dispatch {torch.backends.cpu.get_cpu_capability()}"
    except Exception:  # the ISA line must never break a benchmark
        pass
    return isa
