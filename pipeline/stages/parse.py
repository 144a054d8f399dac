"""parse: load the ONNX model (external data too), run the checker and shape inference, record its I/O."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import userfiles
from pipeline.digest import file_sha256, model_sha256
from pipeline.errors import BuildError, PipelineError, RecipeError
from pipeline.stages import calibration
from pipeline.stages.context import Context
from pipeline.stages.stage import Stage


@dataclass(frozen=True)
class ParseSpec:
    check: bool = True
    infer_shapes: bool = True


# Above this, protobuf cannot hold the model in one message: use the path-based onnx APIs.
PROTO_LIMIT = 2**31 - 1
READ = "model_read"  # the background job that checks the bytes parse read against the model's sha256
CHECKER = "onnx_checker"  # the background job that runs the ONNX checker on the model parse read
# Files onnx.load reads as binary protobuf (other suffixes select its text or JSON readers).
PROTOBUF_SUFFIXES = (".onnx", ".pb")
# Weights shape inference never reads: float tensors (FLOAT, FLOAT16, DOUBLE, BFLOAT16) of this many elements.
FLOAT_TYPES, BIG_ELEMENTS = frozenset({1, 10, 11, 16}), 1024


def big_float(tensor: Any) -> bool:
    """A float weight in raw_data with at least BIG_ELEMENTS elements (a TensorProto)."""
    return tensor.data_type in FLOAT_TYPES and tensor.HasField("raw_data") and math.prod(tensor.dims) >= BIG_ELEMENTS


def header(path: Path) -> dict:
    """describe() of the model plus the names of its external-data files, in first-use order; no weights read.
    Parsing a model with embedded weights costs ~0.3 s per 100 MB, and a build asks twice (model checks, hashes):
    the answer is remembered for as long as the file is unchanged (same inode, size and mtime). Do not mutate it."""
    try:
        stat = path.stat()
    except OSError:
        return _header(path, 0, 0, 0)  # read_model says what is wrong
    return _header(path, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _header(path: Path, inode: int, size: int, mtime_ns: int) -> dict:
    return header_of(read_model(path, weights=False))


def header_of(model: Any) -> dict:
    """header() of a ModelProto at hand."""
    return {**describe(model), "external_data": external_names(model)}


@dataclass(frozen=True)
class Loaded:
    """A model file read once, before the build's stages: its bytes, their sha256, the ModelProto parsed from
    them (external data not read) and its header(). The hashes and checks use it, and parse takes it over."""
    data: bytes
    sha256: str
    model: Any
    header: dict


def load(path: Path) -> Loaded | None:
    """The model at `path` read, hashed and parsed once; None when parse would not read it as bytes (its text
    formats) or protobuf cannot hold it."""
    if path.suffix not in PROTOBUF_SUFFIXES or path.stat().st_size >= PROTO_LIMIT:
        return None
    # The read and the hash let go of the GIL: the file is read while onnx is imported (the first time, ~0.1 s),
    # and hashed while protobuf parses it.
    with ThreadPoolExecutor(1, thread_name_prefix="model-read") as worker:
        read = worker.submit(_read, path)
        import onnx  # noqa: F401 - meanwhile

        data = read.result()
        digest = worker.submit(_sha256, data)
        model = read_model(path, weights=False, data=data)
        return Loaded(data, digest.result(), model, header_of(model))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _io(values: Any) -> dict[str, dict]:
    import onnx

    out = {}
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
        out[value.name] = {"dtype": dtype, "shape": dims}
    return out


def describe(model: Any) -> dict:
    """Inputs (without initializers), outputs and default-domain opset of a ModelProto."""
    initializers = {init.name for init in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "inputs": _io(v for v in model.graph.input if v.name not in initializers),
        "outputs": _io(model.graph.output),
        "opset": opset,
    }


def external_names(model: Any) -> list[str]:
    """The external-data locations a model's tensors (initializers, attributes, subgraphs) name, in first-use
    order."""
    from onnx.external_data_helper import _get_all_tensors

    found: dict[str, None] = {}
    for tensor in _get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                found.setdefault(entry.value)
    return list(found)


def model_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a model: missing, not a regular file (a FIFO blocks the reader, /dev/zero
    never ends, a directory or a symlink loop is no model), or empty; None when it can."""
    kind = userfiles.problem(path)
    if kind == "missing":
        return f"model file not found: {path}"
    if kind:
        return f"expected the model to be a regular file, got {kind}: {path}"
    if path.stat().st_size == 0:
        return f"model file is empty: {path}; export the model again"
    return None


