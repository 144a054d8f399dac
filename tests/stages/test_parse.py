"""parse: load the ONNX model (external data too), checker, shape inference, I/O and opset recorded."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from models.make_models import MODELS, write_model
from pipeline.errors import BuildError, PipelineError, RecipeError
from pipeline.stages.context import Context
from pipeline.stages.parse import digests, header, preflight
from tests.conftest import TINY_STAGES, run_stages

Recipe = Callable[..., Path]
ContextFor = Callable[..., Context]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_for(write_recipe: Recipe, model: Path, stages: str = TINY_STAGES, extra: str = "") -> Path:
    return write_recipe(f"name: t\nversion: 1.0.0\nmodel: {{path: {model}{extra}}}\ntargets: [sm89]\n{stages}")


def test_parse_records_io_and_opset(write_recipe: Recipe, models_dir: Path, build_context: ContextFor) -> None:
    model = models_dir / "tiny.onnx"
    ctx = build_context(recipe_for(write_recipe, model))
    run_stages(ctx, "parse")
    assert ctx.model_record == {
        "path": str(model), "sha256": sha256(model), "external_data": [], "bytes": model.stat().st_size,
        "inputs": {"x": {"dtype": "float32", "shape": ["batch", 4]}},
        "outputs": {"y": {"dtype": "float32", "shape": ["batch", 8]}},
        "opset": 17,
    }
    assert ctx.onnx_path == model
    assert ctx.cleaned_sha256 == sha256(model)  # no graph-cleanup: the engine is built from the original
    assert isinstance(ctx.model, onnx.ModelProto)


def test_parse_two_inputs(write_recipe: Recipe, models_dir: Path, build_context: ContextFor) -> None:
    stages = TINY_STAGES.replace("- x: {min: [1, 4], opt: [8, 4], max: [64, 4]}",
                                 "- image: {min: [1, 3, 8, 8], opt: [1, 3, 8, 8], max: [1, 3, 8, 8]}")
    ctx = build_context(recipe_for(write_recipe, models_dir / "two_input.onnx", stages))
    run_stages(ctx, "parse")
    assert ctx.model_record["inputs"] == {"image": {"dtype": "float32", "shape": ["batch", 3, "height", "width"]},
                                          "scale": {"dtype": "float32", "shape": ["batch", 1]}}
    assert ctx.model_record["outputs"] == {"features": {"dtype": "float32", "shape": ["batch", 8]},
                                           "heatmap": {"dtype": "float32", "shape": ["batch", 1, "height", "width"]}}


@pytest.mark.parametrize("infer", [True, False])
def test_shape_inference_is_run_when_asked(write_recipe: Recipe, models_dir: Path, build_context: ContextFor,
                                           infer: bool) -> None:
    stages = TINY_STAGES.replace("- parse: {}", f"- parse: {{infer_shapes: {str(infer).lower()}}}")
    ctx = build_context(recipe_for(write_recipe, models_dir / "tiny.onnx", stages))
    run_stages(ctx, "parse")
    inferred = {v.name for v in ctx.model.graph.value_info}
    assert inferred == ({"matmul_out", "add_out"} if infer else set())


@pytest.fixture
def external_model(tmp_path: Path) -> Path:
    """tiny, with every initializer in tiny.onnx.data beside it."""
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save(MODELS["tiny"](), str(folder / "tiny.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="tiny.onnx.data", size_threshold=0)
    assert (folder / "tiny.onnx.data").stat().st_size > 0
    return folder / "tiny.onnx"


def test_external_data_is_hashed(write_recipe: Recipe, external_model: Path, build_context: ContextFor) -> None:
    data = external_model.with_name("tiny.onnx.data")
    ctx = build_context(recipe_for(write_recipe, external_model))
    run_stages(ctx, "parse")
    assert ctx.model_record["external_data"] == [{"path": str(data), "sha256": sha256(data)}]
    assert ctx.model_record["bytes"] == external_model.stat().st_size + data.stat().st_size
    before = digests(external_model)
    data.write_bytes(data.read_bytes()[::-1])  # same size, other weights
    after = digests(external_model)
    assert after["sha256"] == before["sha256"]
    assert after["external_data"][0]["sha256"] != before["external_data"][0]["sha256"]


def test_external_data_weights_are_loaded_for_cleanup_and_the_engine_builds(
        write_recipe: Recipe, external_model: Path, build_context: ContextFor) -> None:
    stages = TINY_STAGES.replace("  - parse: {}\n", "  - parse: {}\n  - graph-cleanup: {}\n")
    ctx = build_context(recipe_for(write_recipe, external_model, stages))
    run_stages(ctx, "parse")
    weights = {init.name: init for init in ctx.model.graph.initializer}
    assert len(weights["fc.weight"].raw_data) == 4 * 8 * 4  # read from tiny.onnx.data
    run_stages(ctx, "graph-cleanup", "network-flag", "memory-pool", "serialize")
    assert ctx.engine_path is not None and ctx.engine_path.stat().st_size > 0


def test_external_data_model_builds_without_cleanup(
        write_recipe: Recipe, external_model: Path, build_context: ContextFor) -> None:
    ctx = build_context(recipe_for(write_recipe, external_model))
    run_stages(ctx, "parse", "network-flag", "memory-pool", "serialize")
    assert ctx.engine_path is not None and ctx.engine_path.stat().st_size > 0


def test_sha256_pin_matches(write_recipe: Recipe, models_dir: Path, build_context: ContextFor) -> None:
    model = models_dir / "tiny.onnx"
    ctx = build_context(recipe_for(write_recipe, model, extra=f", sha256: {sha256(model)}"))
    run_stages(ctx, "parse")
    assert ctx.model_record["sha256"] == sha256(model)


def test_a_model_rewritten_after_it_was_hashed_fails_the_build(write_recipe: Recipe, tmp_path: Path,
                                                               build_context: ContextFor) -> None:
    """The bytes parse reads are checked (beside it) against the sha256 taken before the build: a model written
    in between is not built under the old file's hash."""
    model = tmp_path / "tiny.onnx"
    write_model(MODELS["tiny"](), model)
    ctx = build_context(recipe_for(write_recipe, model))
    ctx.model_record = digests(model)
    write_model(MODELS["tiny"](seed=1), model)  # other weights, same graph
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "parse")  # and waits for the check beside it
    assert str(caught.value) == (f"parse: {model} changed while the build read it (its sha256 is no longer "
                                 f"{ctx.model_record['sha256'][:12]}...)")
    assert caught.value.hint == "run the build again once the model file is no longer being written"


