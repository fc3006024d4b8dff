"""The state file: models added or removed through /admin, so they survive a restart.

JSON `{"added": [<model spec>...], "removed": [<name from the models file>...]}`, rewritten atomically
(temp file in the same directory, fsync, rename) so a crash never leaves half a file behind.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from gateway.specs import SpecBase, parse_spec

logger = logging.getLogger(__name__)


@dataclass
class RegistryState:
    added: list[SpecBase] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class RegistryStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> RegistryState:
        if not self.path.is_file():
            return RegistryState()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            added = [parse_spec(spec) for spec in data.get("added", [])]
            removed = [str(name) for name in data.get("removed", [])]
        except (OSError, ValueError, ValidationError, AttributeError) as exc:
            # a bad state file must not stop the models file's models from serving
            logger.error("ignoring unreadable registry state file %s: %s", self.path, exc)
            return RegistryState()
        return RegistryState(added=added, removed=removed)

    def write(self, state: RegistryState) -> None:
        data = {
            "added": [{"name": s.name, **s.model_dump(mode="json", exclude_defaults=True)} for s in state.added],
            "removed": sorted(set(state.removed)),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, self.path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