def require_model(path: Path) -> None:
    """model_problem as a PipelineError with what to do."""
    problem = model_problem(path)
    if problem:
        raise PipelineError(problem, hint="fix model.path (it is relative to the recipe file) or generate the "
                                          "model first")


def external_data_problems(path: Path, names: list[str]) -> list[str]:
    """The external-data locations of the model at `path` that do not name a regular file inside its folder
    (after symlinks): '/dev/zero', '../../x', a FIFO, a missing file. Checked before anything reads them."""
    folder = path.parent.resolve()
    problems = []
    for name in names:
        what = _external_problem(folder, name)
        if what:
            problems.append(f"external data '{name}' of {path}: expected a regular file inside {folder}, got {what}")
    return problems


def _external_problem(folder: Path, name: str) -> str | None:
    try:
        real = (folder / name).resolve()  # an absolute name replaces the folder
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return "a symlink loop"
    if not real.is_relative_to(folder):
        return f"a path outside it ({real}); external data must sit in the model's folder"
    kind = userfiles.problem(real)
    return "no such file; copy it next to the model, or export the model again" if kind == "missing" else kind


def require_external_data(path: Path, names: list[str]) -> None:
    """external_data_problems as one BuildError (the first problem, and how many more)."""
    problems = external_data_problems(path, names)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BuildError(f"parse: {problems[0]}{more}")


def read_model(path: Path, weights: bool, data: bytes | None = None) -> Any:
    """onnx.load with a clear error for missing, unreadable, malformed or non-regular files. `data`: the file's
    bytes, already read (binary protobuf only), parsed as onnx.load would parse them."""
    import onnx

    require_model(path)
    try:
        data = _read_bytes(path) if data is None else data
        model = onnx.load(str(path), load_external_data=False) if data is None else onnx.load_from_string(data)
    except Exception as error:  # protobuf's DecodeError, an unreadable file, ...
        raise BuildError(f"parse: cannot read ONNX model {path}: {error}") from None
    if weights:
        load_weights(path, model)
    return model


def load_weights(path: Path, model: Any) -> None:
    """The external data of `model` (read from `path`) into memory, as onnx.load does; only regular files inside
    the model's folder are read."""
    import onnx

    require_external_data(path, external_names(model))
    try:
        onnx.load_external_data_for_model(model, os.path.dirname(str(path)))
    except Exception as error:  # missing or short external-data files
        raise BuildError(f"parse: cannot read ONNX model {path}: {error}") from None


def digests(path: Path, sha256: str | None = None, hasher: Callable[[Path], str] = file_sha256,
            info: Mapping[str, Any] | None = None) -> dict:
    """sha256 of the model file (pass it when already known) and of every external-data file it names, and the
    total size. `hasher`: e.g. Store.file_sha256, which remembers the hashes of unchanged files. `info`: the
    model's header when at hand."""
    names = (info or header(path))["external_data"]
    require_external_data(path, names)
    data = [{"path": str(path.parent / name), "sha256": hasher(path.parent / name)} for name in names]
    return {"path": str(path), "sha256": sha256 or hasher(path), "external_data": data,
            "bytes": model_size(path, names)}


def model_size(path: Path, names: list[str]) -> int:
    """The bytes of a model file and of its external-data files `names` (those that exist): what decides whether
    parse loads the weights (under PROTO_LIMIT) or leaves them on disk."""
    return sum(file.stat().st_size for file in [path, *(path.parent / name for name in names)] if file.is_file())