def test_sha256_pin_mismatch(write_recipe: Recipe, models_dir: Path, build_context: ContextFor) -> None:
    model, pin = models_dir / "tiny.onnx", "ab" * 32
    path = recipe_for(write_recipe, model, extra=f", sha256: {pin}")
    ctx = build_context(path)
    with pytest.raises(RecipeError) as caught:
        run_stages(ctx, "parse")
    column = len(f"model: {{path: {model}, sha256: ") + 1
    assert str(caught.value) == f"{path}:3:{column}: model.sha256: pinned {pin}, but {model} has sha256 {sha256(model)}"
    assert caught.value.hint == "update the pin if the model change is intended"


def unsorted_tiny(path: Path) -> Path:
    """tiny with its nodes in reverse order: loadable, but the ONNX checker rejects it."""
    model = MODELS["tiny"]()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    onnx.save(model, str(path))
    return path


def test_checker_rejects_a_broken_model(write_recipe: Recipe, tmp_path: Path, build_context: ContextFor) -> None:
    model = unsorted_tiny(tmp_path / "broken.onnx")
    ctx = build_context(recipe_for(write_recipe, model))
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "parse")
    assert str(caught.value).startswith(f"parse: the ONNX checker rejects {model}: Nodes in a graph must be "
                                        "topologically sorted")
    assert "\n" not in str(caught.value)


def test_check_false_skips_the_checker(write_recipe: Recipe, tmp_path: Path, build_context: ContextFor) -> None:
    model = unsorted_tiny(tmp_path / "broken.onnx")
    stages = TINY_STAGES.replace("- parse: {}", "- parse: {check: false, infer_shapes: false}")
    ctx = build_context(recipe_for(write_recipe, model, stages))
    run_stages(ctx, "parse")
    assert ctx.model_record["inputs"] == {"x": {"dtype": "float32", "shape": ["batch", 4]}}


def test_model_file_not_found(write_recipe: Recipe, tmp_path: Path, build_context: ContextFor) -> None:
    model = tmp_path / "missing.onnx"
    path = recipe_for(write_recipe, model)
    with pytest.raises(PipelineError) as caught:
        run_stages(build_context(path), "parse")
    assert str(caught.value) == f"model file not found: {model}"
    assert caught.value.hint is not None and "relative to the recipe file" in caught.value.hint


def test_malformed_model_file(write_recipe: Recipe, tmp_path: Path, build_context: ContextFor) -> None:
    model = tmp_path / "garbage.onnx"
    model.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff")
    with pytest.raises(BuildError, match=rf"^parse: cannot read ONNX model {model}: "):
        run_stages(build_context(recipe_for(write_recipe, model)), "parse")


