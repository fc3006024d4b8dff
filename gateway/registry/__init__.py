"""The model registry: entries of several kinds, their lifecycle, leases, and runtime registrations."""

from gateway.registry.core import ModelRegistry
from gateway.registry.entry import ModelEntry, ModelState
from gateway.registry.failure import load_failure_cause
from gateway.registry.kinds import CHAT, COMPLETION, EMBEDDINGS, TOKENIZE, LocalKind, ModelFactory, ModelKind
from gateway.registry.lease import Lease
from gateway.registry.store import RegistryStore

__all__ = [
    "CHAT",
    "COMPLETION",
    "EMBEDDINGS",
    "TOKENIZE",
    "Lease",
    "LocalKind",
    "ModelEntry",
    "ModelFactory",
    "ModelKind",
    "ModelRegistry",
    "ModelState",
    "RegistryStore",
    "load_failure_cause",
]
