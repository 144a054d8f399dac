"""Generate real ONNX models with seeded random weights, for recipes and tests.

No pretrained weights are downloaded: every weight comes from a seeded numpy
generator, so the same ``--seed`` always gives byte-identical files. All
models use opset 17, and every input has a symbolic batch dimension named
``batch``.

Models
------
``resnet50``
    ResNet-50 v1.5, the torchvision layout (the stride-2 convolution is the
    3x3 conv inside the bottleneck). Input ``input`` float32
    [batch, 3, 224, 224], output ``output`` float32 [batch, 1000]. About
    25.6M parameters (~102 MB). Parameter names follow torchvision
    (``layer1.0.conv1.weight``, ``fc.bias`` ...).

``cleanup_needed``
    A tiny model that TensorRT-RTX cannot take as it is, but can after the
    usual cleanup. Inputs: ``x`` float32 [batch, 16] and ``mode`` int64
    scalar (shape ``[]``). Output ``y`` float32 [batch, rows, cols].
    ``mode`` chooses the shape of the output::

        h     = Relu(x @ W + b)                    # [batch, 16]
        shape = If(Equal(mode, 1),
                   then=[0, 4, 4], else=[0, 2, 8])
        y     = Reshape(h, shape)                  # [batch, 4, 4] if mode == 1

    Without cleanup, the TensorRT-RTX 1.7 ONNX parser stops at the
    ``Reshape`` node: ``parse_from_file`` returns False, so no engine can be
    built, with or without an optimization profile for ``mode``. The parser
    error is (the CUDA message appears because this machine has no GPU)::

        In node 5 with name: y and operator: Reshape (parseNode):
        INVALID_NODE: Invalid Node - y
        [graphShapeAnalyzer.cpp::dispatchSymbolicExecute::1766] Error Code 2:
        Internal Error (Assertion isDefined(result) failed. shape tensor must
        have non-negative rank In dispatchSymbolicExecute at
        /_src/optimizer/shapeof/graphShapeAnalyzer.cpp:1766)
        [checkMacros.cpp::catchCudaError::250] Error Code 1: Cuda Runtime
        (... cudaError 35: CUDA driver version is insufficient for CUDA
        runtime version)

    The fix is to freeze the input ``mode`` to the constant ``1``, an
    int64 scalar ``np.array(1, dtype=np.int64)``, and then fold constants
    with onnx-graphsurgeon::

        graph = gs.import_onnx(model)
        mode = graph.tensors()["mode"]
        graph.inputs = [t for t in graph.inputs if t.name != "mode"]
        mode.to_constant(np.array(1, dtype=np.int64))
        graph.fold_constants().cleanup().toposort()

    Folding replaces the ``If`` with the ``then`` branch. The ``Reshape``
    then gets the constant shape [0, 4, 4]. The result has only the ``x``
    input, and ``y`` is [batch, 4, 4] at run time. It parses and builds.

``two_input``
    Inputs of different ranks, each with dynamic dimensions: ``image``
    float32 [batch, 3, height, width] and ``scale`` float32 [batch, 1].
    Outputs ``features`` float32 [batch, 8] and ``heatmap`` float32
    [batch, 1, height, width]. Each output is multiplied by ``scale``.

``audio_if``
    An audio front-end that takes its sample rate as an input, as public
    voice-activity models do. Inputs ``audio`` float32 [batch, samples] and
    ``sample_rate`` int64 scalar; outputs ``speech`` float32 [batch, 1] and
    ``frames`` float32 [batch, 8, n]. An ``If`` on ``sample_rate == 16000``
    (a nested ``If`` for 8000 vs 48000) resamples to 16 kHz and returns a
    second value made from the rate alone; see ``audio_if``. Freeze
    ``sample_rate`` and fold: onnx-graphsurgeon's own flattening of the
    ``If`` leaves its output ``scale`` with no producer; the pipeline's
    ``inline_ifs`` pass inlines it correctly.

``tiny``
    ``y = Relu(x @ W + b)``: input ``x`` float32 [batch, 4], output ``y``
    float32 [batch, 8]. For fast tests.

Calibration data
----------------
``resnet50_calibration``
    An ``.npz`` with one array, ``input`` float32 [8, 3, 224, 224]: eight
    seeded standard-normal "images" (what ImageNet-normalized inputs look
    like), for ``recipes/resnet50-int8.yaml``. Random data calibrates a
    random model; for a real model, calibrate on a few hundred real inputs.

Usage
-----
    python models/make_models.py resnet50 resnet50.onnx [--seed 0]
    python models/make_models.py resnet50_calibration resnet50_calibration.npz

From Python::

    from models.make_models import MODELS, write_model
    write_model(MODELS["tiny"](), "tiny.onnx")
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DEFAULT_SEED = 0
BATCH = "batch"


class _GraphBuilder:
    """Collects nodes and initializers, and makes seeded random weights."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        """Adds an initializer and returns its name."""
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def normal(self, name: str, shape: Sequence[int], std: float) -> str:
        """Adds a float32 initializer drawn from N(0, std^2)."""
        value = self.rng.standard_normal(tuple(shape), dtype=np.float32)
        value *= np.float32(std)
        return self.constant(name, value)

    def uniform(self, name: str, shape: Sequence[int], bound: float) -> str:
        """Adds a float32 initializer drawn from U(-bound, bound)."""
        value = self.rng.uniform(-bound, bound, tuple(shape)).astype(np.float32)
        return self.constant(name, value)

    def node(
        self, op_type: str, inputs: Sequence[str], output: str, **attrs: Any
    ) -> str:
        """Adds a node with one output, and returns the output's name."""
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=output, **attrs)
        )
        return output

    def model(
        self,
        name: str,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name, list(inputs), list(outputs), self.initializers
        )
        return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="models/make_models.py",
    )
    # Pin the IR version so older onnxruntime builds can load the file too.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _tensor(
    name: str, elem_type: int, shape: Sequence[int | str]
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


