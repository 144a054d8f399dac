"""Export a channel to a Triton Inference Server model repository.

DIR/<name>/config.pbtxt            platform "tensorrt_plan", I/O from the manifest, cc_model_filenames: compute
                                   capability -> model.<sm>.plan; max_batch_size 0 (the batch is an ordinary dim)
                                   unless asked for (Settings: then dynamic batching, instance groups too)
DIR/<name>/<n>/model.<sm>.plan     one per GPU tag, even for one: an engine is only offered to the GPUs it runs on
DIR/<name>/<n>/provenance.json     which builds the version holds (ref, GPU tag, engine sha256)
A new numbered version is written only when the channel's engines changed since the newest one. The version
folder is staged beside the others and renamed into place whole. config.pbtxt is shared by every version and
rewritten by each export; file names depend only on the compute capability, so they stay the same from version
to version (a version folder lacks only the files of GPUs added after it).
One model folder serves one channel (Triton loads its newest version): exporting another channel, or another
recipe, into a folder that holds one is refused, naming --model-name. A repository inside the store is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, StoreError
from pipeline.files import replace_bytes, write_json
from pipeline.lifecycle import channel as channels
from pipeline.manifest import NetworkRecord, Tensors
from pipeline.store import Store
from pipeline.trt.target import parse_tag

log = logging.getLogger("pipeline.triton")

PLATFORM = "tensorrt_plan"
PROVENANCE = "provenance.json"
# TensorRT DataType (as the manifest's network I/O records it, lower-case) -> Triton DataType
DTYPES = {"float": "TYPE_FP32", "half": "TYPE_FP16", "bf16": "TYPE_BF16", "int8": "TYPE_INT8",
          "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}


@dataclass(frozen=True)
class Settings:
    """What users choose in a Triton model config. `max_batch_size` > 0: the engines' first dimension is Triton's
    batch (left out of dims; every input and output must have it dynamic, and profile 0 must take batches 1 to
    max_batch_size). `dynamic_batching` (with `max_queue_delay_us`) needs a batch dimension. `instances`: model
    instances per GPU (instance_group, KIND_GPU); None leaves Triton's default (one per GPU)."""

    max_batch_size: int = 0
    dynamic_batching: bool = False
    max_queue_delay_us: int | None = None
    instances: int | None = None


@dataclass(frozen=True)
class Export:
    model_dir: Path
    version: int
    files: dict[str, str]  # GPU tag -> engine file in the version folder
    changed: bool  # False when the newest version already held these engines
    config_changed: bool = False  # config.pbtxt differs from the one there was (new settings): Triton must reload

    def to_json(self) -> dict:
        return {"model_dir": str(self.model_dir), "config": str(self.model_dir / "config.pbtxt"),
                "version": self.version, "files": self.files, "changed": self.changed,
                "config_changed": self.config_changed}


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _tensors(kind: str, tensors: Tensors, batched: bool = False) -> list[str]:
    lines = [f"{kind} ["]
    for index, (name, spec) in enumerate(tensors.items()):
        dtype = DTYPES.get(spec["dtype"])
        if dtype is None:
            raise StoreError(f"Triton has no data type for TensorRT {spec['dtype']} ({kind} '{name}'); "
                             f"it takes {', '.join(DTYPES)}")
        comma = "," if index < len(tensors) - 1 else ""
        dims = spec["shape"][1:] if batched else spec["shape"]  # Triton adds the batch dimension itself
        # Triton refuses empty dims: a tensor with no dimension of its own (only the batch) is [1] reshaped to []
        shape = [f"    dims: [ {', '.join(str(int(d)) for d in dims)} ]"] if dims else \
            ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        lines += ["  {", f"    name: {_quote(name)}", f"    data_type: {dtype}", *shape, "  }" + comma]
    return lines + ["]"]


