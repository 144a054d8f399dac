"""backend: which TensorRT, what it can do, and its log routed into Python logging."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import tensorrt_rtx

from pipeline.errors import BackendError
from pipeline.trt import backend as backends
from pipeline.trt.backend import Backend

REPO = Path(__file__).resolve().parents[2]


def without_full_tensorrt(name: str) -> Any:
    """An importer for a machine where `tensorrt` is not installed; everything else is imported for real."""
    if name == "tensorrt":
        raise ImportError("No module named 'tensorrt'")
    return importlib.import_module(name)


def test_load_tensorrt_rtx() -> None:
    backend = backends.load("tensorrt-rtx")
    assert backend.name == "tensorrt-rtx"
    assert backend.trt is tensorrt_rtx
    assert backend.version == tensorrt_rtx.__version__
    assert backend.short_version == ".".join(tensorrt_rtx.__version__.split(".")[:3])
    assert backend.major == int(tensorrt_rtx.__version__.split(".")[0])
    assert backend.is_rtx
    assert backend.label() == f"tensorrt-rtx {tensorrt_rtx.__version__}"


def test_auto_falls_back_to_rtx_when_tensorrt_cannot_import() -> None:
    asked: list[str] = []

    def importer(name: str) -> Any:
        asked.append(name)
        return without_full_tensorrt(name)

    backend = backends.load("auto", importer)
    assert (backend.name, backend.trt) == ("tensorrt-rtx", tensorrt_rtx)
    assert asked == ["tensorrt", "tensorrt_rtx"]


def test_auto_prefers_full_tensorrt_when_it_imports() -> None:
    """What 'auto' picks when `tensorrt` imports (here a stand-in module: full TensorRT cannot install here)."""
    full = types.ModuleType("tensorrt")
    full.__version__ = "11.4.0.106"  # type: ignore[attr-defined]
    backend = backends.load("auto", lambda name: full if name == "tensorrt" else importlib.import_module(name))
    assert (backend.name, backend.trt, backend.is_rtx, backend.short_version) == ("tensorrt", full, False, "11.4.0")


def test_auto_with_nothing_importable() -> None:
    def importer(name: str) -> Any:
        raise ImportError(f"No module named '{name}'")

    with pytest.raises(BackendError) as caught:
        backends.load("auto", importer)
    assert str(caught.value) == "no TensorRT is importable (tried tensorrt, tensorrt_rtx)"
    assert caught.value.hint == "install one: pip install tensorrt-rtx"


def test_unimportable_backend_has_an_install_hint() -> None:
    with pytest.raises(BackendError) as caught:
        backends.load("tensorrt", without_full_tensorrt)
    assert str(caught.value) == "backend 'tensorrt' cannot be imported: No module named 'tensorrt'"
    assert caught.value.hint == ("install it: pip install 'trt-pipeline[tensorrt]' (needs NVIDIA's package index "
                                 "and a data-centre GPU driver)")


def test_half_installed_wheel_is_not_a_backend() -> None:
    """The `tensorrt` bindings wheel installs without libnvinfer: the module exists but is empty."""
    empty = types.ModuleType("tensorrt")
    with pytest.raises(BackendError) as caught:
        backends.load("tensorrt", lambda name: empty)
    assert str(caught.value).startswith("backend 'tensorrt' cannot be imported: ")
    assert caught.value.hint is not None and caught.value.hint.startswith("install it: ")


def test_missing_shared_library_is_a_backend_error() -> None:
    def importer(name: str) -> Any:
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    with pytest.raises(BackendError, match="libnvinfer.so.10"):
        backends.load("tensorrt", importer)


def test_unknown_backend() -> None:
    with pytest.raises(BackendError) as caught:
        backends.load("tensorflow")
    assert str(caught.value) == "unknown backend 'tensorflow'"
    assert caught.value.hint == "use one of auto, tensorrt, tensorrt-rtx"


def test_member_and_require_with_real_enums(rtx_backend: Backend) -> None:
    trt = rtx_backend.trt
    assert rtx_backend.member("MemoryPoolType", "WORKSPACE") == trt.MemoryPoolType.WORKSPACE
    assert rtx_backend.member("ComputeCapability", "SM89") == trt.ComputeCapability.SM89
    assert rtx_backend.member("NetworkDefinitionCreationFlag", "STRONGLY_TYPED") is not None
    assert rtx_backend.member("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH") is None  # gone in TensorRT-RTX
    assert rtx_backend.member("BuilderFlag", "FP16") is None  # no weak typing in TensorRT-RTX
    assert rtx_backend.member("NoSuchEnum", "X") is None
    assert rtx_backend.require("BuilderFlag", "TF32", "tf32") == trt.BuilderFlag.TF32
    with pytest.raises(BackendError) as caught:
        rtx_backend.require("BuilderFlag", "FP16", "serialize.flags: fp16")
    assert str(caught.value) == (f"serialize.flags: fp16 needs BuilderFlag.FP16, which {rtx_backend.label()} "
                                 "does not have")


def test_member_names(rtx_backend: Backend) -> None:
    names = rtx_backend.member_names("ComputeCapability")
    assert names == sorted(tensorrt_rtx.ComputeCapability.__members__)
    assert {"SM86", "SM89", "SM120"} <= set(names)
    assert rtx_backend.member_names("NoSuchEnum") == []


def tiny_engine(backend: Backend, logger: Any, model: Path) -> bytes:
    trt = backend.trt
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(model))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (2, 4), (4, 4))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    return bytes(plan)


def test_make_logger_routes_tensorrt_messages_into_logging(
        rtx_backend: Backend, models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    logger = backends.make_logger(rtx_backend, logging.getLogger("x.trt"))
    assert isinstance(logger, rtx_backend.trt.ILogger)
    with caplog.at_level(logging.DEBUG, logger="x.trt"):
        assert tiny_engine(rtx_backend, logger, models_dir / "tiny.onnx")
    mine = [r for r in caplog.records if r.name == "x.trt"]
    infos = [r.getMessage() for r in mine if r.levelno == logging.INFO]
    assert any("Engine generation completed" in m for m in infos), infos
    assert all(m.startswith("[tensorrt-rtx] ") for m in infos)
    assert logger.errors == []


def test_make_logger_keeps_errors_for_the_summary(rtx_backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    trt = rtx_backend.trt
    logger = backends.make_logger(rtx_backend, logging.getLogger("x.trt"))
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    with caplog.at_level(logging.INFO, logger="x.trt"):
        assert not parser.parse(b"garbage")  # not an ONNX protobuf
    errors = [r.getMessage() for r in caplog.records if r.name == "x.trt" and r.levelno == logging.ERROR]
    assert errors and "MODEL_DESERIALIZE_FAILED" in errors[-1]
    assert logger.errors and "MODEL_DESERIALIZE_FAILED" in logger.errors[-1]


# ---------------------------------------------------------------- installed_version and deferred (remembered plans)


def test_installed_version_is_the_version_the_module_reports() -> None:
    assert backends.installed_version("tensorrt-rtx") == tensorrt_rtx.__version__
    assert backends.installed_version("no-such-tensorrt-distribution") is None


def test_installed_version_agrees_with_importlib_metadata_for_every_installed_package() -> None:
    from importlib import metadata

    names = {d.metadata["Name"] for d in metadata.distributions()}
    assert len(names) > 20
    for name in sorted(names):
        assert backends.installed_version(name) == metadata.version(name), name
        assert backends.installed_version(name.upper().replace("-", "_")) == metadata.version(name), name


def test_installed_version_reads_egg_info_and_takes_the_first_on_sys_path(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "Some.Tool-2.0-py3.11.egg-info").mkdir(parents=True)
    (first / "Some.Tool-2.0-py3.11.egg-info" / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: Some.Tool\n"
                                                                     "Version: 2.0\n\nVersion: body\n")
    (second / "some_tool-1.0.dist-info").mkdir(parents=True)
    (second / "some_tool-1.0.dist-info" / "METADATA").write_text("Name: some_tool\nVersion: 1.0\n")
    (second / "lone-3.1.egg-info").write_text("Name: lone\nVersion: 3.1\n")  # an egg-info file
    monkeypatch.setattr(sys, "path", [str(first), str(tmp_path / "missing"), str(second)])
    assert backends.installed_version("some-tool") == "2.0"
    assert backends.installed_version("lone") == "3.1"
    monkeypatch.setattr(sys, "path", [str(second)])
    assert backends.installed_version("SOME_TOOL") == "1.0"


def test_a_deferred_backend_is_the_real_one_once_used(rtx_backend: Backend) -> None:
    backend = backends.deferred("tensorrt-rtx", tensorrt_rtx.__version__)
    assert (backend.name, backend.version, backend.label()) == ("tensorrt-rtx", rtx_backend.version,
                                                                rtx_backend.label())
    assert (backend.short_version, backend.major, backend.is_rtx) == (rtx_backend.short_version, rtx_backend.major,
                                                                      True)
    assert backend.trt is tensorrt_rtx
    assert backend.trt is tensorrt_rtx  # imported once
    assert backend.member("ComputeCapability", "SM89") is tensorrt_rtx.ComputeCapability.SM89
    assert backend.member_names("MemoryPoolType") == rtx_backend.member_names("MemoryPoolType")


def test_a_deferred_backend_answers_its_version_without_importing() -> None:
    """In a fresh interpreter: name, version and tag spelling without TensorRT; `.trt` imports it."""
    code = ("import sys\nfrom pipeline.trt import backend\n"
            f"b = backend.deferred('tensorrt-rtx', {tensorrt_rtx.__version__!r})\n"
            "print(b.label(), b.short_version, b.major, b.is_rtx, 'tensorrt_rtx' in sys.modules)\n"
            "print(b.trt.__name__, 'tensorrt_rtx' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    short, major = ".".join(tensorrt_rtx.__version__.split(".")[:3]), tensorrt_rtx.__version__.split(".")[0]
    assert done.stdout.splitlines() == [f"tensorrt-rtx {tensorrt_rtx.__version__} {short} {major} True False",
                                        "tensorrt_rtx True"]


def test_a_deferred_backend_that_does_not_import_fails_only_when_used() -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("full TensorRT is installed here: it would import")
    backend = backends.deferred("tensorrt", "10.9.0.34")
    assert (backend.label(), backend.short_version, backend.major) == ("tensorrt 10.9.0.34", "10.9.0", 10)
    with pytest.raises(BackendError, match="^backend 'tensorrt' cannot be imported: "):
        backend.trt  # noqa: B018 - the import is the point
