"""What differs between two artifacts' manifests: field paths with the old and the new value, as `dvc diff`
shows them. Times, hosts, durations and build numbers differ between any two builds and are left out unless
asked for. Why a build was made: what changed in its inputs (settings, model, tools) since the previous build of
the same recipe and target, as `dvc status` says it (`build` and the nightly report it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.store import Artifact, Store

# Differ between any two builds of the same inputs: not a change of what was built.
INCIDENTAL = ("build.number", "build.created_at", "build.duration_s", "build.waited_s", "build.host", "build.stages",
              "validation.validated_at", "validation.host", "cleanup_check.seconds")

# What a build made of its inputs (the engine, the network TensorRT found, checks and their results), and the
# recipe's bytes and place (a change there that matters shows in the settings): not a reason to build.
EFFECTS = ("engine.", "validation", "build.key", "build.source_key", "network.layers", "network.notes",
           "network.inputs", "network.outputs", "cleanup_check", "precision.check", "model.cleaned_", "model.bytes",
           "model.inputs", "model.outputs", "model.opset", "recipe.sha256", "recipe.path", "promoted_from")

# Recorded with a build but never a reason for one (the build key leaves them out): shown by `diff`, not as a cause.
NOT_BUILT_FROM = ("validate.",)


@dataclass(frozen=True)
class Change:
    path: str  # 'config.memory_pools.workspace'
    old: Any  # None: absent in the first
    new: Any  # None: absent in the second

    def line(self) -> str:
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"

    def to_json(self) -> dict:
        return {"path": self.path, "old": self.old, "new": self.new}


def changes(a: Manifest, b: Manifest, everything: bool = False) -> list[Change]:
    """Every leaf field that differs, in path order; incidental fields only when `everything`."""
    old, new = _leaves(a.to_dict()), _leaves(b.to_dict())
    found = [Change(path, old.get(path), new.get(path)) for path in sorted(old.keys() | new.keys())
             if old.get(path) != new.get(path)]
    return found if everything else [c for c in found if not c.path.startswith(INCIDENTAL)]


def causes(a: Manifest, b: Manifest) -> list[Change]:
    """What changed in what a build is made from (recipe settings as built, model, backend and tool versions,
    target), leaving out what the build made of them (EFFECTS), what never causes a build (NOT_BUILT_FROM: the
    validate: settings) and what differs between any two builds."""
    return [c for c in changes(a, b) if not c.path.startswith(EFFECTS + NOT_BUILT_FROM)]


def previous(store: Store, artifact: Artifact) -> Artifact | None:
    """The newest build of the same recipe for the same target (as the recipe names it: 'sm89', 'local') before
    `artifact`; another backend version, hence GPU tag, is the same target. None for a first build."""
    target = artifact.manifest().target.name
    older = [a for a in store.artifacts(artifact.name) if a.sort_key < artifact.sort_key and _target(a) == target]
    return older[-1] if older else None


def why_built(store: Store, artifact: Artifact, shown: int = 3) -> tuple[str, list[Change]]:
    """One line saying why `artifact` was built, and every change behind it: 'first build for sm89', or
    'since tiny@1.0.0+1 [sm89.rtx-1.7.1]: config.memory_pools.workspace: 1073741824 -> 2147483648' (the first
    `shown` changes, then how many more), or that nothing changed (a forced rebuild)."""
    before = previous(store, artifact)
    if before is None:
        return f"first build for {artifact.manifest().target.name}", []
    found = causes(before.manifest(), artifact.manifest())
    since = f"since {before.ref} [{before.tag}]"
    if not found:
        return f"nothing changed {since} (forced)", []
    more = f"; and {len(found) - shown} more" if len(found) > shown else ""
    return f"{since}: " + "; ".join(c.line() for c in found[:shown]) + more, found


def _target(artifact: Artifact) -> str | None:
    try:
        return artifact.manifest().target.name
    except PipelineError:  # a damaged manifest is no previous build
        return None


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
