"""parse: load the ONNX model (external data too), run the checker and shape inference, record its I/O."""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path
from typing import Any, Iterator

from pipeline.context import Context
from pipeline.digest import file_sha256
from pipeline.errors import BuildError, PipelineError

# Above this, protobuf cannot hold the model in one message: use the path-based onnx APIs.
PROTO_LIMIT = 2**31 - 1
# Files onnx.load reads as binary protobuf (other suffixes select its text or JSON readers).
PROTOBUF_SUFFIXES = (".onnx", ".pb")
# TensorProto.DataType -> numpy dtype name, as onnx.helper.tensor_dtype_to_np_dtype names them.
_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "object",
           9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128"}
# Weights shape inference never reads: float tensors (FLOAT, FLOAT16, DOUBLE, BFLOAT16) of this many elements.
FLOAT_TYPES, BIG_ELEMENTS = frozenset({1, 10, 11, 16}), 1024
ITEMSIZE = {1: 4, 10: 2, 11: 8, 16: 2}


def big_float(tensor: Any) -> bool:
    """A float weight in raw_data with at least BIG_ELEMENTS elements (a TensorProto)."""
    return tensor.data_type in FLOAT_TYPES and tensor.HasField("raw_data") and math.prod(tensor.dims) >= BIG_ELEMENTS


# ---------------------------------------------------------------- the model's header, without onnx or weights
# `check`, the skip decision and the source key need only the I/O, opset and external-data names. Reading them
# straight from the protobuf wire format skips importing onnx and parsing every weight; anything unexpected
# falls back to onnx.load, so errors and results are onnx's own.


class _Unsure(Exception):
    """The quick reader met something it does not handle: onnx.load decides instead."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        result, pos, shift = result | (byte & 0x7F) << shift, pos + 1, shift + 7
        if not byte & 0x80:
            if result >> 64:
                break
            return result, pos
    raise _Unsure


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: an int for a varint, a memoryview otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            size, pos = _varint(buf, pos) if wire == 2 else (8 if wire == 1 else 4, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise _Unsure  # groups (unused by ONNX) and invalid wire types
        if number == 0 or pos > len(buf):
            raise _Unsure
        yield number, wire, value


def _collect(buf: memoryview, wanted: dict[int, int]) -> dict[int, list]:
    """Values of the wanted fields (number -> wire type); other fields are skipped without being read."""
    found: dict[int, list] = {number: [] for number in wanted}
    for number, wire, value in _fields(buf):
        if number in wanted:
            if wire != wanted[number]:
                raise _Unsure
            found[number].append(value)
    return found


def _one(values: list, default: Any = b"") -> Any:
    if len(values) > 1:  # protobuf merges repeated singular fields: leave that to onnx
        raise _Unsure
    return values[0] if values else default


def _text(value: Any) -> str:
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        raise _Unsure from None


def _int64(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def _value_info(buf: memoryview) -> tuple[str, dict]:
    """(name, {dtype, shape}) of a ValueInfoProto, as _io() reports it."""
    value = _collect(buf, {1: 2, 2: 2})
    kinds = _collect(_one(value[2]), {1: 2, 4: 2, 5: 2, 7: 2, 8: 2, 9: 2})  # TypeProto's oneof
    if any(kinds[number] for number in (4, 5, 7, 8, 9)):
        raise _Unsure
    tensor = _collect(_one(kinds[1]), {1: 0, 2: 2})
    elem = _one(tensor[1], 0)
    if elem and elem not in _DTYPES:
        raise _Unsure
    dims: list = []
    for dim in _collect(_one(tensor[2]), {1: 2})[1]:
        last: Any = "?"
        for number, wire, item in _fields(dim):  # a oneof: the last of dim_value, dim_param wins
            if (number, wire) == (1, 0):
                last = _int64(item)
            elif (number, wire) == (2, 2):
                last = _text(item) or "?"
            elif number in (1, 2):
                raise _Unsure
        dims.append(last)
    return _text(_one(value[1])), {"dtype": _DTYPES[elem] if elem else "unknown", "shape": dims}


def _quick_header(buf: memoryview) -> dict:
    model = _collect(buf, {7: 2, 8: 2})
    graph = _collect(_one(model[7]), {5: 2, 11: 2, 12: 2})
    opset = None
    for entry in model[8]:
        found = _collect(entry, {1: 2, 2: 0})
        if opset is None and _text(_one(found[1])) in ("", "ai.onnx"):
            opset = _int64(_one(found[2], 0))
    names: set[str] = set()
    locations: dict[str, None] = {}
    for init in graph[5]:
        found = _collect(init, {8: 2, 13: 2})
        names.add(_text(_one(found[8])))
        for entry in found[13]:
            pair = _collect(entry, {1: 2, 2: 2})
            if _text(_one(pair[1])) == "location":
                locations.setdefault(_text(_one(pair[2])))
    inputs = dict(_value_info(v) for v in graph[11])
    return {"inputs": {name: io for name, io in inputs.items() if name not in names},
            "outputs": dict(_value_info(v) for v in graph[12]), "opset": opset, "external_data": list(locations)}


def header(path: Path) -> dict:
    """describe() of the model plus the names of its external-data files, in first-use order; no weights read."""
    if path.suffix in PROTOBUF_SUFFIXES:
        try:
            with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                view = memoryview(data)
                try:
                    return _quick_header(view)
                except _Unsure:
                    pass
                finally:
                    view.release()
        except (OSError, ValueError, BufferError):  # missing or empty file: onnx.load says what is wrong
            pass
    model = read_model(path, weights=False)
    return {**describe(model), "external_data": external_names(model)}


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
    """The external-data locations a model's initializers name, in first-use order."""
    found: dict[str, None] = {}
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                found.setdefault(entry.value)
    return list(found)


