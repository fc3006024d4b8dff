"""Resolve which family record applies to a loaded model.

Order (first hit wins): explicit family from the operator → config model_type/architectures plus
vocabulary probes → anchored name patterns → the generic adapter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from adapters.errors import UnknownFamilyError
from adapters.families import ALL_FAMILIES, GENERIC
from adapters.family import FamilyAdapter

logger = logging.getLogger(__name__)


class AdapterRegistry:
    """Family records by name, with detection over local files only (never the network)."""

    def __init__(self, families: Iterable[FamilyAdapter] = ALL_FAMILIES) -> None:
        self._families = {family.name: family for family in families}
        if GENERIC.name not in self._families:
            self._families[GENERIC.name] = GENERIC

    def names(self) -> list[str]:
        return sorted(self._families)

    def get(self, name: str) -> FamilyAdapter:
        try:
            return self._families[name]
        except KeyError:
            known = ", ".join(self.names())
            raise UnknownFamilyError(f"Unknown model family {name!r}; known families: {known}.") from None

    def resolve(
        self,
        *,
        config: Mapping[str, Any],
        tokenizer: Any,
        model_name: str = "",
        explicit: str | None = None,
    ) -> FamilyAdapter:
        """Pick the family record for a model from its config, tokenizer vocabulary and name."""
        if explicit:
            return self.get(explicit)
        candidates = [f for f in self._families.values() if f is not GENERIC]
        by_config = [f for f in candidates if _config_matches(f, config) and _vocab_matches(f, tokenizer)]
        if by_config:
            return max(by_config, key=lambda f: f.priority)
        basename = model_name.rstrip("/").rsplit("/", 1)[-1]
        by_name = [
            f
            for f in candidates
            if any(re.fullmatch(p, basename) for p in f.name_patterns) and _vocab_matches(f, tokenizer)
        ]
        if by_name:
            return max(by_name, key=lambda f: f.priority)
        return GENERIC

    def external_tokenizer_family(
        self, *, config: Mapping[str, Any], explicit: str | None = None
    ) -> FamilyAdapter | None:
        """The family, if config (or the operator) names one that ships no tokenizer of its own.

        Asked before a tokenizer is loaded (resolve() needs one): OpenELM's checkpoint has no tokenizer
        files, so the loader must take the configured tokenizer path or fail with a clear message.
        """
        if explicit:
            family = self.get(explicit)
            return family if family.needs_external_tokenizer else None
        matches = [f for f in self._families.values() if f.needs_external_tokenizer and _config_matches(f, config)]
        return max(matches, key=lambda f: f.priority) if matches else None


def _config_matches(family: FamilyAdapter, config: Mapping[str, Any]) -> bool:
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if not family.model_types and not family.architectures:
        return False
    return model_type in family.model_types or bool(set(architectures) & family.architectures)


def _vocab_matches(family: FamilyAdapter, tokenizer: Any) -> bool:
    if family.bos_token is not None and getattr(tokenizer, "bos_token", None) != family.bos_token:
        return False
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in family.vocab_probes)