def check_pin(recipe: Any, sha256: str) -> None:
    """model.sha256, when the recipe pins it, must be the model file's."""
    if recipe.model_sha256 and recipe.model_sha256 != sha256:
        raise RecipeError([recipe.problem(("model", "sha256"), f"pinned {recipe.model_sha256}, but "
                                                               f"{recipe.model_path} has sha256 {sha256}")],
                          hint="update the pin if the model change is intended")


def _read(path: Path) -> bytes | None:
    """_read_bytes of a model file, with what is wrong with it as a PipelineError or BuildError."""
    require_model(path)
    try:
        return _read_bytes(path)
    except OSError as error:
        raise BuildError(f"parse: cannot read ONNX model {path}: {error.strerror}") from None


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes when onnx.load would parse it as binary protobuf (a regular file only: a FIFO swapped in
    cannot block the read); None for its text formats. Raises OSError."""
    return userfiles.read_regular(path) if path.suffix in PROTOBUF_SUFFIXES else None


def _embedded(model: Any) -> bool:
    """No tensor (initializers, attributes, subgraphs) in external data: the checker needs no directory."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return not any(uses_external_data(tensor) for tensor in _get_all_tensors(model))


def _check(path: Path, data: bytes | None) -> None:
    """The ONNX checker. On the file's bytes when given (already read, and every tensor inside them): the same
    checks as on the path, without a second read; on the path otherwise, which also checks the external-data
    files."""
    import onnx

    try:
        onnx.checker.check_model(data if data is not None else str(path))
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0]
        raise BuildError(f"parse: the ONNX checker rejects {path}: {first}") from None


def infer_shapes(model: Any) -> Any:
    """onnx.shape_inference.infer_shapes(model, data_prop=True), without sending the weights through it.

    Shape inference reads values only of integer (shape) tensors and of tiny float ones (Resize scales, Range
    bounds): it runs on a copy of the model whose big float initializers are stubs (name, type and dims, no
    data), and what it infers is put back into `model` (returned), whose weights are not copied.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(_stubbed(model), check_type=False, strict_mode=False, data_prop=True)
    names = [init.name for init in inferred.graph.initializer]
    if names != [init.name for init in model.graph.initializer]:
        raise BuildError("parse: shape inference changed the initializers; this is a bug")
    inferred.graph.ClearField("initializer")
    _replace(model.graph, inferred.graph, keep="initializer")
    inferred.ClearField("graph")
    _replace(model, inferred, keep="graph")
    return model


def _stubbed(model: Any) -> Any:
    """A copy of a ModelProto whose big float initializers (big_float) are stubs: name, type, dims, empty data."""
    copy = _copy_except(model, "graph")
    graph = copy.graph
    graph.CopyFrom(_copy_except(model.graph, "initializer"))
    for init in model.graph.initializer:
        if big_float(init):
            graph.initializer.add(name=init.name, dims=init.dims, data_type=init.data_type, raw_data=b"")
        else:
            graph.initializer.add().CopyFrom(init)
    return copy


def _copy_except(message: Any, skip: str) -> Any:
    """A copy of a protobuf message without its field `skip` (which is never read, let alone copied)."""
    from google.protobuf.message import Message

    copy = type(message)()
    for field, value in message.ListFields():
        if field.name == skip:
            continue
        if isinstance(value, Message):
            getattr(copy, field.name).CopyFrom(value)
        elif isinstance(value, (bytes, str, int, float)):
            setattr(copy, field.name, value)
        else:  # a repeated field
            getattr(copy, field.name).extend(value)
    return copy


def _replace(message: Any, other: Any, keep: str) -> None:
    """Every field of `message` but `keep` becomes `other`'s (which has no `keep`)."""
    for field, _ in message.ListFields():
        if field.name != keep:
            message.ClearField(field.name)
    message.MergeFrom(other)