# --------------------------------------------------------------------------
# resnet50
# --------------------------------------------------------------------------

# (number of bottleneck blocks, bottleneck width, stride of the first block)
_RESNET50_STAGES = [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)]
_EXPANSION = 4


def _conv_bn(
    g: _GraphBuilder,
    x: str,
    conv: str,
    bn: str,
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int,
    relu: bool,
    gamma: float = 1.0,
) -> str:
    """Conv (no bias) + BatchNormalization (+ Relu), with torchvision names."""
    fan_in = in_ch * kernel * kernel
    weight = g.normal(
        f"{conv}.weight", (out_ch, in_ch, kernel, kernel), np.sqrt(2.0 / fan_in)
    )
    pad = kernel // 2
    y = g.node(
        "Conv",
        [x, weight],
        f"{conv}_out",
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[pad, pad, pad, pad],
    )
    y = g.node(
        "BatchNormalization",
        [
            y,
            g.constant(f"{bn}.weight", np.full(out_ch, gamma, np.float32)),
            g.constant(f"{bn}.bias", np.zeros(out_ch, np.float32)),
            g.constant(f"{bn}.running_mean", np.zeros(out_ch, np.float32)),
            g.constant(f"{bn}.running_var", np.ones(out_ch, np.float32)),
        ],
        f"{bn}_out",
        epsilon=1e-5,
    )
    if relu:
        y = g.node("Relu", [y], f"{bn}_relu")
    return y


