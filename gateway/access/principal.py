"""The caller of the current request and which models it may see.

The access middleware sets the principal in a contextvar for the request; ModelRegistry.find reads it, so
every route that names a model (chat, completions, embeddings, tokenize, audio, …) applies the same
visibility without doing anything itself. No principal (an open server, or code outside a request) sees
every model.

    public     anyone, even without a key
    protected  any valid key (the default)
    private    only keys that list the model (and the admin key)

A key that lists models may use only those (and the public ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

Visibility = Literal["public", "protected", "private"]


@dataclass(frozen=True)
class KeyLimits:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.max_concurrent))


@dataclass(frozen=True)
class Principal:
    name: str | None  # the key's name (never the key); None = anonymous (no key sent)
    models: frozenset[str] | None = None  # None: every public and protected model
    admin: bool = False
    limits: KeyLimits = KeyLimits()

    @property
    def anonymous(self) -> bool:
        return self.name is None

    def may_use(self, ids: list[str], visibility: str) -> bool:
        """`ids`: the entry's name and aliases (a key may list any of them)."""
        if self.admin or visibility == "public":
            return True
        if self.anonymous:
            return False
        if self.models is None:
            return visibility == "protected"
        return not self.models.isdisjoint(ids)


ANONYMOUS = Principal(name=None)

_current: ContextVar[Principal | None] = ContextVar("gantry_principal", default=None)


def current_principal() -> Principal | None:
    return _current.get()


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)
