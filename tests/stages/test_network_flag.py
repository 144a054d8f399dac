"""network-flag: creation flags for this backend, then the TensorRT ONNX parser fills the network."""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import tensorrt_rtx

from pipeline.errors import BackendError, BuildError
from pipeline.stages.context import Context
from pipeline.stages.network_flag import FlagSpec, creation_flags
from pipeline.trt.backend import Backend
from tests.conftest import TINY_STAGES, run_stages
from tests.stages.test_graph_cleanup import CLEANUP_NEEDED

Recipe = Callable[..., Path]
ContextFor = Callable[..., Context]
LABEL = f"tensorrt-rtx {tensorrt_rtx.__version__}"


def tiny(write_recipe: Recipe, flags: str) -> Path:
    stages = TINY_STAGES.replace("{strongly_typed: true}", flags)
    return write_recipe(f"name: t\nversion: 1.0.0\nmodel: {{path: {{models}}/tiny.onnx}}\ntargets: [sm89]\n{stages}")


def test_strongly_typed_network(write_recipe: Recipe, build_context: ContextFor) -> None:
    ctx = build_context(tiny(write_recipe, "{strongly_typed: true}"))
    run_stages(ctx, "parse", "network-flag")
    assert ctx.network.get_flag(tensorrt_rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ctx.network_record == {
        "flags": ["STRONGLY_TYPED"],
        "plugins": [],
        "notes": [f"explicit batch is the only mode in {LABEL}; EXPLICIT_BATCH not set"],
        "layers": ctx.network.num_layers,
        "inputs": {"x": {"dtype": "float", "shape": [-1, 4]}},
        "outputs": {"y": {"dtype": "float", "shape": [-1, 8]}},
    }
    assert ctx.network_record["layers"] > 0
    assert ctx.parser is not None  # kept alive with the network: the network borrows its weights


def test_flags_are_read_back_from_the_network(write_recipe: Recipe, build_context: ContextFor) -> None:
    """TensorRT-RTX networks are strongly typed even when the flag is not asked for: the record says so."""
    ctx = build_context(tiny(write_recipe, "{strongly_typed: false}"))
    run_stages(ctx, "parse", "network-flag")
    assert ctx.network.get_flag(tensorrt_rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ctx.network_record["flags"] == ["STRONGLY_TYPED"]
    assert ctx.network_record["notes"] == [f"explicit batch is the only mode in {LABEL}; EXPLICIT_BATCH not set",
                                           f"{LABEL} sets STRONGLY_TYPED on every network"]


def test_uncleaned_model_fails_with_the_parser_error(write_recipe: Recipe, build_context: ContextFor,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    ctx = build_context(write_recipe(CLEANUP_NEEDED.format(cleanup="")))
    run_stages(ctx, "parse")
    with caplog.at_level(logging.INFO, logger="x"), pytest.raises(BuildError) as caught:
        run_stages(ctx, "network-flag")
    message = str(caught.value)
    assert message.startswith("network-flag: the TensorRT ONNX parser reported ")
    assert " error(s) in cleanup_needed.onnx; first: node 'y' (Reshape): " in message
    assert "\n" not in message
    assert caught.value.hint is not None and "freeze_inputs" in caught.value.hint
    logged = [r.getMessage() for r in caplog.records if r.name == "x" and r.levelno == logging.ERROR]
    assert logged and logged[0].startswith("ONNX parser: node 'y' (Reshape): ")


def test_parser_errors_are_one_line_each_at_error_level(write_recipe: Recipe, build_context: ContextFor,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The console (ERROR) gets each parser error's first line; TensorRT's multi-line rest (graphShapeAnalyzer
    internals, a misleading cudaError 35 on CPU-only machines) goes to INFO: build.log, or the console with -v."""
    ctx = build_context(write_recipe(CLEANUP_NEEDED.format(cleanup="")))
    run_stages(ctx, "parse")
    with caplog.at_level(logging.INFO, logger="x"), pytest.raises(BuildError) as caught:
        run_stages(ctx, "network-flag")
    errors = [r.getMessage() for r in caplog.records if r.name == "x" and r.levelno == logging.ERROR]
    assert errors == ["ONNX parser: node 'y' (Reshape): Invalid Node - y"]
    full = [r.getMessage() for r in caplog.records if r.name == "x" and r.levelno == logging.INFO
            and r.getMessage().startswith("ONNX parser: ")]
    assert len(full) == 1 and full[0].startswith("ONNX parser: node 'y' (Reshape): Invalid Node - y (full text):\n")
    assert "graphShapeAnalyzer" in full[0]
    assert "build log" in (caught.value.hint or "")


def stand_in(version: str, *flags: str) -> Backend:
    """Full TensorRT (8.x, 10.x, 11.x) cannot be installed here. creation_flags only reads the version and which
    NetworkDefinitionCreationFlag members exist, so a module with just those exercises its version logic."""
    members = {name: index for index, name in enumerate(flags)}
    return Backend("tensorrt", types.SimpleNamespace(__version__=version,
                                                     NetworkDefinitionCreationFlag=types.SimpleNamespace(**members)))


def test_creation_flags_across_versions(rtx_backend: Backend) -> None:
    both = FlagSpec(explicit_batch=True, strongly_typed=True)
    assert creation_flags(FlagSpec(), stand_in("8.6.1", "EXPLICIT_BATCH")) == (1, ["EXPLICIT_BATCH"], [])
    with pytest.raises(BackendError, match="which tensorrt 8.6.1 does not have"):  # capability refuses it earlier
        creation_flags(both, stand_in("8.6.1", "EXPLICIT_BATCH"))
    assert creation_flags(both, stand_in("10.13.0", "EXPLICIT_BATCH", "STRONGLY_TYPED")) == (
        2, ["STRONGLY_TYPED"], ["explicit batch is the only mode in tensorrt 10.13.0; EXPLICIT_BATCH not set"])
    assert creation_flags(both, stand_in("11.4.0.106", "STRONGLY_TYPED")) == (
        0, [], ["explicit batch is the only mode in tensorrt 11.4.0.106; EXPLICIT_BATCH not set",
                "tensorrt 11.4.0.106 is always strongly typed; STRONGLY_TYPED not set"])
    strongly = 1 << int(tensorrt_rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert creation_flags(both, rtx_backend) == (
        strongly, ["STRONGLY_TYPED"], [f"explicit batch is the only mode in {LABEL}; EXPLICIT_BATCH not set"])
    assert creation_flags(FlagSpec(explicit_batch=False), rtx_backend) == (0, [], [])


PLUGIN_RECIPE = ("name: t\nversion: 1.0.0\nmodel: {path: {models}/tiny.onnx}\ntargets: [sm89]\n"
                 + TINY_STAGES.replace("  - serialize:\n", "  - serialize:\n      plugins: [PLUGIN]\n"))


def test_a_library_that_is_not_a_plugin_is_refused_by_tensorrt(write_recipe: Callable[..., Path],
                                                               not_a_plugin: Path, build_context: ContextFor) -> None:
    ctx = build_context(write_recipe(PLUGIN_RECIPE.replace("PLUGIN", str(not_a_plugin))))
    run_stages(ctx, "parse")
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "network-flag")
    assert str(caught.value).startswith(f"network-flag: tensorrt-rtx {tensorrt_rtx.__version__} cannot load plugin "
                                        f"library {not_a_plugin}: ")
    assert "getPluginCreators" in str(caught.value)  # TensorRT's own reason


def test_external_weights_reach_the_parser_from_a_memory_map(write_recipe: Recipe, build_context: ContextFor,
                                                             tmp_path: Path) -> None:
    """A model whose weights are in external data (the matmul chain, 3 x [256]^2): the parser takes each
    initializer from a read-only memory map of the data file (load_model_proto + load_initializer) and the
    engine is byte for byte the one parse_from_file gives, reading the weights itself."""
    import mmap

    from models.make_models import write_matmul_chain

    model = tmp_path / "chain" / "chain.onnx"
    model.parent.mkdir()
    write_matmul_chain(model, 256, 3)
    recipe = write_recipe(f"name: c\nversion: 1.0.0\nmodel: {{path: {model}}}\ntargets: [sm89]\nstages:\n"
                          "  - parse: {}\n  - network-flag: {}\n  - memory-pool: {workspace: 64MiB}\n"
                          "  - serialize: {profiles: [{x: {min: [1, 256], opt: [2, 256], max: [4, 256]}}]}\n")
    ctx = build_context(recipe)
    run_stages(ctx, "parse", "network-flag")
    [weights] = ctx.parser_weights
    assert isinstance(weights.base.obj, mmap.mmap) and weights.size == 3 * 256 * 256 * 4
    run_stages(ctx, "memory-pool", "serialize")
    mapped = ctx.engine_path.read_bytes()
    plain = build_context(recipe)
    run_stages(plain, "parse")
    plain.model_record = {**plain.model_record, "external_data": []}  # as for a model without: parse_from_file
    run_stages(plain, "network-flag", "memory-pool", "serialize")
    assert plain.parser_weights == [] and plain.engine_path.read_bytes() == mapped


def test_the_first_target_parses_the_bytes_graph_cleanup_holds(write_recipe: Recipe, build_context: ContextFor,
                                                                models_dir: Path) -> None:
    """When graph-cleanup keeps the original file as the cleaned model, it writes the file beside the build and
    TensorRT's parser takes the bytes (the runner hands them to the first target only); a second target's parser
    reads the file. Both get the same network."""
    stages = TINY_STAGES.replace("- parse: {}", "- parse: {}\n  - graph-cleanup: {}")
    ctx = build_context(write_recipe(f"name: t\nversion: 1.0.0\nmodel: {{path: {{models}}/tiny.onnx}}\n"
                                     f"targets: [sm89]\n{stages}"))
    run_stages(ctx, "parse", "graph-cleanup")
    original = (models_dir / "tiny.onnx").read_bytes()
    assert ctx.onnx_bytes == (ctx.onnx_path, original)
    first = ctx.for_target(ctx.target, ctx.staged)
    ctx.onnx_bytes = None
    run_stages(first, "network-flag")
    assert first.onnx_bytes is None
    second = ctx.for_target(ctx.target, ctx.staged)
    run_stages(second, "network-flag")
    assert ctx.onnx_path.read_bytes() == original
    assert first.network_record == second.network_record and first.network_record["layers"] > 0