def external_files(model: Any, base: Path) -> list[Path]:
    """The external-data files a model's initializers point at, in first-use order."""
    return [base / name for name in external_names(model)]


def read_model(path: Path, weights: bool, data: bytes | None = None) -> Any:
    """onnx.load with a clear error for missing, unreadable or malformed files. `data`: the file's bytes, already
    read (binary protobuf only), parsed as onnx.load would parse them."""
    import onnx

    if not path.is_file():
        raise PipelineError(f"model file not found: {path}",
                            hint="fix model.path (it is relative to the recipe file) or generate the model first")
    try:
        if data is None:
            return onnx.load(str(path), load_external_data=weights)
        model = onnx.load_from_string(data)
    except Exception as error:  # protobuf's DecodeError, missing external data, ...
        raise BuildError(f"parse: cannot read ONNX model {path}: {error}") from None
    if weights:
        load_weights(path, model)
    return model


def load_weights(path: Path, model: Any) -> None:
    """The external data of `model` (read from `path`) into memory, as onnx.load does."""
    import onnx

    try:
        onnx.load_external_data_for_model(model, os.path.dirname(str(path)))
    except Exception as error:  # missing or short external-data files
        raise BuildError(f"parse: cannot read ONNX model {path}: {error}") from None


def digests(path: Path) -> dict:
    """sha256 of the model file and of every external-data file it names, and the total size."""
    data = [{"path": str(path.parent / name), "sha256": file_sha256(path.parent / name)}
            for name in header(path)["external_data"]]
    size = path.stat().st_size + sum(Path(d["path"]).stat().st_size for d in data)
    return {"path": str(path), "sha256": file_sha256(path), "external_data": data, "bytes": size}


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes when onnx.load would parse it as binary protobuf; None when it exists but is not."""
    if not path.is_file() or path.suffix not in PROTOBUF_SUFFIXES:
        return None
    try:
        return path.read_bytes()
    except OSError:
        return None  # onnx.load reports it


def _embedded(model: Any) -> bool:
    """No tensor (initializers, attributes, subgraphs) in external data: the checker needs no directory."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return not any(uses_external_data(tensor) for tensor in _get_all_tensors(model))


