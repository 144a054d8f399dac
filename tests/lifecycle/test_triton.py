"""triton: the exported model repository, its config.pbtxt parsed back with Triton's own model_config.proto."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import text_format

from pipeline.errors import PipelineError, StoreError
from pipeline.lifecycle import channel
from pipeline.lifecycle.triton import Settings, config_text, export, settings_problem
from pipeline.manifest import NetworkRecord
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


# ---------------------------------------------------------------- channels, settings, where


def test_a_second_channel_is_refused_in_the_first_ones_folder_and_exports_under_its_own_name(
        fresh: Store, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sm89 = fresh.resolve("tiny@1.0.0", SM89)
    channel.set_(fresh, "tiny", SM89, "candidate", channel.pointer(sm89), {"at": "t"})
    first = export(fresh, "tiny", "production", repo)
    config = (first.model_dir / "config.pbtxt").read_text()
    with pytest.raises(PipelineError) as error:
        export(fresh, "tiny", "candidate", repo)
    assert str(error.value) == (f"{repo / 'tiny'} holds the 'production' channel of 'tiny' (version 1); one Triton "
                                "model serves one channel: export 'candidate' as another model, e.g. --model-name "
                                "tiny-candidate, or into another --repo")
    assert (first.model_dir / "config.pbtxt").read_text() == config  # untouched
    second = export(fresh, "tiny", "candidate", repo, model_name="tiny-candidate")
    assert (second.model_dir, second.version) == (repo / "tiny-candidate", 1)
    assert parse(second.model_dir / "config.pbtxt").name == "tiny-candidate"
    again = export(fresh, "tiny", "production", repo)  # the first channel again: no duplicate version
    assert (again.version, again.changed) == (1, False)
    for done in (first, second):  # each config names exactly the files of its version
        names = set(parse(done.model_dir / "config.pbtxt").cc_model_filenames.values())
        assert names == {p.name for p in (done.model_dir / "1").iterdir()} - {"provenance.json"}
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "config.pbtxt"]


def test_a_folder_not_written_by_export_is_refused(fresh: Store, tmp_path: Path) -> None:
    (tmp_path / "repo" / "tiny" / "1").mkdir(parents=True)
    with pytest.raises(PipelineError, match=r"holds a version not written by trt-pipeline export \(version 1\)"):
        export(fresh, "tiny", "production", tmp_path / "repo")


def test_batching_dynamic_batching_and_instances(three: Store, tmp_path: Path) -> None:
    settings = Settings(max_batch_size=32, dynamic_batching=True, max_queue_delay_us=500, instances=2)
    done = export(three, "tiny", "production", tmp_path / "repo", settings)
    config = parse(done.model_dir / "config.pbtxt")
    assert config == pb.ModelConfig(
        name="tiny", platform="tensorrt_plan", max_batch_size=32,
        input=[pb.ModelInput(name="x", data_type=pb.TYPE_FP32, dims=[4])],  # the batch dim is Triton's
        output=[pb.ModelOutput(name="y", data_type=pb.TYPE_FP32, dims=[8])],
        dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=500),
        instance_group=[pb.ModelInstanceGroup(count=2, kind=pb.ModelInstanceGroup.KIND_GPU)],
        cc_model_filenames={"8.6": "model.sm86.plan", "8.9": "model.sm89.plan", "12.0": "model.sm120.plan"})
    plain = export(three, "tiny", "production", tmp_path / "repo", Settings(max_batch_size=64, dynamic_batching=True))
    assert plain.changed is False  # same engines: the config changes, not the version
    config = parse(done.model_dir / "config.pbtxt")
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching") and not config.instance_group


@pytest.mark.parametrize(("settings", "message"), [
    (Settings(max_batch_size=65), f"--max-batch-size 65: {SM120}'s profile 0 gives input 'x' batches 1 to 64; Triton "
                                  "sends batches 1 to 65: lower --max-batch-size or rebuild with that profile"),
    (Settings(dynamic_batching=True), "dynamic batching needs a batch dimension: give --max-batch-size N too"),
])
def test_settings_the_engines_cannot_serve_are_refused(three: Store, tmp_path: Path, settings: Settings,
                                                       message: str) -> None:
    with pytest.raises(PipelineError) as error:
        export(three, "tiny", "production", tmp_path / "repo", settings)
    assert str(error.value) == message
    assert not (tmp_path / "repo").exists()


def test_a_static_first_dimension_cannot_be_the_batch() -> None:
    network = NetworkRecord((), {"x": {"dtype": "float", "shape": [1, 4]}}, {"y": {"dtype": "float", "shape": [-1]}},
                            ())
    assert settings_problem(Settings(max_batch_size=8), [], network) == (
        "--max-batch-size 8 makes the first dimension Triton's batch, but input 'x' has shape [1, 4], whose first "
        "dimension is not dynamic; export without --max-batch-size (max_batch_size 0: the batch is an ordinary "
        "dimension)")


@pytest.mark.parametrize("inside", [".", "tiny", "tiny/1.0.0/" + SM89])
def test_a_repository_inside_the_store_is_refused(fresh: Store, inside: str) -> None:
    before = sorted(str(p) for p in fresh.root.rglob("*"))
    repo = fresh.root / inside
    with pytest.raises(PipelineError) as error:
        export(fresh, "tiny", "production", repo)
    assert str(error.value) == (f"--repo {repo} is inside the artifact store {fresh.root} (or holds it); the store's "
                                "directories are written only by the store: export to a directory outside it")
    assert sorted(str(p) for p in fresh.root.rglob("*")) == before


def test_a_repository_above_the_store_is_fine_unless_the_model_folder_is_the_store(fresh: Store) -> None:
    repo = fresh.root.parent  # the store is repo/store
    with pytest.raises(PipelineError, match=r"is inside the artifact store"):
        export(fresh, "tiny", "production", repo, model_name=fresh.root.name)
    assert export(fresh, "tiny", "production", repo).model_dir == repo / "tiny"


@pytest.mark.parametrize("model_name", ["../escaped", "a/b", ".", "..", "", "/abs"])
def test_a_model_name_that_is_not_one_folder_name_is_refused(fresh: Store, tmp_path: Path, model_name: str) -> None:
    repo = tmp_path / "repo" / "inner"
    with pytest.raises(PipelineError) as error:
        export(fresh, "tiny", "production", repo, model_name=model_name)
    assert str(error.value) == (f"--model-name {model_name!r}: expected one folder name like 'tiny-candidate' (a Triton "
                                "model is one folder of the repository: no '/', not '.' or '..', not empty)")
    assert not (tmp_path / "repo").exists()


def test_a_tensor_that_is_only_the_batch_is_one_element_reshaped_to_none() -> None:
    """Triton refuses empty dims: an output of shape [batch] is dims [1] with reshape [] once Triton owns the batch."""
    outputs = {"score": {"dtype": "float", "shape": [-1]}, "y": {"dtype": "float", "shape": [-1, 8]}}
    text = config_text("m", {"x": {"dtype": "float", "shape": [-1, 4]}}, outputs, {"8.9": "a.plan"},
                       Settings(max_batch_size=8))
    config = text_format.Parse(text, pb.ModelConfig())
    score, y = config.output
    assert (score.name, list(score.dims), score.HasField("reshape"), list(score.reshape.shape)) == \
        ("score", [1], True, [])
    assert (list(y.dims), y.HasField("reshape")) == ([8], False)
    assert (list(config.input[0].dims), config.input[0].HasField("reshape")) == ([4], False)
