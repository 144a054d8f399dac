"""manifest.json read and checked once: typed, frozen records of what produced an engine.

pipeline.build.record writes it (a dict); every reader gets a `Manifest`. A missing or wrongly typed field is one
StoreError naming the file and the field, raised when the file is read, never a KeyError in the reader that meets
it. Fields that older manifests lack get their defaults here, in one place. `to_dict()` is the JSON exactly as read,
fields no record models included, so an update rewrites the file unchanged but for what it changes.
Tensor maps, profiles and validation results stay JSON values as written (read them, do not change them).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline.errors import StoreError
from pipeline.recipe import Tolerance, ValidateSpec

Tensors = Mapping[str, Mapping[str, Any]]  # name -> {"dtype": str, "shape": [int | str, ...]}
Profile = Mapping[str, Mapping[str, list]]  # input -> {"min", "opt", "max"}

_REQUIRED = object()
_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float)}
_NAMES = {"object": "an object", "array": "an array", "string": "a string", "integer": "an integer",
          "number": "a number"}


def _damaged(path: Path, problem: str) -> StoreError:
    return StoreError(f"damaged manifest {path}: {problem}")


def _what(value: Any) -> str:
    """The JSON type of a value, as a message names it."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else "a boolean"
    return next((_NAMES[kind] for kind in ("integer", "number", "string", "array", "object")
                 if isinstance(value, _TYPES[kind])), type(value).__name__)


def _checked(value: Any, kind: str, name: str, path: Path) -> Any:
    if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
        raise _damaged(path, f"field '{name}' is {_what(value)}, not {_NAMES[kind]}")
    return value