def config_text(name: str, inputs: Tensors, outputs: Tensors, files: dict[str, str],
                settings: Settings = Settings()) -> str:
    """config.pbtxt; `files` maps compute capability -> engine file. No default file: on a GPU whose compute
    capability is not listed the model fails to load rather than run an engine built for another GPU."""
    batched = settings.max_batch_size > 0
    lines = [f"name: {_quote(name)}", f"platform: {_quote(PLATFORM)}", f"max_batch_size: {settings.max_batch_size}"]
    lines += _tensors("input", inputs, batched) + _tensors("output", outputs, batched)
    if settings.dynamic_batching or settings.max_queue_delay_us is not None:
        delay = settings.max_queue_delay_us
        lines.append("dynamic_batching { " + (f"max_queue_delay_microseconds: {delay} " if delay is not None else "")
                     + "}")
    if settings.instances is not None:
        lines.append(f"instance_group [ {{ count: {settings.instances} kind: KIND_GPU }} ]")
    lines.append("cc_model_filenames [")
    for index, (cc, file) in enumerate(sorted(files.items(), key=lambda kv: tuple(map(int, kv[0].split("."))))):
        comma = "," if index < len(files) - 1 else ""
        lines.append(f"  {{ key: {_quote(cc)} value: {_quote(file)} }}{comma}")
    lines.append("]")
    return "\n".join(lines) + "\n"


def settings_problem(settings: Settings, engines: list[dict], network: NetworkRecord) -> str | None:
    """Why these engines cannot be served with these settings, or None."""
    if (settings.dynamic_batching or settings.max_queue_delay_us is not None) and not settings.max_batch_size:
        return "dynamic batching needs a batch dimension: give --max-batch-size N too"
    size = settings.max_batch_size
    if size <= 0:
        return None
    for kind, tensors in (("input", network.inputs), ("output", network.outputs)):
        for name, spec in tensors.items():
            if not spec["shape"] or spec["shape"][0] != -1:
                return (f"--max-batch-size {size} makes the first dimension Triton's batch, but {kind} '{name}' has "
                        f"shape {list(spec['shape'])}, whose first dimension is not dynamic; export without "
                        "--max-batch-size (max_batch_size 0: the batch is an ordinary dimension)")
    for engine in engines:
        profiles = engine["manifest"].config.profiles
        for name in network.inputs:
            ranges = profiles[0].get(name) if profiles else None
            low, high = (ranges["min"][0], ranges["max"][0]) if ranges else (None, None)
            if ranges is None or low > 1 or high < size:
                have = f"batches {low} to {high}" if ranges else "no range"
                return (f"--max-batch-size {size}: {engine['tag']}'s profile 0 gives input '{name}' {have}; "
                        f"Triton sends batches 1 to {size}: lower --max-batch-size or rebuild with that profile")
    return None


def _engines(store: Store, name: str, channel: str) -> list[dict]:
    """One record per GPU tag whose `channel` is set: the artifact, its manifest and the file name to use."""
    found = []
    for tag, ch, entry in channels.everything(store, name):
        if ch == channel:
            artifact = store.verified(channels.resolve(store, name, entry))
            parsed = parse_tag(tag)
            found.append({"tag": tag, "artifact": artifact, "manifest": artifact.manifest(),
                          "sm": parsed.sm, "cc": parsed.compute_capability, "backend": parsed.backend})
    if not found:
        raise StoreError(f"no GPU tag of '{name}' has a '{channel}' channel in store {store.root}",
                         hint=f"promote a build first: trt-pipeline promote {name}@VERSION --from TAG --to TAG "
                              f"--channel {channel}")
    return found


def _files(engines: list[dict]) -> dict[str, str]:
    """GPU tag -> model.<sm>.plan (stable across versions); several engines for one compute capability cannot be
    told apart by Triton."""
    by_cc: dict[str, dict] = {}
    for engine in engines:
        other = by_cc.setdefault(engine["cc"], engine)
        if other["manifest"].engine.sha256 != engine["manifest"].engine.sha256:
            raise StoreError(f"{other['tag']} and {engine['tag']} have different engines for compute capability "
                             f"{engine['cc']}; Triton chooses by compute capability only: export one of them")
    return {e["tag"]: f"model.{by_cc[e['cc']]['sm']}.plan" for e in engines}


def _same_io(engines: list[dict]) -> NetworkRecord:
    first = engines[0]["manifest"].network
    for engine in engines[1:]:
        network = engine["manifest"].network
        for key, mine, theirs in (("inputs", first.inputs, network.inputs),
                                  ("outputs", first.outputs, network.outputs)):
            if theirs != mine:
                raise StoreError(f"{engines[0]['tag']} and {engine['tag']} have different engine {key} "
                                 f"({mine} vs {theirs}); one Triton model needs one interface")
    return first


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit())


