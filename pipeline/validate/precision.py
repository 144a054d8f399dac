"""The precision check, on every reduced-precision build and on CPU: ONNX Runtime on the converted graph vs the FP32
original, on the calibration data (or seeded random inputs), with the metrics quantization users read: max abs and
relative error, cosine similarity, top-1 agreement for classifier outputs.

fp16 and bf16 graphs are emulated: FP32 arithmetic with every fp16 (bf16) tensor rounded to fp16 (bf16) where it is
made, as TensorRT stores it. ONNX Runtime's CPU kernels do not compute bf16, and most fp16 ops they run in FP32
between casts they insert and then remove in pairs: an fp16 graph whose activations overflow FP16 gives finite
values there, where TensorRT gives inf.

A failure names the outputs and suggests what to keep in FP32: the nodes whose FP32 values overflow FP16, else the
quantized or converted nodes nearest to the failing outputs.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import BuildError
from pipeline.recipe import Recipe
from pipeline.stages import calibration
from pipeline.stages.conversion import QUANTIZED_OPS
from pipeline.stages.precision import FLOATS, Limits, PrecisionSpec
from pipeline.validate.cleanup import _beside_build
from pipeline.validate.compare import frozen_feed

FP16_MAX = 65504.0
SUGGESTED = 3  # nodes named in a failure's hint


def precision_check(recipe: Recipe, models: Mapping[str, Path], model: Mapping[str, Any], inputs: Mapping[str, dict],
                    arrays: Mapping[str, Any], log: Any, stopping: threading.Event) -> Callable[[], dict]:
    """A build's precision check, ready to run on any thread: `models` are the stage's FP32 input ('source', whose
    node names `exclude` uses), the 'original' model and the 'converted' one; `inputs` the source's inputs and
    `arrays` the data to feed them. The job raises BuildError naming the outputs beyond their limits, and returns
    the check's record for the manifest."""
    spec: PrecisionSpec = recipe.spec("precision")
    fixed = frozen_feed(dict(recipe.spec("graph-cleanup").freeze_inputs), model["inputs"])
    return functools.partial(_check, spec, models, inputs, arrays, fixed, list(model["outputs"]), log, stopping)


def _check(spec: PrecisionSpec, models: Mapping[str, Path], inputs: Mapping[str, dict], arrays: Mapping[str, Any],
           fixed: Mapping[str, Any], outputs: Sequence[str], log: Any, stopping: threading.Event) -> dict:
    started = time.perf_counter()
    got: dict[str, list] = {name: [] for name in outputs}
    want: dict[str, list] = {name: [] for name in outputs}
    try:
        original = _beside_build(models["original"], stopping)
        converted, rounded = _session(models["converted"], spec, stopping)
        for feed in calibration.batches(arrays, inputs):
            if stopping.is_set():
                raise BuildError("precision: the precision check was stopped")
            for name, value in zip(outputs, original.run(outputs, {**feed, **fixed})):
                want[name].append(value)
            for name, value in zip(outputs, converted.run(outputs, _typed(feed, rounded, spec.mode))):
                got[name].append(value)
    except BuildError:
        raise
    except Exception as error:  # onnxruntime's own errors: one line
        raise BuildError(f"precision: the precision check could not run ONNX Runtime: "
                         f"{str(error).strip().splitlines()[0]}") from None
    rows = {name: metrics(_joined(want[name]), _joined(got[name]), spec.check.limit(name)) for name in outputs}
    bad = [name for name, row in rows.items() if not row["passed"]]
    record = {"status": "failed" if bad else "passed", "mode": spec.mode, "reference": "onnxruntime",
              "emulated": spec.mode in FLOATS, "samples": calibration.samples(arrays), "outputs": rows,
              "seconds": round(time.perf_counter() - started, 3)}
    for name in bad:
        log.info("precision: %s output %s: %s", spec.mode, name, describe(rows[name]))
    if bad:
        raise BuildError(f"precision: the {spec.mode} graph differs from the FP32 original beyond the limits on "
                         f"output(s) {', '.join(bad)}: " + "; ".join(f"{n}: {describe(rows[n])}" for n in bad),
                         hint=suggestion(spec, models["source"], bad, arrays, inputs))
    return record


