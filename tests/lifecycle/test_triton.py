"""triton: the exported model repository, its config.pbtxt parsed back with Triton's own model_config.proto."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import text_format

from pipeline.errors import StoreError
from pipeline.lifecycle import channel
from pipeline.lifecycle.triton import config_text, export
from pipeline.store import Store
from tests._lifecycle import (
    SM86,
    SM89,
    SM120,
    TINY,
    TWO_INPUT,
    build,
    copy_store,
    write,
)


def _model_config_pb2() -> ModuleType:
    """tritonclient's generated tritonclient.grpc.model_config_pb2. Importing it through its package needs the
    `grpc` extra (grpcio, and protobuf < 7); the generated module itself needs only protobuf, so it is loaded
    from its file when grpcio is not installed."""
    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except (ImportError, RuntimeError):
        pass
    package = importlib.util.find_spec("tritonclient")
    assert package is not None and package.submodule_search_locations, "tritonclient is a test dependency"
    path = Path(next(iter(package.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("tritonclient_model_config_pb2", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pb = _model_config_pb2()


def parse(path: Path):  # type: ignore[no-untyped-def]
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Store:
    """tiny@1.0.0 built for sm86, sm89, sm120, each on production (with a waiver: no GPU validates here)."""
    root = tmp_path_factory.mktemp("triton")
    store = Store(root / "store")
    for artifact in build(write(root / "tiny.yaml", TINY, models_dir / "tiny.onnx"), store):
        channel.set_(store, "tiny", artifact.tag, "production", channel.pointer(artifact, waiver="test"), {"at": "t"})
    return store


@pytest.fixture
def fresh(three: Store, tmp_path: Path) -> Store:
    return copy_store(three, tmp_path / "store")


def test_several_gpu_tags_export_one_model_with_cc_model_filenames(three: Store, tmp_path: Path) -> None:
    done = export(three, "tiny", "production", tmp_path / "repo")

    model = tmp_path / "repo" / "tiny"
    assert (done.model_dir, done.version, done.changed) == (model, 1, True)
    assert done.files == {SM86: "model.sm86.plan", SM89: "model.sm89.plan", SM120: "model.sm120.plan"}
    config = parse(model / "config.pbtxt")
    expected = pb.ModelConfig(
        name="tiny", platform="tensorrt_plan", max_batch_size=0,
        input=[pb.ModelInput(name="x", data_type=pb.TYPE_FP32, dims=[-1, 4])],
        output=[pb.ModelOutput(name="y", data_type=pb.TYPE_FP32, dims=[-1, 8])],
        cc_model_filenames={"8.6": "model.sm86.plan", "8.9": "model.sm89.plan", "12.0": "model.sm120.plan"})
    assert config == expected
    assert [field.name for field, _ in config.ListFields()] == ["name", "platform", "input", "output",
                                                                "cc_model_filenames"]
    assert "max_batch_size: 0\n" in (model / "config.pbtxt").read_text()  # proto3 hides a zero; it is written
    assert config.default_model_filename == "" and config.backend == ""
    assert sorted(p.name for p in model.iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.sm120.plan", "model.sm86.plan",
                                                               "model.sm89.plan", "provenance.json"]
    for tag, file in done.files.items():
        assert sha256(model / "1" / file) == three.resolve("tiny@1.0.0", tag).manifest().engine.sha256


def test_one_gpu_tag_is_offered_only_to_its_compute_capability(fresh: Store, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No default model file: Triton on another GPU fails to load the model instead of running an sm89 engine."""
    import logging

    warnings: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append  # type: ignore[method-assign]
    monkeypatch.setattr(logging.getLogger("pipeline.triton"), "handlers", [handler])
    sm89 = fresh.resolve("tiny@1.0.0", SM89)
    channel.set_(fresh, "tiny", SM89, "staging", channel.pointer(sm89), {"at": "t"})
    done = export(fresh, "tiny", "staging", tmp_path / "repo")

    assert done.files == {SM89: "model.sm89.plan"}
    config = parse(done.model_dir / "config.pbtxt")
    assert config == pb.ModelConfig(name="tiny", platform="tensorrt_plan", max_batch_size=0,
                                    input=[pb.ModelInput(name="x", data_type=pb.TYPE_FP32, dims=[-1, 4])],
                                    output=[pb.ModelOutput(name="y", data_type=pb.TYPE_FP32, dims=[-1, 8])],
                                    cc_model_filenames={"8.9": "model.sm89.plan"})
    assert config.default_model_filename == ""
    assert sha256(done.model_dir / "1" / "model.sm89.plan") == sm89.manifest().engine.sha256
    (warning,) = warnings
    assert warning.levelname == "WARNING" and warning.getMessage().startswith(
        f"{SM89}: TensorRT-RTX engines load only in a Triton whose tensorrt_plan backend is built against "
        "TensorRT-RTX")


