"""Loaded by every server `bench/run.py --isa-cap avx2` starts (this folder goes on PYTHONPATH).

torch's own CPU checks (`torch.cpu._is_avx512_supported()` and the like) read the CPU, not the dispatch cap
ATEN_CPU_CAPABILITY: vLLM picks its AVX-512 + BF16 build (`vllm._C`) over `vllm._C_AVX2` from them, and
Gantry's `dtype auto` reads them too. With the cap set, they answer as an AVX2-only CPU would, so every server
runs the code paths it would run on such a CPU (its memory system and clocks stay those of this machine).
"""

import os

if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
    import torch.cpu

    for _name in dir(torch.cpu):
        if _name.startswith("_is_") and _name.endswith("_supported") and _name != "_is_avx2_supported":
            setattr(torch.cpu, _name, lambda: False)