def _check(path: Path, model: Any, data: bytes | None) -> None:
    """The ONNX checker. On bytes already read when every tensor is inside the file: the same checks as on the
    path, without the slow second read; on the path otherwise, which also checks the external-data files."""
    import onnx

    try:
        onnx.checker.check_model(data if data is not None and _embedded(model) else str(path))
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0]
        raise BuildError(f"parse: the ONNX checker rejects {path}: {first}") from None


def infer_shapes(model: Any) -> Any:
    """onnx.shape_inference.infer_shapes(model, data_prop=True), without sending the weights through it.

    Shape inference reads values only of integer (shape) tensors and of tiny float ones (Resize scales, Range
    bounds): big float initializers are lifted out while it runs and put back into the result, byte for byte.
    The model passed in is consumed: its big float initializers are left empty.
    """
    import onnx

    lifted: dict[int, bytes] = {}
    for index, init in enumerate(model.graph.initializer):
        if big_float(init):
            lifted[index] = init.raw_data
            init.ClearField("raw_data")
    inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    initializers = inferred.graph.initializer
    if len(initializers) != len(model.graph.initializer) or any(
            initializers[i].name != model.graph.initializer[i].name for i in lifted):
        raise BuildError("parse: shape inference changed the initializers; this is a bug")
    for index in list(lifted):
        initializers[index].raw_data = lifted.pop(index)
    return inferred


def model_from_onnx(ctx: Context) -> None:
    spec, recipe = ctx.recipe.spec("parse"), ctx.recipe
    path = recipe.model_path
    record = ctx.model_record or digests(path)
    sha, size = record["sha256"], record["bytes"]
    if recipe.model_sha256 and recipe.model_sha256 != sha:
        raise BuildError(f"{recipe.where(('model', 'sha256'))}: model.sha256: pinned {recipe.model_sha256}, "
                         f"but {path} has sha256 {sha}",
                         hint="update the pin if the model change is intended")
    # The file is read once. Weights in external data are loaded for graph-cleanup, unless there are more than
    # protobuf can hold: graph-cleanup then keeps them on disk (path-based), and so does TensorRT's parser.
    weights = "graph-cleanup" in recipe.stages and size < PROTO_LIMIT
    data = _read_bytes(path)
    if data is None:  # text formats: onnx.load reads the file itself
        if spec.check:
            _check(path, None, None)
        model = read_model(path, weights)
    else:
        model = read_model(path, weights=False, data=data)
        if spec.check:
            _check(path, model, data)
        del data
        if weights:
            load_weights(path, model)
    if spec.infer_shapes and size < PROTO_LIMIT:
        model = infer_shapes(model)
    ctx.model = model
    ctx.onnx_path = path
    ctx.cleaned_sha256 = sha
    ctx.model_record = {**record, **describe(model)}
    ctx.log.debug("parse: %s opset %s, inputs %s, outputs %s", path.name, ctx.model_record["opset"],
                  ctx.model_record["inputs"], ctx.model_record["outputs"])


def preflight(recipe: Any) -> list[str]:
    """Cheap checks against the model's declared I/O (no weights read): used by `check` and before a build."""
    from pipeline.recipe import check_model_io

    path = recipe.model_path
    if not path.is_file():
        return [recipe.problem(("model", "path"), f"model file not found: {path} (paths are relative to the recipe)")]
    try:
        info = header(path)
    except PipelineError as error:
        return [recipe.problem(("model", "path"), str(error))]
    shapes = lambda io: {name: v["shape"] for name, v in io.items()}  # noqa: E731
    return check_model_io(recipe, shapes(info["inputs"]), shapes(info["outputs"]))
