"""precision: the graph in reduced precision, for strongly typed networks (TensorRT-RTX, TensorRT >= 10 with
STRONGLY_TYPED), which take precision from the ONNX graph's types.

- fp16: onnxruntime's float16 converter (`keep_io_types` unless `io_types: convert`), `exclude` kept in FP32.
- bf16: the same conversion, then every FLOAT16 becomes BFLOAT16, weights rounded from their FP32 values.
- int8: onnxruntime's quantize_static into explicit Q/DQ (symmetric, per-channel weights, biases left in FP32:
  TensorRT's parser refuses int32 bias DequantizeLinear), calibrated on the recipe's data.
- fp8: the int8 Q/DQ graph with FP8 E4M3 types and scales (amax / 448), at opset 19.

The converters are in pipeline.stages.conversion. The converted graph goes to the next stages instead of the cleaned
one; a check beside the build compares it with the FP32 original under ONNX Runtime (pipeline.validate.precision,
injected as `ctx.precision_checker`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline.digest import file_sha256, model_sha256, plain
from pipeline.errors import BuildError
from pipeline.files import sync
from pipeline.stages import calibration, conversion
from pipeline.stages.context import Context
from pipeline.stages.graph_cleanup import WRITE, cleaned_files
from pipeline.stages.parse import PROTO_LIMIT, describe
from pipeline.stages.stage import Stage
from pipeline.trt.backend import Backend, installed_version
from pipeline.trt.target import Target

FLOATS, QUANTIZED = ("fp16", "bf16"), ("int8", "fp8")
CHECK = "precision_check"  # the name of its background job (pipeline.background)
CHECK_SAMPLES = 32  # the check runs on at most this many samples of the calibration data
CHECK_RANDOM = 4  # fp16/bf16 without calibration data: seeded random samples for the check
# The oldest GPU that has the type: TensorRT-RTX refuses "HW-specific datatypes" for older targets (measured).
MIN_COMPUTE = {"bf16": (8, 0), "fp8": (8, 9)}
TRT_TYPES = {"fp16": "HALF", "bf16": "BF16", "int8": "INT8", "fp8": "FP8"}


@dataclass(frozen=True)
class Limits:
    """What the numerics check accepts for one output (None: not checked). max_rel is the max abs error over the
    output's largest FP32 magnitude; top-1 agreement is measured on every [samples, N] output but checked only where
    the recipe sets min_top1 (a classifier's logits: on other outputs, and on a few samples, near-ties flip it)."""
    min_cosine: float | None = None
    min_top1: float | None = None
    max_abs: float | None = None
    max_rel: float | None = None


DEFAULT_LIMITS = {"fp16": Limits(0.999), "bf16": Limits(0.995), "int8": Limits(0.98), "fp8": Limits(0.95),
                  "fp32": Limits()}


@dataclass(frozen=True)
class Check:
    limits: Limits = Limits()
    outputs: Mapping[str, Limits] = field(default_factory=lambda: MappingProxyType({}))

    def limit(self, output: str) -> Limits:
        return self.outputs.get(output, self.limits)


@dataclass(frozen=True)
class Exclude:
    nodes: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Random:
    samples: int = 8
    seed: int = 0


@dataclass(frozen=True)
class Calibration:
    data: Path | None = None  # an .npz file or a directory of INPUT.npy, resolved against the recipe's folder
    random: Random | None = None  # seeded random data instead (warned about)
    method: str = "minmax"  # minmax | entropy | percentile
    percentile: float = 99.999


@dataclass(frozen=True)
class PrecisionSpec:
    mode: str = "fp32"  # fp16 | bf16 | int8 | fp8; fp32 (no conversion) when the recipe has no precision stage
    io_types: str = "keep"  # keep: inputs and outputs stay FP32 | convert: fp16/bf16 I/O
    exclude: Exclude = Exclude()  # kept in FP32
    calibration: Calibration | None = None
    check: Check = Check()


# ---------------------------------------------------------------- recipe: freeze, problems, keys


def _limits(body: Mapping[str, Any], base: Limits) -> Limits:
    return replace(base, **{key: body[key] for key in ("min_cosine", "min_top1", "max_abs", "max_rel") if key in body})


def _freeze(body: Mapping[str, Any], base: Path) -> PrecisionSpec:
    mode = body.get("mode", "fp32")
    calibration = body.get("calibration")
    if calibration is not None:
        data, rand = calibration.get("data"), calibration.get("random")
        calibration = Calibration(data=(base / data).resolve() if data else None,
                                  random=Random(**rand) if rand is not None else None,
                                  method=calibration.get("method", "minmax"),
                                  percentile=calibration.get("percentile", 99.999))
    checks = body.get("check") or {}
    limits = _limits(checks, DEFAULT_LIMITS[mode])
    outputs = {name: _limits(limit, limits) for name, limit in (checks.get("outputs") or {}).items()}
    exclude = body.get("exclude") or {}
    return PrecisionSpec(mode=mode, io_types=body.get("io_types", "keep"), calibration=calibration,
                         exclude=Exclude(tuple(exclude.get("nodes", ())), tuple(exclude.get("op_types", ()))),
                         check=Check(limits, MappingProxyType(outputs)))


def recipe_problems(recipe: Any) -> list[str]:
    """What the schema cannot say: int8/fp8 need calibration data, options that do not fit the mode."""
    if "precision" not in recipe.stages:
        return []
    spec: PrecisionSpec = recipe.spec("precision")
    at = lambda *rest: recipe.stage_path("precision", *rest)  # noqa: E731
    out = []
    cal = spec.calibration
    if spec.mode in QUANTIZED and cal is None:
        out.append(recipe.problem(at("mode"), f"{spec.mode} quantization needs calibration data: add 'calibration: "
                                              "{data: FILE.npz}' (one array per model input, or a directory of "
                                              "INPUT.npy files), or 'calibration: {random: {samples: 8}}' for "
                                              "seeded random data (warned about: scales fitted to noise)"))
    if cal is not None and (cal.data is None) == (cal.random is None):
        out.append(recipe.problem(at("calibration"), "give calibration data as exactly one of 'data: FILE' and "
                                                     "'random: {samples: N, seed: S}'"))
    if spec.mode in QUANTIZED and spec.io_types != "keep":
        out.append(recipe.problem(at("io_types"), f"{spec.mode} keeps FP32 inputs and outputs (quantization happens "
                                                  "inside the graph); remove io_types"))
    if spec.mode in FLOATS and cal is not None and cal.method != "minmax":
        out.append(recipe.problem(at("calibration", "method"), f"{spec.mode} is not calibrated (its calibration "
                                                               "data only feeds the numerics check); remove method"))
    return out


def key_settings(spec: PrecisionSpec) -> dict:
    """The precision settings that shape the engine, for the build and source keys: calibration data by sha256,
    the converter by name and version; the check's limits are left out (they do not change the engine), and so is
    fp16/bf16 calibration data (it only feeds the check)."""
    settings = plain(spec)
    del settings["check"]
    cal = spec.calibration
    if spec.mode in FLOATS or cal is None:
        settings["calibration"] = None
    elif cal.data is not None:
        settings["calibration"]["data"] = calibration.data_sha256(cal.data)
    settings["converter"] = converter(spec.mode)
    return settings


def converter(mode: str) -> dict:
    return {"name": "onnxruntime", "version": installed_version("onnxruntime"),
            "tool": "float16.convert_float_to_float16" if mode in FLOATS else "quantization.quantize_static"}


def target_problems(recipe: Any, backend: Backend, targets: Sequence[Target]) -> list[str]:
    """The precision a backend or a target does not have, and weakly typed full-TensorRT builds without the
    builder flag that lets them run in reduced precision. Checked before any work."""
    if "precision" not in recipe.stages:
        return []
    spec: PrecisionSpec = recipe.spec("precision")
    at = recipe.stage_path("precision", "mode")
    out = []
    if backend.member("DataType", TRT_TYPES[spec.mode]) is None:
        out.append(recipe.problem(at, f"{backend.label()} has no {spec.mode} (DataType.{TRT_TYPES[spec.mode]})"))
    need = MIN_COMPUTE.get(spec.mode)
    for target in targets:
        have = tuple(int(part) for part in target.compute_capability.split(".")[:2])
        if need and have < need:
            out.append(recipe.problem(at, f"{spec.mode} needs compute capability >= {need[0]}.{need[1]}; target "
                                          f"{target.name} is {target.compute_capability} (TensorRT-RTX refuses "
                                          f"{spec.mode} types for it); build it in another precision"))
    flags = recipe.spec("network-flag")
    weak = not backend.is_rtx and backend.major < 11 and not flags.strongly_typed
    if weak and spec.mode not in recipe.spec("serialize").flags:
        out.append(recipe.problem(at, f"a weakly typed {backend.label()} network runs {spec.mode} layers only with "
                                      f"the builder flag: set network-flag.strongly_typed: true (precision from the "
                                      f"graph's types), or add '{spec.mode}' to serialize.flags"))
    return out


def flag_problem(backend: Backend, flag: str) -> str | None:
    """Why a precision builder flag (fp16, bf16, int8, fp8) is missing, version-aware; None for other flags."""
    if flag not in TRT_TYPES:
        return None
    typed = "TensorRT-RTX" if backend.is_rtx else f"TensorRT {backend.major}" if backend.major >= 11 else None
    if typed is None:
        return None
    return (f"{backend.label()} has no builder flag {flag.upper()}: {typed} is strongly typed and takes precision "
            f"from the ONNX graph's types; add a precision stage after graph-cleanup: '- precision: {{mode: {flag}}}'")


# ---------------------------------------------------------------- the stage


def file_name(mode: str) -> str:
    return f"model.{mode}.onnx"


def reduced_model_from_model(ctx: Context) -> None:
    import onnx

    spec: PrecisionSpec = ctx.recipe.spec("precision")
    started = time.perf_counter()
    ctx.background.result(WRITE)  # the cleaned model's file, when graph-cleanup writes it beside the build
    source = ctx.onnx_path
    if spec.mode in FLOATS and _bytes(source) >= PROTO_LIMIT:
        raise BuildError(f"precision: {spec.mode} conversion of a model with more than 2 GiB of weights is not "
                         "supported: onnxruntime's float16 converter holds the model in one protobuf message",
                         hint="convert the model before the pipeline (e.g. export it in FP16)")
    model = onnx.load(str(source), load_external_data=spec.mode in FLOATS)  # the quantizer reads the file itself
    inputs = describe(model)["inputs"]
    _check_names(ctx, spec, model)
    arrays, data = _data(ctx, spec, inputs)
    path = ctx.scratch / file_name(spec.mode)
    with conversion.converter_logs(ctx.log):
        if spec.mode in FLOATS:
            converted = conversion.floats(model, spec)
        else:
            del model
            converted = conversion.quantized(source, path, spec, inputs, arrays)
        if spec.mode != "int8":  # quantize_static wrote the int8 graph itself
            conversion.save(converted, path)
    seconds = round(time.perf_counter() - started, 3)
    ctx.precision_record = {
        "mode": spec.mode, "io_types": spec.io_types, "converter": converter(spec.mode),
        "exclude": {"nodes": list(spec.exclude.nodes), "op_types": list(spec.exclude.op_types)},
        "calibration": data, "file": path.name, "sha256": _sha256(path), "bytes": _bytes(path),
        "source_bytes": _bytes(source), "nodes": _count_ops(converted), "seconds": seconds,
    }
    ctx.log.info("precision: %s graph in %.2fs (%s of weights, was %s)", spec.mode, seconds,
                 _mb(ctx.precision_record["bytes"]), _mb(ctx.precision_record["source_bytes"]))
    limit = {name: array[:CHECK_SAMPLES * _static_batch(inputs[name])] if getattr(array, "ndim", 0) else array
             for name, array in arrays.items()}
    models = {"source": source, "original": ctx.recipe.model_path, "converted": path}
    ctx.background.start(CHECK, ctx.precision_checker(ctx.recipe, models, ctx.model_record, inputs, limit, ctx.log,
                                                      ctx.background.stopping))
    ctx.background.start("precision_model_synced", sync, cleaned_files(path))  # to disk now, beside the build
    ctx.precision_path = path
    ctx.onnx_path = path


def _static_batch(info: Mapping[str, Any]) -> int:
    first = info["shape"][0] if info["shape"] else 1
    return first if isinstance(first, int) and first > 0 else 1


def _sha256(path: Path) -> str:
    first, *data = cleaned_files(path)
    return model_sha256(file_sha256(first), [file_sha256(file) for file in data])


def _bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.parent.glob(f"{path.name}*"))


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _count_ops(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("Cast", "QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {"total": len(model.graph.node), **counts}


def _check_names(ctx: Context, spec: PrecisionSpec, model: Any) -> None:
    """Excluded node names must be in the graph the stage converts (after graph-cleanup)."""
    import difflib

    names = [node.name for node in model.graph.node]
    unknown = [name for name in spec.exclude.nodes if name not in names]
    if unknown:
        close = {name: difflib.get_close_matches(name, names, n=1) for name in unknown}
        hints = ", ".join(f"'{n}'" + (f" (did you mean '{close[n][0]}'?)" if close[n] else "") for n in unknown)
        raise BuildError(ctx.recipe.problem(ctx.recipe.stage_path("precision", "exclude", "nodes"),
                                            f"the graph has no node {hints}"),
                         hint="node names are those of the graph after graph-cleanup (model.cleaned.onnx)")


def _data(ctx: Context, spec: PrecisionSpec, inputs: Mapping[str, dict]) -> tuple[dict, dict]:
    """The calibration arrays (or the check's seeded random ones) and their record for the manifest."""
    cal, ranges = spec.calibration, calibration.profile_ranges(ctx.recipe)
    if cal is not None and cal.data is not None:
        try:
            problems = calibration.problems(calibration.headers(cal.data), inputs, ranges)
        except calibration.DataError as error:
            problems = [str(error)]
        if problems:  # preflight said so already, unless the data changed since
            raise BuildError(ctx.recipe.problem(ctx.recipe.stage_path("precision", "calibration", "data"),
                                                "; ".join(calibration.described(cal.data, p) for p in problems)))
        arrays = calibration.load(cal.data)
        record = {"source": "file", "path": str(cal.data), "sha256": calibration.data_sha256(cal.data)}
    else:
        rand = cal.random if cal is not None and cal.random else Random(CHECK_RANDOM, _seed(ctx))
        arrays = calibration.random(inputs, ranges, rand.samples, rand.seed)
        record = {"source": "random", "seed": rand.seed}
        if spec.mode in QUANTIZED:
            ctx.log.warning("precision: %s scales are calibrated on seeded random data (%d samples, seed %d), not on "
                            "real inputs: expect a worse engine than real calibration data gives; set "
                            "calibration.data", spec.mode, rand.samples, rand.seed)
    record["samples"] = calibration.samples(arrays)
    if spec.mode in QUANTIZED:
        record.update(method=cal.method, **({"percentile": cal.percentile} if cal.method == "percentile" else {}))
    else:
        record["used_for"] = "the numerics check only"
    return arrays, record


def _seed(ctx: Context) -> int:
    return ctx.recipe.validate.seed if ctx.recipe.validate else 0


STAGE = Stage("precision", PrecisionSpec, _freeze, reduced_model_from_model, in_key=True, optional=True,
              key=key_settings, check=recipe_problems)
