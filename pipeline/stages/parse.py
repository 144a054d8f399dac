"""parse: load the ONNX model (external data too), run the checker and shape inference, record its I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.context import Context
from pipeline.digest import file_sha256
from pipeline.errors import BuildError, PipelineError

# Above this, protobuf cannot hold the model in one message: use the path-based onnx APIs.
PROTO_LIMIT = 2**31 - 1


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


def external_files(model: Any, base: Path) -> list[Path]:
    """The external-data files a model's initializers point at, in first-use order."""
    found: dict[str, None] = {}
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                found.setdefault(entry.value)
    return [base / name for name in found]


def read_model(path: Path, weights: bool) -> Any:
    """onnx.load with a clear error for missing, unreadable or malformed files."""
    import onnx

    if not path.is_file():
        raise PipelineError(f"model file not found: {path}",
                            hint="fix model.path (it is relative to the recipe file) or generate the model first")
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as error:  # protobuf's DecodeError, missing external data, ...
        raise BuildError(f"parse: cannot read ONNX model {path}: {error}") from None


def digests(path: Path) -> dict:
    """sha256 of the model file and of every external-data file it names, and the total size."""
    header = read_model(path, weights=False)
    data = [{"path": str(p), "sha256": file_sha256(p)} for p in external_files(header, path.parent)]
    size = path.stat().st_size + sum(Path(d["path"]).stat().st_size for d in data)
    return {"path": str(path), "sha256": file_sha256(path), "external_data": data, "bytes": size}


def model_from_onnx(ctx: Context) -> None:
    import onnx

    spec, recipe = ctx.recipe.spec("parse"), ctx.recipe
    path = recipe.model_path
    record = ctx.model_record or digests(path)
    sha, size = record["sha256"], record["bytes"]
    if recipe.model_sha256 and recipe.model_sha256 != sha:
        raise BuildError(f"{recipe.where(('model', 'sha256'))}: model.sha256: pinned {recipe.model_sha256}, "
                         f"but {path} has sha256 {sha}",
                         hint="update the pin if the model change is intended")
    if spec.check:
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as error:
            first = str(error).strip().splitlines()[0]
            raise BuildError(f"parse: the ONNX checker rejects {path}: {first}") from None
    model = read_model(path, weights="graph-cleanup" in recipe.stages)
    if spec.infer_shapes and size < PROTO_LIMIT:
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
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
        info = describe(read_model(path, weights=False))
    except PipelineError as error:
        return [recipe.problem(("model", "path"), str(error))]
    shapes = lambda io: {name: v["shape"] for name, v in io.items()}  # noqa: E731
    return check_model_io(recipe, shapes(info["inputs"]), shapes(info["outputs"]))
