"""Hand a thread's idle OpenMP workers back, so a busy engine's parallel regions keep their speed.

torch's CPU wheels run their parallel ops (and MKL's, and our C kernels') on GNU libgomp. libgomp keeps a
pool of worker threads per thread that ever ran a parallel region, for as long as that thread lives. Once
the pools' threads outnumber the CPUs, every waiting worker spins ~100 times instead of ~300,000 before it
sleeps (libgomp's "throttled" spin count, which no environment variable raises), so each parallel region
of a busy engine wakes its workers from a futex sleep: on a 2-core VM that is 50-80 us, a decode step of
~200 regions 60 % slower. Measured with the embedded SmolLM2 (fp32, one stream, 2 cores): 34-36 tok/s,
then one `/v1/embeddings` request (its runner thread keeps a pool) and 20-22 tok/s for as long as the
server ran. In-process benchmarks that load the model in the main thread showed the same, all the time.

So threads that run torch now and then (request preparation, embedding and pipeline runners, an engine
going idle) release their pool when a piece of work is done (`omp_pause_resource_all`, OpenMP 5.0: in
libgomp it frees the calling thread's pool only); the next parallel region starts a fresh one (~0.1 ms).
Threads that exit (model loads) free theirs anyway. Other OpenMP runtimes are left alone.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: omp_pause_soft (threads go, nothing else is torn down)


@functools.cache
def _libgomp_runtimes() -> tuple[ctypes.CDLL, ...]:
    """The libgomp copies this process has loaded (torch's own; a wheel may rename it libgomp-<hash>.so.1).
    Opened with RTLD_NOLOAD: found, never loaded here."""
    paths: set[str] = set()
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)  # address perms offset device inode path
            if len(parts) == 6 and Path(parts[5]).name.startswith("libgomp"):
                paths.add(parts[5])
    except OSError:
        return ()
    runtimes = []
    for path in sorted(paths):
        try:
            runtime = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
            pause = runtime.omp_pause_resource_all
        except (OSError, AttributeError):  # not loaded after all, or a libgomp older than OpenMP 5.0
            continue
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        runtimes.append(runtime)
    return tuple(runtimes)


def release_openmp_workers() -> bool:
    """Let the calling thread's OpenMP worker threads exit (call it outside any parallel region, when the
    thread's torch work is done for now). True when libgomp is loaded and answered (pool handed back, or none)."""
    runtimes = _libgomp_runtimes()
    if not runtimes:
        _libgomp_runtimes.cache_clear()  # looked before torch loaded it, or none: look again next time
    return bool(runtimes) and all(runtime.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0 for runtime in runtimes)


def released(work: Callable[[], T]) -> Callable[[], T]:
    """`work` that releases its thread's OpenMP workers once done (for executor threads that outlive it)."""

    def run() -> T:
        try:
            return work()
        finally:
            release_openmp_workers()

    return run