def _bottleneck(
    g: _GraphBuilder, x: str, prefix: str, in_ch: int, width: int, stride: int
) -> str:
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1, plus shortcut."""
    out_ch = width * _EXPANSION
    y = _conv_bn(g, x, f"{prefix}.conv1", f"{prefix}.bn1", in_ch, width, 1, 1, True)
    y = _conv_bn(
        g, y, f"{prefix}.conv2", f"{prefix}.bn2", width, width, 3, stride, True
    )
    # A small last gamma keeps the residual sum from growing block after
    # block, so the random network gives logits of a sensible size.
    y = _conv_bn(
        g,
        y,
        f"{prefix}.conv3",
        f"{prefix}.bn3",
        width,
        out_ch,
        1,
        1,
        False,
        gamma=0.2,
    )
    shortcut = x
    if stride != 1 or in_ch != out_ch:
        shortcut = _conv_bn(
            g,
            x,
            f"{prefix}.downsample.0",
            f"{prefix}.downsample.1",
            in_ch,
            out_ch,
            1,
            stride,
            False,
        )
    y = g.node("Add", [y, shortcut], f"{prefix}_add")
    return g.node("Relu", [y], f"{prefix}_out")


def resnet50(seed: int = DEFAULT_SEED) -> onnx.ModelProto:
    """ResNet-50 v1.5: ``input`` [batch,3,224,224] -> ``output`` [batch,1000]."""
    g = _GraphBuilder(seed)
    y = _conv_bn(g, "input", "conv1", "bn1", 3, 64, 7, 2, True)
    y = g.node(
        "MaxPool",
        [y],
        "maxpool_out",
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
    )
    in_ch = 64
    for stage, (blocks, width, stride) in enumerate(_RESNET50_STAGES, start=1):
        for block in range(blocks):
            y = _bottleneck(
                g,
                y,
                f"layer{stage}.{block}",
                in_ch,
                width,
                stride if block == 0 else 1,
            )
            in_ch = width * _EXPANSION
    y = g.node("GlobalAveragePool", [y], "avgpool_out")
    y = g.node("Flatten", [y], "flatten_out", axis=1)
    bound = 1.0 / np.sqrt(in_ch)  # torch.nn.Linear's default init
    g.node(
        "Gemm",
        [
            y,
            g.uniform("fc.weight", (1000, in_ch), bound),
            g.uniform("fc.bias", (1000,), bound),
        ],
        "output",
        transB=1,
    )
    return g.model(
        "resnet50",
        [_tensor("input", TensorProto.FLOAT, [BATCH, 3, 224, 224])],
        [_tensor("output", TensorProto.FLOAT, [BATCH, 1000])],
    )


# --------------------------------------------------------------------------
# cleanup_needed
# --------------------------------------------------------------------------


def _constant_branch(name: str, value: Sequence[int]) -> onnx.GraphProto:
    """An If branch with no inputs that returns a constant int64 vector."""
    out = f"{name}_shape"
    tensor = helper.make_tensor(f"{name}_value", TensorProto.INT64, [len(value)], value)
    return helper.make_graph(
        [helper.make_node("Constant", [], [out], name=out, value=tensor)],
        name,
        [],
        [_tensor(out, TensorProto.INT64, [len(value)])],
    )


def cleanup_needed(seed: int = DEFAULT_SEED) -> onnx.ModelProto:
    """``x`` [batch,16] + ``mode`` int64 scalar -> ``y`` [batch,rows,cols].

    TensorRT-RTX cannot parse it until ``mode`` is frozen (to 1) and constants
    are folded; see the module docstring.
    """
    g = _GraphBuilder(seed)
    features = 16
    w = g.normal("fc.weight", (features, features), np.sqrt(2.0 / features))
    b = g.normal("fc.bias", (features,), 0.1)
    h = g.node("MatMul", ["x", w], "matmul_out")
    h = g.node("Add", [h, b], "add_out")
    h = g.node("Relu", [h], "relu_out")
    one = g.constant("one", np.array(1, dtype=np.int64))
    cond = g.node("Equal", ["mode", one], "mode_is_1")
    shape = g.node(
        "If",
        [cond],
        "out_shape",
        then_branch=_constant_branch("then", [0, 4, 4]),
        else_branch=_constant_branch("else", [0, 2, 8]),
    )
    g.node("Reshape", [h, shape], "y")
    return g.model(
        "cleanup_needed",
        [
            _tensor("x", TensorProto.FLOAT, [BATCH, features]),
            _tensor("mode", TensorProto.INT64, []),
        ],
        [_tensor("y", TensorProto.FLOAT, [BATCH, "rows", "cols"])],
    )


# --------------------------------------------------------------------------
# two_input
# --------------------------------------------------------------------------


def two_input(seed: int = DEFAULT_SEED) -> onnx.ModelProto:
    """``image`` [batch,3,height,width] + ``scale`` [batch,1] -> two outputs.

    Outputs: ``features`` [batch,8] and ``heatmap`` [batch,1,height,width].
    """
    g = _GraphBuilder(seed)
    channels = 8
    w1 = g.normal("conv.weight", (channels, 3, 3, 3), np.sqrt(2.0 / 27))
    b1 = g.normal("conv.bias", (channels,), 0.1)
    y = g.node(
        "Conv", ["image", w1, b1], "conv_out", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
    )
    y = g.node("Relu", [y], "relu_out")

    pooled = g.node("GlobalAveragePool", [y], "pool_out")
    pooled = g.node("Flatten", [pooled], "flatten_out", axis=1)
    g.node("Mul", [pooled, "scale"], "features")

    w2 = g.normal("head.weight", (1, channels, 1, 1), np.sqrt(1.0 / channels))
    b2 = g.constant("head.bias", np.zeros(1, np.float32))
    heat = g.node("Conv", [y, w2, b2], "head_out", kernel_shape=[1, 1])
    axes = g.constant("hw_axes", np.array([2, 3], dtype=np.int64))
    scale4d = g.node("Unsqueeze", ["scale", axes], "scale_4d")  # [batch,1,1,1]
    g.node("Mul", [heat, scale4d], "heatmap")

    return g.model(
        "two_input",
        [
            _tensor("image", TensorProto.FLOAT, [BATCH, 3, "height", "width"]),
            _tensor("scale", TensorProto.FLOAT, [BATCH, 1]),
        ],
        [
            _tensor("features", TensorProto.FLOAT, [BATCH, channels]),
            _tensor("heatmap", TensorProto.FLOAT, [BATCH, 1, "height", "width"]),
        ],
    )


# --------------------------------------------------------------------------
# tiny
# --------------------------------------------------------------------------


def tiny(seed: int = DEFAULT_SEED) -> onnx.ModelProto:
    """``y = Relu(x @ W + b)``: ``x`` [batch,4] -> ``y`` [batch,8]."""
    g = _GraphBuilder(seed)
    w = g.normal("fc.weight", (4, 8), np.sqrt(2.0 / 4))
    b = g.normal("fc.bias", (8,), 0.1)
    y = g.node("MatMul", ["x", w], "matmul_out")
    y = g.node("Add", [y, b], "add_out")
    g.node("Relu", [y], "y")
    return g.model(
        "tiny",
        [_tensor("x", TensorProto.FLOAT, [BATCH, 4])],
        [_tensor("y", TensorProto.FLOAT, [BATCH, 8])],
    )


# --------------------------------------------------------------------------
# audio_if
# --------------------------------------------------------------------------

_FRAME, _HOP, _CHANNELS = 64, 32, 8  # the 16 kHz analysis window and hop, in samples; filters


def _branch(name: str, nodes: Sequence[onnx.NodeProto], outputs: Sequence[onnx.ValueInfoProto],
            initializers: Sequence[onnx.TensorProto] = ()) -> onnx.GraphProto:
    return helper.make_graph(list(nodes), name, [], list(outputs), list(initializers))


def _rate_scale(prefix: str) -> list[onnx.NodeProto]:
    """``sample_rate / 16000`` as float: reads the outer-scope ``sample_rate``, so it folds once that is frozen."""
    return [
        helper.make_node("Cast", ["sample_rate"], [f"{prefix}_rate"], name=f"{prefix}_rate", to=TensorProto.FLOAT),
        helper.make_node("Div", [f"{prefix}_rate", f"{prefix}_16k"], [f"{prefix}_scale"], name=f"{prefix}_scale"),
    ]


def _resample_branch(name: str, factor: float) -> onnx.GraphProto:
    """The audio brought to 16 kHz by linear interpolation (Resize by ``factor`` along the samples), and the rate
    scale. Uses the outer-scope ``audio_3d`` and ``sample_rate``."""
    scales = numpy_helper.from_array(np.array([1.0, 1.0, factor], np.float32), f"{name}_scales")
    sixteen = numpy_helper.from_array(np.array(16000, np.float32), f"{name}_16k")
    nodes = [
        helper.make_node("Resize", ["audio_3d", "", f"{name}_scales"], [f"{name}_audio"], name=f"{name}_resize",
                         mode="linear"),
        *_rate_scale(name),
    ]
    return _branch(name, nodes, [_tensor(f"{name}_audio", TensorProto.FLOAT, [BATCH, 1, "resampled"]),
                                 _tensor(f"{name}_scale", TensorProto.FLOAT, [])], [scales, sixteen])


def audio_if(seed: int = DEFAULT_SEED) -> onnx.ModelProto:
    """``audio`` [batch,samples] + ``sample_rate`` int64 scalar -> ``speech`` [batch,1], ``frames`` [batch,8,n].

    A voice-activity front-end shaped like the public audio models that take a sample rate (Silero VAD's
    ``sr``)::

        audio_3d      = Unsqueeze(audio, 1)                      # [batch, 1, samples]
        signal, scale = If(Equal(sample_rate, 16000),
                           then=[audio_3d, sample_rate / 16000],  # Identity: already 16 kHz
                           else=If(Equal(sample_rate, 8000),
                                   then=[Resize(audio_3d, x2), sample_rate / 16000],
                                   else=[Resize(audio_3d, x1/3), sample_rate / 16000]))   # 48 kHz
        frames        = Relu(Conv(signal, W, stride 32) * scale)   # [batch, 8, n]: framed filter bank
        speech        = Sigmoid(ReduceMean(frames, time) @ V)     # [batch, 1]

    Both branches read outer-scope values (``audio_3d``, ``sample_rate``), the ``If`` has two outputs, and
    the 8 kHz / 48 kHz choice is a nested ``If``. Freeze ``sample_rate`` (to 16000 or 8000) and fold: the
    ``If`` goes, and what each branch computed from the rate alone (``scale``) becomes a constant.
    """
    g = _GraphBuilder(seed)
    conv_w = g.normal("frontend.weight", (_CHANNELS, 1, _FRAME), np.sqrt(2.0 / _FRAME))
    head_w = g.normal("head.weight", (_CHANNELS, 1), np.sqrt(1.0 / _CHANNELS))
    axes = g.constant("channel_axis", np.array([1], np.int64))
    audio_3d = g.node("Unsqueeze", ["audio", axes], "audio_3d")
    is_16k = g.node("Equal", ["sample_rate", g.constant("rate_16k", np.array(16000, np.int64))], "is_16k")
    identity = _branch("at_16k", [helper.make_node("Identity", [audio_3d], ["at_16k_audio"], name="at_16k_audio"),
                                  *_rate_scale("at_16k")],
                       [_tensor("at_16k_audio", TensorProto.FLOAT, [BATCH, 1, "samples"]),
                        _tensor("at_16k_scale", TensorProto.FLOAT, [])],
                       [numpy_helper.from_array(np.array(16000, np.float32), "at_16k_16k")])
    eight = numpy_helper.from_array(np.array(8000, np.int64), "rate_8k")
    nested = [helper.make_node("Equal", ["sample_rate", "rate_8k"], ["is_8k"], name="is_8k"),
              helper.make_node("If", ["is_8k"], ["other_audio", "other_scale"], name="resample",
                               then_branch=_resample_branch("from_8k", 2.0),
                               else_branch=_resample_branch("from_48k", 1.0 / 3.0))]
    resample = _branch("resample_to_16k", nested, [_tensor("other_audio", TensorProto.FLOAT, [BATCH, 1, "resampled"]),
                                                   _tensor("other_scale", TensorProto.FLOAT, [])], [eight])
    g.nodes.append(helper.make_node("If", [is_16k], ["signal", "scale"], name="to_16k",
                                    then_branch=identity, else_branch=resample))
    y = g.node("Conv", ["signal", conv_w], "frontend_out", kernel_shape=[_FRAME], strides=[_HOP])
    y = g.node("Mul", [y, "scale"], "scaled")
    frames = g.node("Relu", [y], "frames")
    pooled = g.node("ReduceMean", [frames], "pooled", axes=[2], keepdims=0)
    logit = g.node("MatMul", [pooled, head_w], "logit")
    g.node("Sigmoid", [logit], "speech")
    return g.model(
        "audio_if",
        [_tensor("audio", TensorProto.FLOAT, [BATCH, "samples"]), _tensor("sample_rate", TensorProto.INT64, [])],
        [_tensor("speech", TensorProto.FLOAT, [BATCH, 1]), _tensor("frames", TensorProto.FLOAT, [BATCH, _CHANNELS, "n"])],
    )


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

MODELS: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet50": resnet50,
    "cleanup_needed": cleanup_needed,
    "two_input": two_input,
    "tiny": tiny,
    "audio_if": audio_if,
}


# --------------------------------------------------------------------------
# calibration data
# --------------------------------------------------------------------------


def resnet50_calibration(seed: int = DEFAULT_SEED, samples: int = 8) -> dict[str, np.ndarray]:
    """``input`` [8,3,224,224]: seeded N(0, 1) images for int8 calibration."""
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((samples, 3, 224, 224), dtype=np.float32)}


DATA: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "resnet50_calibration": resnet50_calibration,
}


def write_arrays(arrays: dict[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Writes ``arrays`` to the ``.npz`` file ``path`` atomically, like write_model."""
    _write_atomically(path, lambda f: np.savez(f, **arrays))


