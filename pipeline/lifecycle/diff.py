"""What differs between two artifacts' manifests: field paths with the old and the new value, as `dvc diff`
shows them. Times, hosts, durations and build numbers differ between any two builds and are left out unless
asked for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.manifest import Manifest

# Differ between any two builds of the same inputs: not a change of what was built.
INCIDENTAL = ("build.number", "build.created_at", "build.duration_s", "build.waited_s", "build.host", "build.stages",
              "validation.validated_at", "validation.host", "cleanup_check.seconds")


@dataclass(frozen=True)
class Change:
    path: str  # 'config.memory_pools.workspace'
    old: Any  # None: absent in the first
    new: Any  # None: absent in the second

    def line(self) -> str:
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


def changes(a: Manifest, b: Manifest, everything: bool = False) -> list[Change]:
    """Every leaf field that differs, in path order; incidental fields only when `everything`."""
    old, new = _leaves(a.to_dict()), _leaves(b.to_dict())
    found = [Change(path, old.get(path), new.get(path)) for path in sorted(old.keys() | new.keys())
             if old.get(path) != new.get(path)]
    return found if everything else [c for c in found if not c.path.startswith(INCIDENTAL)]


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b[0].c': leaf} for nested objects and arrays; an empty object or array is a leaf itself."""
    if isinstance(value, dict) and value:
        return {path: leaf for key, item in value.items()
                for path, leaf in _leaves(item, f"{prefix}.{key}" if prefix else str(key)).items()}
    if isinstance(value, list) and value:
        return {path: leaf for index, item in enumerate(value) for path, leaf in _leaves(item, f"{prefix}[{index}]").items()}
    return {prefix: value}


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else repr(value)
