"""What decides whether a build can be skipped: the build and source keys, and the reuse of published
artifacts whose key matches (newest first), with the model's hashes remembered from earlier manifests."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import __version__
from pipeline.digest import file_sha256, json_sha256, plain
from pipeline.errors import PipelineError, RecipeError
from pipeline.files import clone
from pipeline.manifest import Manifest
from pipeline.recipe import Recipe
from pipeline.stages import KEY_STAGES, ORDER, REGISTRY
from pipeline.stages.parse import (
    PROTO_LIMIT,
    Loaded,
    check_pin,
    digests,
    header,
    load,
    model_problem,
    model_size,
    preflight,
)
from pipeline.store import Artifact, Store
from pipeline.trt.backend import Backend, installed_version
from pipeline.trt.target import Target

TOOLS = ("onnx", "onnx-graphsurgeon", "onnxruntime", "numpy")
COPY_PREFIX = "weights-copy."  # WeightCopies' files in a build's scratch directory


def _settings(recipe: Recipe, stages: tuple[str, ...]) -> dict:
    """Stage settings as written (an absent stage is None), with files named by content: the timing cache and
    plugin libraries by sha256, not path. A recipe without plugins keeps the keys it had before they existed; a
    stage with its own `key` (precision: calibration data by sha256) gives its settings, and is left out when
    absent, so recipes without it keep their keys too."""
    settings = {stage: plain(recipe.stages.get(stage)) if REGISTRY[stage].key is None else REGISTRY[stage].key(
        recipe.stages[stage]) for stage in stages if stage in recipe.stages or REGISTRY[stage].key is None}
    serialize, written = recipe.spec("serialize"), settings.get("serialize")
    if written:
        cache = serialize.timing_cache
        if cache:
            written["timing_cache"] = file_sha256(cache.path) if cache.path.is_file() else None
        written["plugins"] = [file_sha256(p) if p.is_file() else None for p in serialize.plugins]
        if not written["plugins"]:
            del written["plugins"]
    return settings


def _target_key(target: Target) -> str:
    """'sm89' for TensorRT-RTX; full TensorRT builds for one GPU model, so 'sm80 NVIDIA A100-SXM4-80GB'."""
    return target.sm if target.gpu is None else f"{target.sm} {target.gpu}"


def build_key_inputs(recipe: Recipe, cleaned_sha256: str, backend: Backend, target: Target) -> dict:
    """Everything that determines the engine bytes, and nothing cosmetic (names, paths, comments)."""
    return {
        "settings": _settings(recipe, KEY_STAGES),
        "cleaned_sha256": cleaned_sha256,
        "backend": {"name": backend.name, "version": backend.version},
        "target": _target_key(target),
    }


def build_key(recipe: Recipe, cleaned_sha256: str, backend: Backend, target: Target) -> str:
    return json_sha256(build_key_inputs(recipe, cleaned_sha256, backend, target))


def source_key(recipe: Recipe, model: dict, backend: Backend, target: Target) -> str:
    """Like the build key, but from the inputs before any stage runs: the original model's hashes, every
    stage's settings and the versions of the tools that transform the graph. Cheap to compute, so an
    unchanged rebuild can be recognised without parsing or cleaning the model."""
    return json_sha256({
        "settings": _settings(recipe, ORDER),
        "model": {"sha256": model["sha256"], "external_data": [d["sha256"] for d in model["external_data"]]},
        "backend": {"name": backend.name, "version": backend.version},
        "target": _target_key(target),
        "tools": {name: installed_version(name) for name in TOOLS} | {"trt-pipeline": __version__},
    })


def _newest_first(store: Store, recipe: Recipe, log: logging.Logger,
                  pick: Callable[[Artifact, Manifest], object]) -> object:
    """The first non-None `pick(artifact, manifest)` over this recipe's artifacts of its version, newest first.
    An unreadable or damaged manifest is skipped with a warning: it must not block every later build."""
    for artifact in reversed(store.artifacts(recipe.name)):
        if artifact.version != recipe.version:
            continue
        try:
            found = pick(artifact, artifact.manifest())
        except PipelineError as error:
            log.warning("ignoring %s for reuse: %s", artifact.path, error)
            continue
        if found is not None:
            return found
    return None


def reusable(store: Store, recipe: Recipe, field: str, key: str, log: logging.Logger) -> Artifact | None:
    """The newest artifact of this recipe name and version whose manifest has build.<field> == key and whose engine
    is intact (Store.verified): a damaged one is skipped with a warning, so the build makes a new one."""
    return _newest_first(store, recipe, log,
                         lambda artifact, m: store.verified(artifact) if getattr(m.build, field) == key else None)


def _known_model(store: Store, recipe: Recipe, sha256: str, log: logging.Logger,
                 hasher: Callable[[Path], str]) -> dict | None:
    """The model record of an artifact of this version built from this very file (same path and sha256, and
    external-data files that still hash the same): the skip decision then needs no parse of the model."""

    def same_file(artifact: Artifact, manifest: Manifest) -> dict | None:
        known = manifest.model
        if (known.path, known.sha256) != (recipe.model_path, sha256) or not all(
                data.path.is_file() and hasher(data.path) == data.sha256 for data in known.external_data):
            return None
        return known.digests()

    return _newest_first(store, recipe, log, same_file)


def model_record(recipe: Recipe, store: Store, log: logging.Logger, remember: bool = True,
                 keep: list[Loaded] | None = None, copies: WeightCopies | None = None) -> dict:
    """The model's hashes for the source key; from an earlier manifest when the file is unchanged (no parse).
    A pin is checked here, before any reuse: it is never skipped. `remember=False` (a dry run) writes nothing.
    `keep` (a build): when the hash memo does not know the model file, it is read once (parse.load), hashed and
    described from those bytes, which are appended to `keep` for parse instead of being read twice more. `copies`
    (a build): where external-data files are copied as they are hashed (WeightCopies)."""
    if model_problem(recipe.model_path):  # missing, empty, a FIFO, a directory, ...: said as `check` says it
        raise RecipeError(preflight(recipe))
    hasher = functools.partial(store.file_sha256, remember=remember)
    sha = store.file_sha256(recipe.model_path, remember, None if keep is None else functools.partial(_read_once, keep))
    check_pin(recipe, sha)
    if copies is not None and "graph-cleanup" in recipe.stages:
        hasher = functools.partial(store.file_sha256, remember=remember, read=functools.partial(copies.hash, recipe))
    return _known_model(store, recipe, sha, log, hasher) or digests(
        recipe.model_path, sha, hasher, keep[0].header if keep else None)


@dataclass
class WeightCopies:
    """External-data files copied into a build's scratch directory while they are hashed, when the hash memo does
    not know them: the copy runs inside the kernel on the other core, hidden behind the hash (2.25 GiB: 1.5 s for
    both, against 2.1 s one after the other), and graph-cleanup moves it beside the cleaned model rather than
    copying the file again. Only for weights parse leaves on disk (more than protobuf holds). `found`: path ->
    copy, a file the hash describes (one that changed while it was read is not kept)."""
    scratch: Path
    found: dict[str, Path] = field(default_factory=dict)
    _stamps: dict[str, tuple[int, ...]] = field(default_factory=dict)  # each copy's file as it was copied
    _names: Iterator[int] = field(default_factory=itertools.count)  # copy names, never used twice

    def hash(self, recipe: Recipe, path: Path) -> str:
        """sha256 of `path`, an external-data file of the recipe's model, copied meanwhile if parse leaves the
        model's weights on disk. Hashed again (a file the memo does not remember yet, as it changed moments ago):
        the copy is kept if the file is still as it was copied, else dropped."""
        key = str(path)
        if key in self.found:
            sha256 = file_sha256(path)
            if _stamp(path) != self._stamps[key]:
                self.found.pop(key).unlink(missing_ok=True)
            return sha256
        model = recipe.model_path
        if model_size(model, header(model)["external_data"]) < PROTO_LIMIT:  # parse loads the weights
            return file_sha256(path)
        copy = self.scratch / f"{COPY_PREFIX}{next(self._names)}"
        before = self._stamps[key] = _stamp(path)
        with ThreadPoolExecutor(1, thread_name_prefix="weights-copy") as worker:
            copying = worker.submit(clone, path, copy)
            sha256 = file_sha256(path)
            failed = copying.exception()  # a full disk, say: graph-cleanup copies the file again, and says so
        if failed is None and _stamp(path) == before:
            self.found[key] = copy
        else:
            copy.unlink(missing_ok=True)
        return sha256


def _stamp(path: Path) -> tuple[int, ...]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _read_once(keep: list[Loaded], path: Path) -> str:
    loaded = load(path)
    if loaded is None:  # a text format, or more than protobuf holds
        return file_sha256(path)
    keep.append(loaded)
    return loaded.sha256


def source_hit(recipe: Recipe, backend: Backend, store: Store, model: dict, target: Target,
               log: logging.Logger) -> Artifact | None:
    """The artifact `build` reuses for `target` before running any stage: same source key, same version."""
    return reusable(store, recipe, "source_key", source_key(recipe, model, backend, target), log)
