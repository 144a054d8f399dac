"""What a stage is: one entry of the registry (pipeline.stages.REGISTRY)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline.stages.context import Context


@dataclass(frozen=True)
class Stage:
    name: str  # as written in recipes
    spec: type  # its frozen settings; `spec()` are the defaults of an optional stage the recipe leaves out
    freeze: Callable[[Mapping[str, Any], Path], Any]  # the schema-checked YAML body and the recipe's folder -> spec
    run: Callable[[Context], None]  # reads what earlier stages left in the context, leaves its own results there
    per_target: bool = False  # runs once per build target (else once per build)
    in_key: bool = False  # its settings are part of the build key: they change the engine's bytes
    optional: bool = False  # a recipe may leave it out
    # Its settings as the keys see them (files by content). A stage that has one is left out of the keys when a
    # recipe leaves it out, so the keys of recipes written before it existed stay the same.
    key: Callable[[Any], dict] | None = None
    check: Callable[[Any], list[str]] | None = None  # the frozen recipe -> its located problems (after the schema)


def frozen(value: Any) -> Any:
    """A YAML value made immutable: mappings become read-only views, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(frozen(v) for v in value)
    return value