def write_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Writes ``model`` to ``path`` atomically: to a temp file, then rename.

    The temp file is ``<path>.<pid>.tmp`` in the same directory, so readers
    never see a half-written file, and two processes writing the same path
    do not share a temp file.
    """
    _write_atomically(path, lambda f: f.write(model.SerializeToString()))


def _write_atomically(path: str | os.PathLike[str], write: Callable[[Any], Any]) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    summaries = "\n".join(
        f"  {name:<21} {_first_line(fn.__doc__).replace('``', '')}"
        for name, fn in {**MODELS, **DATA}.items()
    )
    parser = argparse.ArgumentParser(
        prog="make_models.py",
        description=(
            "Write a real ONNX model (opset 17) with seeded random weights.\n"
            "The same seed always gives the same file. The file is written\n"
            "atomically (a temp file, then a rename)."
        ),
        epilog=(
            f"models:\n{summaries}\n\n"
            "cleanup_needed cannot be parsed by TensorRT-RTX as it is: freeze\n"
            "its input 'mode' to the int64 scalar 1, then run\n"
            "graph.fold_constants().cleanup().toposort() in onnx-graphsurgeon.\n"
            "See the module docstring for the details.\n\n"
            "example:\n"
            "  python models/make_models.py resnet50 /tmp/resnet50.onnx --seed 1"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", choices=sorted({**MODELS, **DATA}), help="which model (or data) to write"
    )
    parser.add_argument("output", help="path of the .onnx (or .npz) file to write")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed for the random weights (default: {DEFAULT_SEED})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.model in DATA:
        write_arrays(DATA[args.model](seed=args.seed), args.output)
    else:
        write_model(MODELS[args.model](seed=args.seed), args.output)
    print(f"wrote {args.model} (seed {args.seed}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