def _session(path: Path, spec: PrecisionSpec, stopping: threading.Event) -> tuple[Any, list[str]]:
    """An ONNX Runtime session on the converted graph (emulated for fp16 and bf16), and the inputs whose values
    the engine takes in fp16 or bf16 (`io_types: convert`)."""
    if spec.mode not in FLOATS:
        return _beside_build(path, stopping), []
    emulated = path.with_name(path.name.replace(".onnx", ".emulated.onnx"))
    rounded = _save_emulated(path, emulated)
    return _beside_build(emulated, stopping), rounded


def _typed(feed: Mapping[str, Any], rounded: Sequence[str], mode: str) -> dict[str, Any]:
    """The feed for the emulated graph: inputs the engine takes in fp16 (bf16) as FP32 values rounded to it."""
    import ml_dtypes
    import numpy as np

    low = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}.get(mode)
    return {name: value.astype(low).astype(np.float32) if name in rounded else value for name, value in feed.items()}


def _joined(parts: list) -> Any:
    import numpy as np

    arrays = [np.asarray(part, dtype=np.float64) for part in parts]
    return np.concatenate(arrays) if arrays and arrays[0].ndim else np.stack(arrays)


def metrics(reference: Any, value: Any, limits: Limits) -> dict:
    """max abs error, max rel error (over the output's largest FP32 magnitude), the lowest per-sample cosine
    similarity and, for a classifier output ([samples, classes]), top-1 agreement; with the limits and the verdict."""
    import numpy as np

    ref, got = reference.reshape(len(reference), -1), value.reshape(len(value), -1)
    row: dict[str, Any] = {"max_abs": None, "max_rel": None, "cosine": None, "top1": None}
    finite = bool(np.isfinite(got).all())
    if finite:
        error = float(np.abs(got - ref).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
        dots = (ref * got).sum(axis=1)
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), np.where(dots == 0, 1.0, 0.0))
        row.update(max_abs=error, max_rel=error / scale if scale else error, cosine=float(cosine.min()))
        if reference.ndim == 2 and reference.shape[1] > 1:
            row["top1"] = float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())
    checks = [(row["cosine"], limits.min_cosine, False), (row["top1"], limits.min_top1, False),
              (row["max_abs"], limits.max_abs, True), (row["max_rel"], limits.max_rel, True)]
    row["limits"] = {k: v for k, v in vars(limits).items() if v is not None}
    row["finite"] = finite
    row["passed"] = finite and all(limit is None or got_ is None or (got_ <= limit if upper else got_ >= limit)
                                   for got_, limit, upper in checks)
    return row


def describe(row: Mapping[str, Any]) -> str:
    """'cosine 0.91 (min 0.98), top-1 0.62 (min 0.9), max abs 1.2, max rel 0.25'."""
    if not row["finite"]:
        return "NaN or infinite values (overflow)"
    limits, parts = row["limits"], []
    for key, label, bound in (("cosine", "cosine", "min_cosine"), ("top1", "top-1 agreement", "min_top1"),
                              ("max_abs", "max abs error", "max_abs"), ("max_rel", "max rel error", "max_rel")):
        if row[key] is not None:
            limit = limits.get(bound)
            parts.append(f"{label} {row[key]:.4g}" + (f" ({'min' if bound.startswith('min') else 'max'} {limit:g})"
                                                        if limit is not None else ""))
    return ", ".join(parts)


# ---------------------------------------------------------------- what to exclude


def suggestion(spec: PrecisionSpec, source: Path, outputs: Sequence[str], arrays: Mapping[str, Any],
               inputs: Mapping[str, dict]) -> str:
    """The hint of a failed check: nodes to keep in FP32 (by name, in the graph the stage converts)."""
    overflow = _overflowing(source, arrays, inputs) if spec.mode in FLOATS else []
    if overflow:
        names = overflow[:SUGGESTED]
        why = f"their FP32 values exceed FP16's range ({FP16_MAX:g})"
    else:
        names = _nearest(source, outputs, spec)
        why = "they are the converted nodes nearest to the failing output(s)"
    keep = f"keep {', '.join(names)} in FP32 ({why}): add them to precision.exclude.nodes" if names else \
        "keep more of the graph in FP32 with precision.exclude (nodes, op_types)"
    return f"{keep}; or relax precision.check (min_cosine, min_top1, max_abs, max_rel; per output under outputs)"