def test_preflight(write_recipe: Recipe, models_dir: Path, tmp_path: Path) -> None:
    from pipeline import recipe as recipes

    assert preflight(recipes.load(recipe_for(write_recipe, models_dir / "tiny.onnx"))) == []
    path = recipe_for(write_recipe, tmp_path / "missing.onnx")
    assert preflight(recipes.load(path)) == [
        f"{path}:3:15: model.path: model file not found: {tmp_path}/missing.onnx (paths are relative to the recipe)"]


def test_header_is_read_again_when_the_file_changes(models_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    write_model(MODELS["tiny"](), path)
    assert list(header(path)["inputs"]) == ["x"]
    assert header(path) is header(path)  # remembered while the file is unchanged
    write_model(MODELS["two_input"](), path)
    assert list(header(path)["inputs"]) == ["image", "scale"]


# ---------------------------------------------------------------- only regular files are read


def fifo(path: Path) -> None:
    import os

    os.mkfifo(path)


def symlink_loop(path: Path) -> None:
    path.with_name("other.onnx").symlink_to(path.name)
    path.symlink_to("other.onnx")


@pytest.mark.parametrize(("make", "kind"), [
    (fifo, "a named pipe (FIFO)"),
    (lambda path: path.mkdir(), "a directory"),
    (symlink_loop, "a symlink loop"),  # was a crash: RuntimeError from Path.resolve
    (lambda path: path.symlink_to("/dev/zero"), "a character device"),  # the model path is resolved: /dev/zero
])
def test_a_model_path_that_is_not_a_regular_file(write_recipe: Recipe, tmp_path: Path, build_context: ContextFor,
                                                 make: Callable[[Path], None], kind: str) -> None:
    from pipeline import recipe as recipes

    model = tmp_path / "model.onnx"
    make(model)
    path = recipe_for(write_recipe, model)
    shown = Path("/dev/zero") if kind == "a character device" else model
    problem = f"expected the model to be a regular file, got {kind}: {shown}"
    assert preflight(recipes.load(path)) == [f"{path}:3:15: model.path: {problem}"]
    with pytest.raises(PipelineError) as caught:
        run_stages(build_context(path), "parse")
    assert str(caught.value) == problem


def test_an_empty_model_file(write_recipe: Recipe, tmp_path: Path, build_context: ContextFor) -> None:
    from pipeline import recipe as recipes

    model = tmp_path / "empty.onnx"
    model.write_bytes(b"")
    path = recipe_for(write_recipe, model)
    problem = f"model file is empty: {model}; export the model again"
    assert preflight(recipes.load(path)) == [f"{path}:3:15: model.path: {problem}"]
    with pytest.raises(PipelineError) as caught:
        run_stages(build_context(path), "parse")
    assert str(caught.value) == problem


def relocated(model: Path, location: str) -> Path:
    """The external-data model with its tensors pointing at `location` instead."""
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(model))
    return model


def outside_file(model: Path) -> str:
    outside = model.parent.parent / "elsewhere.data"
    outside.write_bytes(model.with_name("tiny.onnx.data").read_bytes())
    model.with_name("link.data").symlink_to(outside)
    return "link.data"


OUTSIDE = "a path outside it ({}); external data must sit in the model's folder"


@pytest.mark.parametrize(("setup", "got"), [
    (lambda model: "/dev/zero", OUTSIDE.format("/dev/zero")),
    (lambda model: "../../../../../../../../../../dev/zero", OUTSIDE.format("/dev/zero")),
    (lambda model: fifo(model.with_name("pipe.data")) or "pipe.data", "a named pipe (FIFO)"),
    (lambda model: outside_file(model), OUTSIDE.format("{outside}")),
    (lambda model: "gone.data", "no such file; copy it next to the model, or export the model again"),
])
def test_external_data_must_be_regular_files_in_the_models_folder(
        write_recipe: Recipe, external_model: Path, build_context: ContextFor,
        setup: Callable[[Path], str], got: str) -> None:
    """Refused before anything reads them: /dev/zero never ends and a FIFO blocks (both hung the build)."""
    from pipeline import recipe as recipes

    location = setup(external_model)
    relocated(external_model, location)
    folder = external_model.parent
    problem = (f"external data '{location}' of {external_model}: expected a regular file inside {folder}, "
               f"got {got.format(outside=folder.parent / 'elsewhere.data')}")
    path = recipe_for(write_recipe, external_model)
    assert preflight(recipes.load(path)) == [f"{path}:3:15: model.path: {problem}"]
    with pytest.raises(BuildError) as caught:
        digests(external_model)
    assert str(caught.value) == f"parse: {problem}"
    ctx = build_context(path)
    ctx.model_record = {"path": str(external_model), "sha256": sha256(external_model), "bytes": 1,
                        "external_data": []}  # as if remembered: the stage checks again
    with pytest.raises(BuildError) as caught:
        run_stages(ctx, "parse")
    assert str(caught.value) == f"parse: {problem}"
