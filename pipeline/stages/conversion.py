"""The precision stage's converters, around onnxruntime's tools: fp16/bf16 graphs from the float16 converter,
int8 Q/DQ from quantize_static, fp8 from the int8 graph; onnxruntime's logging and printing kept in the build log."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.stages import calibration
from pipeline.stages.parse import PROTO_LIMIT

if TYPE_CHECKING:  # the stage module imports this one
    from pipeline.stages.precision import PrecisionSpec

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # what int8/fp8 quantize (the rest stays FP32 between Q/DQ pairs)
FP8_MAX = 448.0  # the largest FP8 E4M3 value
INT8_MAX = 127.0


def floats(model: Any, spec: PrecisionSpec) -> Any:
    """The model (consumed) in fp16 or bf16."""
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    originals = _float_values(model) if spec.mode == "bf16" else {}
    model = convert_float_to_float16(model, keep_io_types=spec.io_types == "keep",
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *spec.exclude.op_types],
                                     node_block_list=list(spec.exclude.nodes))
    _drop_round_trips(model)
    if spec.mode == "bf16":
        _to_bfloat16(model, originals)
    return model


def _drop_round_trips(model: Any) -> None:
    """The converter casts the output of a node kept in FP32 to FP16 and, where FP32 is wanted next (a graph output
    with keep_io_types, another kept node), back to FP32: values past FP16's range would still overflow on the way.
    Such Cast(FLOAT16) -> Cast(FLOAT) pairs become one Identity of the FP32 value."""
    from onnx import TensorProto

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {value.name for value in graph.output}
    types = {value.name: value.type.tensor_type.elem_type for value in [*graph.input, *graph.value_info]}
    to = lambda node: next((a.i for a in node.attribute if a.name == "to"), None)  # noqa: E731
    dropped = set()
    for node in graph.node:
        first = producer.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if (to(node) != TensorProto.FLOAT or first is None or first.op_type != "Cast" or
                to(first) != TensorProto.FLOAT16 or types.get(first.input[0]) != TensorProto.FLOAT or
                node.input[0] in outputs or len(consumers[node.input[0]]) != 1):
            continue
        node.op_type, node.input[0] = "Identity", first.input[0]
        del node.attribute[:]
        dropped.add(id(first))
    kept = [node for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)


def _float_values(model: Any) -> dict[str, Any]:
    """The FP32 values of every float initializer and Constant: bf16 rounds from these, not from FP16 (whose range
    the converter clamps to)."""
    from onnx import TensorProto, numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
              if init.data_type == TensorProto.FLOAT}
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _bf16_tensor(values: Any, name: str) -> Any:
    import ml_dtypes
    import numpy as np
    from onnx import TensorProto, helper

    data = np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16)
    return helper.make_tensor(name, TensorProto.BFLOAT16, data.shape, data.tobytes(), raw=True)


def _to_bfloat16(model: Any, originals: Mapping[str, Any]) -> None:
    """Every FLOAT16 of the converted graph becomes BFLOAT16: weights and constants from their FP32 values, casts,
    inputs, outputs and value_info."""
    from onnx import TensorProto, numpy_helper

    half, bf16 = TensorProto.FLOAT16, TensorProto.BFLOAT16
    for init in model.graph.initializer:
        if init.data_type == half:
            value = originals.get(init.name)
            init.CopyFrom(_bf16_tensor(numpy_helper.to_array(init) if value is None else value, init.name))
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == half:
                attribute.i = bf16
            elif node.op_type == "Constant" and attribute.name == "value" and attribute.t.data_type == half:
                value = originals.get(node.output[0], numpy_helper.to_array(attribute.t))
                attribute.t.CopyFrom(_bf16_tensor(value, attribute.t.name))
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if value.type.tensor_type.elem_type == half:
            value.type.tensor_type.elem_type = bf16


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over calibration batches."""

    def __init__(self, feeds: Iterator[dict]) -> None:
        self.feeds = feeds

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def quantized(source: Path, path: Path, spec: PrecisionSpec, inputs: Mapping[str, dict],
               arrays: Mapping[str, Any]) -> Any:
    """quantize_static into explicit Q/DQ, INT8 symmetric (activations per tensor, weights per channel), biases
    in FP32; for fp8 the result is then retyped (_to_fp8)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    cal = spec.calibration
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    large = sum(file.stat().st_size for file in source.parent.glob(f"{source.name}*")) >= PROTO_LIMIT
    quantize_static(
        str(source), str(path), _Reader(calibration.batches(arrays, inputs)), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=[op for op in QUANTIZED_OPS if op not in spec.exclude.op_types],
        nodes_to_exclude=list(spec.exclude.nodes), per_channel=True, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=methods[cal.method], use_external_data_format=large,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                       "CalibPercentile": cal.percentile})
    if spec.mode == "int8":
        return onnx.load(str(path), load_external_data=False)
    return _to_fp8(onnx.load(str(path)), onnx.load(str(source)))


def _fp8_tensor(values: Any, name: str) -> Any:
    import ml_dtypes
    import numpy as np
    from onnx import TensorProto, helper

    data = np.clip(np.asarray(values, dtype=np.float32), -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, data.shape, data.tobytes(), raw=True)


def _to_fp8(model: Any, original: Any) -> Any:
    """The INT8 Q/DQ graph in FP8 E4M3: the same calibrated ranges (scale = amax / 448 instead of amax / 127),
    zero points FP8 zeros, weights quantized again from their FP32 values; opset 19 (FP8 Q/DQ)."""
    import numpy as np
    import onnx.version_converter
    from onnx import TensorProto, numpy_helper

    opset = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset.version < 19:
        model.CopyFrom(onnx.version_converter.convert_version(model, 19))
    fp32 = {init.name: init for init in original.graph.initializer}
    inits = {init.name: init for init in model.graph.initializer}
    nodes = [node for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    scales = {node.input[1]: numpy_helper.to_array(inits[node.input[1]]) for node in nodes}  # amax / 127
    ratio = INT8_MAX / FP8_MAX
    for node in nodes:
        value, scale, zero = node.input[:3]
        if node.op_type == "DequantizeLinear" and value in inits and inits[value].data_type == TensorProto.INT8:
            stored = numpy_helper.to_array(inits[value]).astype(np.float32)
            shape = [1] * stored.ndim
            if scales[scale].ndim:
                shape[next((a.i for a in node.attribute if a.name == "axis"), 1)] = -1
            old = scales[scale].reshape(shape)
            weight = fp32.get(value.removesuffix("_quantized"))
            weight = numpy_helper.to_array(weight) if weight is not None else stored * old
            inits[value].CopyFrom(_fp8_tensor(weight / (old * ratio), value))
        if inits[zero].data_type == TensorProto.INT8:
            inits[zero].CopyFrom(_fp8_tensor(np.zeros(tuple(inits[zero].dims), np.float32), zero))
    for scale, value in scales.items():
        inits[scale].CopyFrom(numpy_helper.from_array((value * ratio).astype(value.dtype), scale))
    quantized = {node.output[0] for node in nodes if node.op_type == "QuantizeLinear"}
    for value in model.graph.value_info:
        if value.name in quantized:
            value.type.tensor_type.elem_type = TensorProto.FLOAT8E4M3FN
    return model


def save(model: Any, path: Path) -> None:
    import onnx

    if model.ByteSize() >= PROTO_LIMIT:
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    else:
        onnx.save(model, str(path))


class _Forward(logging.Handler, logging.Filter):
    """onnxruntime's converters warn on the root logger and their own: into the build log at DEBUG instead."""

    def __init__(self, log: logging.Logger) -> None:
        logging.Handler.__init__(self)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.debug("precision: onnxruntime: %s", record.getMessage())

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if "onnxruntime" in record.pathname:
            self.emit(record)
            return False
        return True


@contextlib.contextmanager
def converter_logs(log: logging.Logger) -> Iterator[None]:
    """Route onnxruntime's logging and printed progress into `log` at DEBUG while a converter runs. A root logger
    without handlers gets a NullHandler meanwhile: `logging.warning()` would otherwise install a stderr handler on
    it for good (logging.basicConfig)."""
    forward, root, ours = _Forward(log), logging.getLogger(), logging.getLogger("onnxruntime")
    propagate, null = ours.propagate, None if root.handlers else logging.NullHandler()
    if null:
        root.addHandler(null)
    root.addFilter(forward)
    ours.addHandler(forward)
    ours.propagate = False
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        if null:
            root.removeHandler(null)
        root.removeFilter(forward)
        ours.removeHandler(forward)
        ours.propagate = propagate
        for line in printed.getvalue().splitlines():
            log.debug("precision: onnxruntime: %s", line)