@dataclass(frozen=True)
class _Object:
    """One JSON object of a manifest, read field by field; `name` is its dotted name ('' for the manifest)."""

    data: Mapping[str, Any]
    name: str
    path: Path

    def _name(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, kind: str, default: Any = _REQUIRED) -> Any:
        """The field, of `kind`; `default` when it is missing or null (a required field must be there)."""
        if key not in self.data or (self.data[key] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                raise _damaged(self.path, f"no field '{self._name(key)}'")
            return default
        return _checked(self.data[key], kind, self._name(key), self.path)

    def object(self, key: str) -> _Object:
        return _Object(self.get(key, "object"), self._name(key), self.path)

    def optional(self, key: str) -> _Object | None:
        """An object field that may be missing or null."""
        value = self.get(key, "object", None)
        return None if value is None else _Object(value, self._name(key), self.path)

    def array(self, key: str, kind: str, default: Any = _REQUIRED) -> tuple:
        """An array field whose every element is of `kind`."""
        items = enumerate(self.get(key, "array", default))
        return tuple(_checked(item, kind, f"{self._name(key)}[{index}]", self.path) for index, item in items)

    def objects(self, key: str, default: Any = _REQUIRED) -> tuple[_Object, ...]:
        """An array field of objects."""
        return tuple(_Object(item, f"{self._name(key)}[{index}]", self.path)
                     for index, item in enumerate(self.array(key, "object", default)))

    def children(self) -> dict[str, _Object]:
        """Every field of this object, each an object itself."""
        return {key: _Object(_checked(value, "object", self._name(key), self.path), self._name(key), self.path)
                for key, value in self.data.items()}


def _tensors(parent: _Object, key: str) -> Tensors:
    found = {}
    for name, tensor in parent.object(key).children().items():
        tensor.get("dtype", "string")
        tensor.get("shape", "array")
        found[name] = tensor.data
    return found


# ---------------------------------------------------------------- the records


@dataclass(frozen=True)
class RecipeRecord:
    name: str
    version: str
    path: Path  # the recipe file the artifact was built from
    sha256: str

    @classmethod
    def _read(cls, fields: _Object) -> RecipeRecord:
        return cls(fields.get("name", "string"), fields.get("version", "string"), Path(fields.get("path", "string")),
                   fields.get("sha256", "string"))


@dataclass(frozen=True)
class ExternalData:
    path: Path
    sha256: str


@dataclass(frozen=True)
class ModelRecord:
    path: Path  # the original model
    sha256: str
    bytes: int  # with its external data
    external_data: tuple[ExternalData, ...]
    inputs: Tensors  # as the ONNX model declares them (shape dimensions may be names)
    outputs: Tensors
    cleaned_sha256: str
    cleaned_file: str | None  # None without graph-cleanup

    @classmethod
    def _read(cls, fields: _Object) -> ModelRecord:
        data = tuple(ExternalData(Path(d.get("path", "string")), d.get("sha256", "string"))
                     for d in fields.objects("external_data"))
        return cls(Path(fields.get("path", "string")), fields.get("sha256", "string"), fields.get("bytes", "integer"),
                   data, _tensors(fields, "inputs"), _tensors(fields, "outputs"),
                   fields.get("cleaned_sha256", "string"), fields.get("cleaned_file", "string", None))

    def digests(self) -> dict:
        """The original model's hashes as pipeline.stages.parse.digests gives them (the source key's input)."""
        return {"path": str(self.path), "sha256": self.sha256,
                "external_data": [{"path": str(d.path), "sha256": d.sha256} for d in self.external_data],
                "bytes": self.bytes}


@dataclass(frozen=True)
class BackendRecord:
    name: str  # 'tensorrt-rtx' or 'tensorrt'
    version: str  # in full, e.g. 1.7.1.116

    @classmethod
    def _read(cls, fields: _Object) -> BackendRecord:
        return cls(fields.get("name", "string"), fields.get("version", "string"))


@dataclass(frozen=True)
class TargetRecord:
    name: str  # as the recipe names it: 'sm89', 'local'
    tag: str
    compute_capability: str  # '8.9'
    gpu: str | None  # the GPU model full TensorRT built for; None for TensorRT-RTX

    @classmethod
    def _read(cls, fields: _Object) -> TargetRecord:
        return cls(fields.get("name", "string"), fields.get("tag", "string"),
                   fields.get("compute_capability", "string"), fields.get("gpu", "string", None))


@dataclass(frozen=True)
class NetworkRecord:
    flags: tuple[str, ...]
    inputs: Tensors  # the engine's I/O: TensorRT data types, -1 for a dynamic dimension
    outputs: Tensors
    plugins: tuple[str, ...]  # paths of the plugin libraries the engine was built with (and needs to run)

    @classmethod
    def _read(cls, fields: _Object) -> NetworkRecord:
        plugins = tuple(plugin.get("path", "string") for plugin in fields.objects("plugins", ()))
        return cls(fields.array("flags", "string"), _tensors(fields, "inputs"), _tensors(fields, "outputs"), plugins)


@dataclass(frozen=True)
class ConfigRecord:
    memory_pools: Mapping[str, int]  # pool -> bytes
    builder_optimization_level: int
    profiles: tuple[Profile, ...]
    hardware_compatibility: str  # 'none', 'ampere_plus', 'same_compute_capability'
    compute_capabilities: tuple[str, ...]  # TensorRT-RTX: the ones the engine is built for; () for full TensorRT

    @classmethod
    def _read(cls, fields: _Object) -> ConfigRecord:
        pools, profiles = fields.object("memory_pools"), fields.objects("profiles")
        for profile in profiles:
            for ranges in profile.children().values():
                for point in ("min", "opt", "max"):
                    ranges.array(point, "integer")
        return cls({pool: pools.get(pool, "integer") for pool in pools.data},
                   fields.get("builder_optimization_level", "integer"), tuple(p.data for p in profiles),
                   fields.get("hardware_compatibility", "string", "none"),
                   fields.array("compute_capabilities", "string", ()))


@dataclass(frozen=True)
class EngineRecord:
    file: str  # in the artifact directory
    sha256: str
    bytes: int

    @classmethod
    def _read(cls, fields: _Object) -> EngineRecord:
        return cls(fields.get("file", "string"), fields.get("sha256", "string"), fields.get("bytes", "integer"))


@dataclass(frozen=True)
class BuildRecord:
    number: int
    key: str
    source_key: str | None  # None in manifests written before source keys
    created_at: str
    duration_s: float
    host: str

    @classmethod
    def _read(cls, fields: _Object) -> BuildRecord:
        return cls(fields.get("number", "integer"), fields.get("key", "string"),
                   fields.get("source_key", "string", None), fields.get("created_at", "string"),
                   fields.get("duration_s", "number"), fields.get("host", "string"))


@dataclass(frozen=True)
class ValidationRecord:
    """The newest recorded validation (pipeline.validate.artifact writes it); not-run when there is none."""

    status: str = "not-run"  # 'not-run', 'skipped', 'passed', 'failed'
    reason: str | None = None
    tag: str | None = None  # the GPU tag it ran on, when not the artifact's own
    results: tuple[Mapping[str, Any], ...] = ()  # one row per shape set, as pipeline.validate.compare makes them

    @classmethod
    def _read(cls, fields: _Object | None) -> ValidationRecord:
        if fields is None:
            return cls()
        return cls(fields.get("status", "string", "not-run"), fields.get("reason", "string", None),
                   fields.get("tag", "string", None), fields.array("results", "object", ()))


@dataclass(frozen=True)
class CleanupCheckRecord:
    frozen_inputs: Mapping[str, Any]  # input -> the value graph-cleanup froze it to

    @classmethod
    def _read(cls, fields: _Object | None) -> CleanupCheckRecord | None:
        return None if fields is None else cls(fields.get("frozen_inputs", "object", {}))


@dataclass(frozen=True)
class PromotedFrom:
    """The source build of an engine rebuilt by a promotion (pipeline.lifecycle.promote writes it)."""

    ref: str
    tag: str
    build_key: str
    engine_sha256: str
    recipe_sha256: str
    cleaned_sha256: str

    @classmethod
    def _read(cls, fields: _Object | None) -> PromotedFrom | None:
        if fields is None:
            return None
        return cls(*(fields.get(name, "string") for name in ("ref", "tag", "build_key", "engine_sha256",
                                                              "recipe_sha256", "cleaned_sha256")))


def _validate_spec(top: _Object) -> ValidateSpec | None:
    """The validate: block as built (its defaults when the recipe had none); None when the manifest predates it."""
    if "validate" not in top.data:
        return None
    block, default = top.optional("validate"), ValidateSpec()
    if block is None:
        return default
    outputs = block.optional("outputs")
    tolerances = {name: Tolerance(t.get("atol", "number"), t.get("rtol", "number"))
                  for name, t in (outputs.children() if outputs else {}).items()}
    return ValidateSpec(reference=block.get("reference", "string", default.reference),
                        atol=block.get("atol", "number", default.atol), rtol=block.get("rtol", "number", default.rtol),
                        outputs=MappingProxyType(tolerances), shapes=block.array("shapes", "string", default.shapes),
                        seed=block.get("seed", "integer", default.seed))


@dataclass(frozen=True)
class PrecisionRecord:
    mode: str  # fp16 | bf16 | int8 | fp8
    accuracy_delta: Mapping[str, float]  # output -> the precision check's max abs error against the FP32 original
    accuracy_limits: Mapping[str, float | None]  # output -> the check's max_abs limit, if any

    @classmethod
    def _read(cls, block: _Object | None) -> PrecisionRecord | None:
        if block is None:
            return None
        check = block.optional("check")
        outputs = (check.get("outputs", "object", {}) if check else {}) or {}
        delta = {name: row["max_abs"] for name, row in outputs.items()
                 if isinstance(row, dict) and isinstance(row.get("max_abs"), (int, float))}
        limits = {name: ((outputs[name].get("limits") or {}).get("max_abs")) for name in delta}
        return cls(block.get("mode", "string"), MappingProxyType(delta), MappingProxyType(limits))


# ---------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Manifest:
    recipe: RecipeRecord
    model: ModelRecord
    backend: BackendRecord
    target: TargetRecord
    network: NetworkRecord
    config: ConfigRecord
    engine: EngineRecord
    build: BuildRecord
    validation: ValidationRecord
    validate: ValidateSpec | None  # None: written before the validate: block was recorded (read the recipe file)
    cleanup_check: CleanupCheckRecord | None  # None without graph-cleanup
    promoted_from: PromotedFrom | None  # None unless a promotion rebuilt it
    precision: PrecisionRecord | None  # None for an FP32 engine (no precision stage)
    data: dict = field(repr=False, compare=False)  # the JSON object as read

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read and check manifest.json at `path`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot read {path}: {error}") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> Manifest:
        """Check the structure once; the first missing or wrongly typed field is a StoreError naming `path`."""
        if not isinstance(data, dict):
            raise _damaged(path, "not a JSON object")
        data = copy.deepcopy(data)
        top = _Object(data, "", path)
        return cls(RecipeRecord._read(top.object("recipe")), ModelRecord._read(top.object("model")),
                   BackendRecord._read(top.object("backend")), TargetRecord._read(top.object("target")),
                   NetworkRecord._read(top.object("network")), ConfigRecord._read(top.object("config")),
                   EngineRecord._read(top.object("engine")), BuildRecord._read(top.object("build")),
                   ValidationRecord._read(top.optional("validation")), _validate_spec(top),
                   CleanupCheckRecord._read(top.optional("cleanup_check")),
                   PromotedFrom._read(top.optional("promoted_from")),
                   PrecisionRecord._read(top.optional("precision")), data)

    def to_dict(self) -> dict:
        """The manifest as read, every field included (a copy: changing it changes nothing here)."""
        return copy.deepcopy(self.data)
