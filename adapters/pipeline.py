"""The one shared prompt pipeline every family goes through.

template choice → system-role strategy → render (`apply_chat_template`) → tokenize without a double BOS
→ stop-id union (generation_config ∪ config ∪ tokenizer ∪ adapter) → decode without special tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2

from adapters.errors import ChatNotSupportedError, TemplateRenderError
from adapters.family import FamilyAdapter

logger = logging.getLogger(__name__)

PLAIN_TEMPLATE = "plain.jinja"


def load_template(name: str) -> str:
    """Read a template shipped in adapters/templates/."""
    return resources.files("adapters").joinpath("templates", name).read_text(encoding="utf-8")


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value if v is not None}


@dataclass
class PromptPipeline:
    """A model's resolved prompt policy: template, BOS handling, stop ids, pad id."""

    tokenizer: Any
    adapter: FamilyAdapter
    chat_template: str | None
    template_source: str
    template_adds_bos: bool
    stop_token_ids: frozenset[int]
    pad_token_id: int | None
    eos_token_id: int | None = None  # the primary eos after the adapter's eos_override
    id_mismatches: dict[str, dict[str, int | None]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        tokenizer: Any,
        adapter: FamilyAdapter,
        *,
        config: Mapping[str, Any] | None = None,
        generation_config: Mapping[str, Any] | None = None,
        chat_template_override: str | None = None,
        allow_plain_chat: bool = False,
    ) -> PromptPipeline:
        template, source = _choose_template(tokenizer, adapter, chat_template_override, allow_plain_chat)
        pipeline = cls(
            tokenizer=tokenizer,
            adapter=adapter,
            chat_template=template,
            template_source=source,
            template_adds_bos=False,
            stop_token_ids=frozenset(_stop_ids(tokenizer, adapter, config or {}, generation_config or {})),
            pad_token_id=_pad_id(tokenizer, adapter, generation_config or {}),
            eos_token_id=_eos_id(tokenizer, adapter),
        )
        pipeline.template_adds_bos = pipeline._probe_template_bos()
        pipeline._check_expected_ids()
        return pipeline

    # ---- resolved, record-driven facts ------------------------------------------------------------
    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text stops for families whose turn markers are not tokens (merged with the request's stop)."""
        return self.adapter.stop_strings

    @property
    def tool_parser(self) -> str | None:
        """The adapter's tool-call parser, only if the chosen template actually renders that format."""
        marker = self.adapter.tool_parser_marker
        if self.adapter.tool_parser is None or self.chat_template is None:
            return None
        if marker is not None and marker not in self.chat_template:
            return None
        return self.adapter.tool_parser

    # ---- chat -------------------------------------------------------------------------------
    @property
    def supports_chat(self) -> bool:
        return self.chat_template is not None

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Render a conversation to the exact prompt text the model was trained on."""
        if self.chat_template is None:
            raise ChatNotSupportedError(
                "This model has no chat template, so it can only serve /v1/completions. "
                "Give the server a template (--chat-template FILE) or enable the plain template."
            )
        prepared = self._apply_system_strategy([dict(m) for m in messages])
        try:
            return self.tokenizer.apply_chat_template(
                prepared,
                chat_template=self.chat_template,
                tools=tools or None,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **dict(template_kwargs or {}),
            )
        except (jinja2.TemplateError, TypeError) as exc:  # TypeError: e.g. "str + None" inside a template
            raise TemplateRenderError(f"The model's chat template rejected the messages: {exc}") from exc

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> list[int]:
        """Render and tokenize a conversation, with exactly one BOS where the family wants one."""
        return self.encode_rendered(self.render_chat(messages, **kwargs))

    def encode_rendered(self, text: str) -> list[int]:
        """Tokenize a conversation rendered by render_chat (lets a caller check the text in between)."""
        return self._dedupe_bos(self.tokenizer.encode(text, add_special_tokens=not self.template_adds_bos))

    # ---- completions and decoding -------------------------------------------------------------
    def encode_prompt(self, text: str) -> list[int]:
        """Tokenize a raw completion prompt the way the tokenizer is configured to (BOS included)."""
        return self._dedupe_bos(self.tokenizer.encode(text, add_special_tokens=True))

    def decode(self, token_ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def describe(self) -> dict[str, Any]:
        """What was resolved, for logs and /v1/models/{id}."""
        return {
            "family": self.adapter.name,
            "template_source": self.template_source,
            "template_adds_bos": self.template_adds_bos,
            "stop_token_ids": sorted(self.stop_token_ids),
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "stop_strings": list(self.stop_strings),
            "chat": self.supports_chat,
            "system_strategy": self.adapter.system_strategy,
            "tool_parser": self.tool_parser,
            "trust_remote_code": self.adapter.trust_remote_code,
            "needs_external_tokenizer": self.adapter.needs_external_tokenizer,
            "expected_ids": dict(self.adapter.expected_ids),
            "id_mismatches": {token: dict(ids) for token, ids in self.id_mismatches.items()},
        }

    # ---- internals ------------------------------------------------------------------------------
    def _apply_system_strategy(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.adapter.system_strategy != "merge_into_first_user":
            return messages
        system = [m for m in messages if m.get("role") == "system"]
        rest = [m for m in messages if m.get("role") != "system"]
        if not system:
            return messages
        prefix = "\n\n".join(str(m.get("content") or "") for m in system)
        for message in rest:
            if message.get("role") == "user":
                message["content"] = f"{prefix}\n\n{message.get('content') or ''}"
                return rest
        return [{"role": "user", "content": prefix}, *rest]

    def _probe_template_bos(self) -> bool:
        bos = getattr(self.tokenizer, "bos_token", None)
        if self.chat_template is None or not bos:
            return False
        try:
            text = self.render_chat([{"role": "user", "content": "probe"}])
        except TemplateRenderError:
            return bos in self.chat_template
        return text.startswith(bos)

    def _dedupe_bos(self, ids: list[int]) -> list[int]:
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        if bos_id is not None and len(ids) >= 2 and ids[0] == ids[1] == bos_id:
            logger.warning("double BOS detected for family %s; dropping one", self.adapter.name)
            return ids[1:]
        return ids

    def _check_expected_ids(self) -> None:
        vocab = self.tokenizer.get_vocab()
        for token, expected in self.adapter.expected_ids.items():
            actual = vocab.get(token)
            if actual != expected:
                self.id_mismatches[token] = {"expected": expected, "actual": actual}
                logger.warning(
                    "family %s expects %s to be id %s but the tokenizer has %s; "
                    "check that the tokenizer belongs to this model (or pass --family)",
                    self.adapter.name,
                    token,
                    expected,
                    actual,
                )


def _choose_template(
    tokenizer: Any, adapter: FamilyAdapter, override: str | None, allow_plain: bool
) -> tuple[str | None, str]:
    if override is not None:
        return override, "operator override"
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one serves chat
        own = own.get("default")
    adapter_template = load_template(adapter.chat_template) if adapter.chat_template else None
    policy = adapter.template_policy
    if policy == "override" and adapter_template:
        return adapter_template, f"adapter {adapter.name}"
    if policy in ("tokenizer", "fallback_if_missing") and own:
        return own, "tokenizer"
    if policy == "fallback_if_missing" and adapter_template:
        return adapter_template, f"adapter {adapter.name} (tokenizer has none)"
    if allow_plain:
        return load_template(PLAIN_TEMPLATE), "plain concatenation (operator enabled)"
    return None, "none (completion-only)"


def _stop_ids(
    tokenizer: Any, adapter: FamilyAdapter, config: Mapping[str, Any], generation_config: Mapping[str, Any]
) -> set[int]:
    ids = _ids(generation_config.get("eos_token_id")) | _ids(config.get("eos_token_id"))
    ids |= _ids(getattr(tokenizer, "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for token in (adapter.eos_override, *adapter.extra_stop_tokens):
        if token and token in vocab:
            ids.add(vocab[token])
    return ids


def _eos_id(tokenizer: Any, adapter: FamilyAdapter) -> int | None:
    override = tokenizer.get_vocab().get(adapter.eos_override) if adapter.eos_override else None
    return override if override is not None else getattr(tokenizer, "eos_token_id", None)


def _pad_id(tokenizer: Any, adapter: FamilyAdapter, generation_config: Mapping[str, Any]) -> int | None:
    vocab = tokenizer.get_vocab()
    for token in adapter.pad_preference:
        if token in vocab:
            return vocab[token]
    for candidate in (getattr(tokenizer, "pad_token_id", None), generation_config.get("pad_token_id")):
        if isinstance(candidate, int):
            return candidate
    eos = sorted(_ids(generation_config.get("eos_token_id")) | _ids(getattr(tokenizer, "eos_token_id", None)))
    return eos[0] if eos else None