def export(store: Store, name: str, channel: str, repo: Path, settings: Settings = Settings(),
           model_name: str | None = None) -> Export:
    """Export `channel` of recipe `name` as Triton model `model_name` (default `name`) under `repo`."""
    model_name = name if model_name is None else model_name
    if model_name in ("", ".", "..") or "/" in model_name or "\0" in model_name:
        raise PipelineError(f"--model-name {model_name!r}: expected one folder name like '{name}-candidate' "
                            "(a Triton model is one folder of the repository: no '/', not '.' or '..', not empty)")
    model_dir = Path(repo) / model_name
    _outside_the_store(store, Path(repo), model_dir)
    engines = _engines(store, name, channel)
    _warn_rtx(engines)
    files = _files(engines)
    network = _same_io(engines)
    problem = settings_problem(settings, engines, network)
    if problem:
        raise PipelineError(problem)
    provenance = {"name": name, "channel": channel, "engines": [
        {"tag": e["tag"], "ref": e["artifact"].ref, "artifact_tag": e["artifact"].tag, "file": files[e["tag"]],
         "compute_capability": e["cc"], "engine_sha256": e["manifest"].engine.sha256} for e in engines]}
    versions = _versions(model_dir)
    _one_channel(model_dir, versions, name, channel)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create {model_dir}: {error.strerror}") from None
    if versions and _provenance(model_dir / str(versions[-1])) == provenance:
        changed, version = False, versions[-1]
    else:
        changed, version = True, (versions[-1] + 1 if versions else 1)
        _write_version(model_dir, version, engines, files, provenance)
    config = config_text(model_name, network.inputs, network.outputs, {e["cc"]: files[e["tag"]] for e in engines},
                         settings)
    config_changed = _read_config(model_dir) != config
    if config_changed:
        _write_config(model_dir, config)
    return Export(model_dir, version, files, changed, config_changed)


def _outside_the_store(store: Store, repo: Path, model_dir: Path) -> None:
    """The store owns every path under its root (a published artifact is never written to): a repository there,
    or one whose model folder would hold the store, is refused."""
    if store.overlaps(model_dir):  # a repository inside the store puts its model folder there too
        raise PipelineError(f"--repo {repo} is inside the artifact store {store.root} (or holds it); the store's "
                            "directories are written only by the store: export to a directory outside it")


def _one_channel(model_dir: Path, versions: list[int], name: str, channel: str) -> None:
    """One model folder, one channel of one recipe: Triton serves its newest version, so versions of two channels
    in one folder would hide each other (and re-exports would add duplicates)."""
    for version in versions:
        known = _provenance(model_dir / str(version)) or {}
        if (known.get("name"), known.get("channel")) != (name, channel):
            held = (f"the '{known.get('channel')}' channel of '{known.get('name')}'" if known
                    else "a version not written by trt-pipeline export")
            raise PipelineError(f"{model_dir} holds {held} (version {version}); one Triton model serves one "
                                f"channel: export '{channel}' as another model, e.g. --model-name "
                                f"{name}-{channel}, or into another --repo")


def _provenance(version_dir: Path) -> dict | None:
    try:
        return json.loads((version_dir / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None


def _write_version(model_dir: Path, version: int, engines: list[dict], files: dict[str, str], provenance: dict) -> None:
    staged = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        for engine in engines:
            dest = staged / files[engine["tag"]]
            if not dest.exists():
                shutil.copyfile(engine["artifact"].path / engine["manifest"].engine.file, dest)
                with open(dest, "rb") as handle:
                    os.fsync(handle.fileno())
        write_json(staged / PROVENANCE, provenance)
        staged.chmod(0o755)
        os.rename(staged, model_dir / str(version))
    except OSError as error:
        raise StoreError(f"cannot write {model_dir / str(version)}: {error.strerror}") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _warn_rtx(engines: list[dict]) -> None:
    rtx = [e["tag"] for e in engines if e["backend"] == "tensorrt-rtx"]
    if rtx:
        log.warning("%s: TensorRT-RTX engines load only in a Triton whose tensorrt_plan backend is built against "
                    "TensorRT-RTX (of the same version); the stock backend links full TensorRT and cannot "
                    "deserialize them. This export cannot check the server", ", ".join(rtx))


def _read_config(model_dir: Path) -> str | None:
    try:
        return (model_dir / "config.pbtxt").read_text(errors="replace")
    except OSError:  # none yet (or unreadable: written anew)
        return None


def _write_config(model_dir: Path, text: str) -> None:
    replace_bytes(model_dir / "config.pbtxt", text.encode())