def test_versions_are_numbered_and_only_added_when_the_engines_change(fresh: Store, tmp_path: Path,
                                                                      models_dir: Path) -> None:
    repo = tmp_path / "repo"
    first = export(fresh, "tiny", "production", repo)
    again = export(fresh, "tiny", "production", repo)
    assert (again.version, again.changed) == (1, False)

    recipe = fresh.resolve("tiny@1.0.0", SM89).manifest().recipe.path
    [newer] = build(recipe, fresh, ("sm89",), force=True)
    channel.set_(fresh, "tiny", SM89, "production", channel.pointer(newer), {"at": "t"})
    second = export(fresh, "tiny", "production", repo)

    assert (second.version, second.changed) == (2, True)
    assert sorted(p.name for p in first.model_dir.iterdir()) == ["1", "2", "config.pbtxt"]
    assert sha256(repo / "tiny" / "2" / "model.sm89.plan") == newer.manifest().engine.sha256
    first_sm89 = fresh.resolve("tiny@1.0.0+1", SM89).manifest().engine.sha256
    assert sha256(repo / "tiny" / "1" / "model.sm89.plan") == first_sm89
    assert not [p for p in (repo / "tiny").iterdir() if p.name.startswith(".")]  # no staging left behind


def test_several_inputs_and_outputs_with_dynamic_dims(tmp_path: Path, models_dir: Path) -> None:
    store = Store(tmp_path / "store")
    [artifact] = build(write(tmp_path / "two.yaml", TWO_INPUT, models_dir / "two_input.onnx"), store)
    channel.set_(store, "two-input", SM89, "production", channel.pointer(artifact), {"at": "t"})
    done = export(store, "two-input", "production", tmp_path / "repo")

    config = parse(done.model_dir / "config.pbtxt")
    assert config == pb.ModelConfig(
        name="two-input", platform="tensorrt_plan", max_batch_size=0,
        input=[pb.ModelInput(name="image", data_type=pb.TYPE_FP32, dims=[-1, 3, -1, -1]),
               pb.ModelInput(name="scale", data_type=pb.TYPE_FP32, dims=[-1, 1])],
        output=[pb.ModelOutput(name="features", data_type=pb.TYPE_FP32, dims=[-1, 8]),
                pb.ModelOutput(name="heatmap", data_type=pb.TYPE_FP32, dims=[-1, 1, -1, -1])],
        cc_model_filenames={"8.9": "model.sm89.plan"})


def test_every_supported_data_type_and_quoted_names_parse_back() -> None:
    dtypes = {"float": pb.TYPE_FP32, "half": pb.TYPE_FP16, "bf16": pb.TYPE_BF16, "int8": pb.TYPE_INT8,
              "int32": pb.TYPE_INT32, "int64": pb.TYPE_INT64, "bool": pb.TYPE_BOOL, "uint8": pb.TYPE_UINT8}
    inputs = {f'in "{name}"\\x': {"dtype": name, "shape": [2, -1]} for name in dtypes}
    text = config_text("m", inputs, {"out": {"dtype": "half", "shape": [3]}}, {"8.6": "a.plan", "12.1": "b.plan"})
    config = text_format.Parse(text, pb.ModelConfig())
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        (f'in "{name}"\\x', dtype, [2, -1]) for name, dtype in dtypes.items()]
    assert dict(config.cc_model_filenames) == {"8.6": "a.plan", "12.1": "b.plan"}


def test_a_type_triton_lacks_is_a_one_line_error() -> None:
    with pytest.raises(StoreError) as error:
        config_text("m", {"x": {"dtype": "fp8", "shape": [1]}}, {}, {"8.9": "model.plan"})
    assert str(error.value) == ("Triton has no data type for TensorRT fp8 (input 'x'); it takes float, half, bf16, "
                                "int8, int32, int64, bool, uint8")


def test_nothing_on_the_channel_is_an_error_with_the_next_step(three: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as error:
        export(three, "tiny", "candidate", tmp_path / "repo")
    assert str(error.value) == f"no GPU tag of 'tiny' has a 'candidate' channel in store {three.root}"
    assert error.value.hint == ("promote a build first: trt-pipeline promote tiny@VERSION --from TAG --to TAG "
                                "--channel candidate")
    assert not (tmp_path / "repo").exists()


def test_tags_with_different_interfaces_cannot_share_a_model(fresh: Store, tmp_path: Path) -> None:
    fresh.update_manifest(fresh.resolve("tiny@1.0.0", SM120),
                          lambda m: m["network"]["outputs"]["y"].update(shape=[-1, 9]))
    with pytest.raises(StoreError, match=r"^sm120\.rtx-1\.7\.1 and sm86\.rtx-1\.7\.1 have different engine outputs "):
        export(fresh, "tiny", "production", tmp_path / "repo")
