"""Shared fixtures: tiny real ONNX models made once per session, temp stores, recipe files."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable

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