def _overflowing(source: Path, arrays: Mapping[str, Any], inputs: Mapping[str, dict]) -> list[str]:
    """Nodes, in graph order, whose FP32 outputs leave FP16's range on the first batch of the data."""
    import numpy as np
    import onnx
    import onnxruntime

    model = onnx.load(str(source))
    producer = {out: node.name for node in model.graph.node for out in node.output if out}
    known = {value.name for value in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in producer if name not in known)
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [out.name for out in session.get_outputs() if out.name in producer]
        values = session.run(names, next(calibration.batches(arrays, inputs)))
    except Exception:  # noqa: BLE001 - only a hint: a graph ONNX Runtime cannot run this way gets the general one
        return []
    found: list[str] = []
    for name, value in zip(names, values):
        value = np.asarray(value)
        overflow = value.dtype.kind == "f" and value.size and (not np.isfinite(value).all() or
                                                               np.abs(value).max() > FP16_MAX)
        if overflow and producer[name] not in found:
            found.append(producer[name])
    return found


def _nearest(source: Path, outputs: Sequence[str], spec: PrecisionSpec) -> list[str]:
    """Walking back from the failing outputs: the first nodes the conversion touched (for int8/fp8 the quantized op
    types; for fp16/bf16 any node), up to SUGGESTED, nearest first."""
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    excluded = set(spec.exclude.nodes)
    wanted = (lambda node: node.op_type in QUANTIZED_OPS) if spec.mode not in FLOATS else (lambda node: True)  # noqa: E731
    queue, seen, found = [producer[o] for o in outputs if o in producer], set(), []
    while queue and len(found) < SUGGESTED:
        node = queue.pop(0)
        if node.name in seen:
            continue
        seen.add(node.name)
        if wanted(node) and node.name not in excluded and node.op_type not in spec.exclude.op_types:
            found.append(node.name)
            continue
        queue += [producer[i] for i in node.input if i in producer]
    return found


# ---------------------------------------------------------------- fp16 and bf16 emulated


def _save_emulated(path: Path, emulated: Path) -> list[str]:
    """An fp16 or low graph as ONNX Runtime runs it faithfully: every FLOAT16 (BFLOAT16) tensor FP32, every value
    that is fp16 (low) in the engine rounded right where it is made (Cast to FLOAT16, then back to FLOAT)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    types = {init.data_type for init in graph.initializer} | {v.type.tensor_type.elem_type for v in graph.value_info}
    low = TensorProto.BFLOAT16 if TensorProto.BFLOAT16 in types else TensorProto.FLOAT16
    typed = {v.name for v in [*graph.value_info, *graph.output] if v.type.tensor_type.elem_type == low}
    for init in graph.initializer:
        if init.data_type == low:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype("float32"), init.name))
    nodes = []
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == low:
                attribute.i = TensorProto.FLOAT
                typed.update(node.output)
            elif node.op_type == "Constant" and attribute.name == "value" and attribute.t.data_type == low:
                value = numpy_helper.to_array(attribute.t).astype("float32")
                attribute.t.CopyFrom(numpy_helper.from_array(value, attribute.t.name))
        nodes.append(node)
        for index, out in enumerate(node.output):
            if out in typed:
                node.output[index] = f"{out}/fp32"
                nodes += [helper.make_node("Cast", [f"{out}/fp32"], [f"{out}/low"], to=low),
                          helper.make_node("Cast", [f"{out}/low"], [out], to=TensorProto.FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    rounded = [value.name for value in graph.input if value.type.tensor_type.elem_type == low]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == low:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.save(model, str(emulated))
    return rounded