def model_from_onnx(ctx: Context) -> None:
    spec, recipe = ctx.recipe.spec("parse"), ctx.recipe
    path = recipe.model_path
    record = ctx.model_record or digests(path)
    sha, size = record["sha256"], record["bytes"]
    check_pin(recipe, sha)
    # The file is read once. Weights in external data are loaded for graph-cleanup, unless there are more than
    # protobuf can hold: graph-cleanup then keeps them on disk (path-based), and so does TensorRT's parser.
    weights = "graph-cleanup" in recipe.stages and size < PROTO_LIMIT
    if ctx.model is not None:  # read, hashed and parsed once already (Loaded): the bytes hashed are these
        model, data, ctx.model_bytes = ctx.model, ctx.model_bytes, None
    else:
        data = _read(path)
        if data is not None:  # the bytes parsed are the bytes hashed: checked beside the parse, joined before publishing
            ctx.background.start(READ, _same_bytes, path, data, sha)
        model = read_model(path, weights=False, data=data)  # text formats (data None): onnx.load reads the file
    require_external_data(path, external_names(model))  # before the checker or anything else reads them
    embedded = data if data is not None and _embedded(model) else None
    if spec.check:
        # The checker's C++ holds the GIL (~0.1 s per 100 MB): it runs while TensorRT parses, which does not, and
        # network-flag waits for its verdict before it goes on.
        ctx.background.start(CHECKER, _check, path, embedded, gated=True)
    # graph-cleanup writes them as the cleaned model when its passes change nothing (every weight inside the file)
    ctx.model_bytes = embedded if "graph-cleanup" in recipe.stages else None
    del data, embedded
    if weights:
        load_weights(path, model)
    if spec.infer_shapes and size < PROTO_LIMIT:
        model = infer_shapes(model)
    ctx.model = model
    ctx.onnx_path = path
    ctx.cleaned_sha256 = model_sha256(sha, [data["sha256"] for data in record["external_data"]])
    ctx.model_record = {**record, **describe(model)}
    ctx.log.debug("parse: %s opset %s, inputs %s, outputs %s", path.name, ctx.model_record["opset"],
                  ctx.model_record["inputs"], ctx.model_record["outputs"])


def _same_bytes(path: Path, data: bytes, sha256: str) -> None:
    """The model's bytes, as parse read them, are the ones hashed before the build (the source key, the pin, the
    manifest's model.sha256): a model rewritten meanwhile fails the build instead of being built under another
    file's hash."""
    if _sha256(data) != sha256:
        raise BuildError(f"parse: {path} changed while the build read it (its sha256 is no longer {sha256[:12]}...)",
                         hint="run the build again once the model file is no longer being written")


def preflight(recipe: Any, sha256: str | None = None, io: bool = True, info: Mapping[str, Any] | None = None) -> list[str]:
    """Cheap checks against the model's declared I/O (no weights read): used by `check` and before a build.
    `sha256`: the model file's, when the caller has hashed it already (the pin is checked against it). `io`:
    False when the recipe's stages that name inputs and outputs are damaged: only the model file itself is
    checked (readable, a model, its external data, its pin). `info`: the model's header when at hand."""
    path = recipe.model_path
    problem = model_problem(path)
    if problem:
        relative = " (paths are relative to the recipe)" if problem.startswith("model file not found") else ""
        return [recipe.problem(("model", "path"), problem + relative)]
    try:
        info = info or header(path)
        missing = external_data_problems(path, info["external_data"])
        if missing:
            return [recipe.problem(("model", "path"), line) for line in missing]
        check_pin(recipe, sha256 or file_sha256(path))
    except RecipeError as error:  # the pin: already located at model.sha256
        return error.problems
    except PipelineError as error:
        return [recipe.problem(("model", "path"), str(error))]
    if not io:
        return []
    shapes = lambda io: {name: v["shape"] for name, v in io.items()}  # noqa: E731
    return recipe.io_problems(shapes(info["inputs"]), shapes(info["outputs"])) + \
        calibration.recipe_problems(recipe, info["inputs"], list(info["outputs"]))


def _freeze(body: Mapping[str, Any], base: Path) -> ParseSpec:
    return ParseSpec(**body)


STAGE = Stage("parse", ParseSpec, _freeze, model_from_onnx)
