"""Shared fixtures: tiny real ONNX models made once per session, temp stores, recipe files."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from models.make_models import MODELS, write_model
from pipeline.store import Store

FORBIDDEN_STORE = "/proc/trt-pipeline-tests-must-pass-a-store"


@pytest.fixture(autouse=True)
def _no_default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that forgets --store or a temp Store fails instead of writing into the repo's artifacts/."""
    monkeypatch.setenv("TRT_PIPELINE_STORE", FORBIDDEN_STORE)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny, two_input and cleanup_needed as real ONNX files (resnet50 has its own fixture: it is 100 MB)."""
    path = tmp_path_factory.mktemp("models")
    for name in ("tiny", "two_input", "cleanup_needed"):
        write_model(MODELS[name](), path / f"{name}.onnx")
    return path


@pytest.fixture(scope="session")
def resnet50_path(models_dir: Path) -> Path:
    path = models_dir / "resnet50.onnx"
    if not path.exists():
        write_model(MODELS["resnet50"](), path)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


TINY_STAGES = """\
stages:
  - parse: {}
  - network-flag: {strongly_typed: true}
  - memory-pool: {workspace: 64MiB}
  - serialize:
      profiles:
        - x: {min: [1, 4], opt: [8, 4], max: [64, 4]}
"""


@pytest.fixture
def write_recipe(tmp_path: Path, models_dir: Path) -> Callable[..., Path]:
    """write_recipe(body, name='r.yaml') -> path. `{models}` in body is replaced by the models directory."""

    def write(body: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body).replace("{models}", str(models_dir)))
        return path

    return write


@pytest.fixture
def tiny_recipe(write_recipe: Callable[..., Path]) -> Path:
    """The smallest complete recipe: tiny model, one target, no cleanup."""
    return write_recipe("name: tiny\nversion: 1.0.0\nmodel: {path: {models}/tiny.onnx}\nbackend: tensorrt-rtx\n"
                        "targets: [sm89]\n" + TINY_STAGES)


# ---------------------------------------------------------------- core pipeline tests (issue 2)

from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from pipeline.stages.context import Context
    from pipeline.trt.backend import Backend


@pytest.fixture(scope="session")
def rtx_backend() -> Backend:
    """The real TensorRT-RTX backend (it builds engines on this CPU-only machine)."""
    from pipeline.trt.backend import load

    return load("tensorrt-rtx")


@pytest.fixture
def build_context(tmp_path: Path, rtx_backend: Backend) -> Callable[..., Context]:
    """build_context(recipe_path, target='sm89') -> a real build Context for running stages one by one:
    TensorRT-RTX, the project's TensorRT logger on logger 'x.trt', scratch and staged dirs under tmp_path."""
    import logging

    from pipeline import recipe as recipes
    from pipeline.build import runner
    from pipeline.trt.gpu import Probe
    from pipeline.trt.target import resolve

    def make(recipe_path: Path, target: str = "sm89") -> Context:
        log = logging.getLogger("x")
        scratch, staged = tmp_path / "scratch", tmp_path / "staged"
        scratch.mkdir(exist_ok=True)
        staged.mkdir(exist_ok=True)
        no_gpu = Probe(False, (), "no CUDA driver (test)")
        return runner.context(recipes.load(recipe_path), rtx_backend, scratch, log,
                              target=resolve(target, rtx_backend, no_gpu), staged=staged)

    return make


def run_stages(ctx: Context, *names: str) -> None:
    """Run the named stages, in the order given, on one context; then wait for the checks they started beside
    them, as the runner does before it publishes (the first failure is raised)."""
    from pipeline.stages import REGISTRY

    for name in names:
        REGISTRY[name].run(ctx)
    ctx.background.wait()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: the one README test that builds the full ResNet-50 (~10 s); "
                                       "deselect with -m 'not slow'")


NOT_A_PLUGIN = """\
#include <cstdint>
// Exports the entry points TensorRT looks for, but offers no plugin creator: a library TensorRT refuses.
extern "C" void setLoggerFinder(void*) {}
extern "C" void* const* getCreators(int32_t& count) { count = 0; return nullptr; }
"""


@pytest.fixture(scope="session")
def not_a_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real shared library, compiled here, that TensorRT's plugin registry loads and then refuses."""
    import shutil
    import subprocess

    if shutil.which("g++") is None:
        pytest.skip("needs g++ to compile a stand-in plugin library")
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "noop.cpp").write_text(NOT_A_PLUGIN)
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(folder / "libnoop.so"), str(folder / "noop.cpp")], check=True)
    return folder / "libnoop.so"
