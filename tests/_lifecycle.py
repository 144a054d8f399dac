"""Helpers for the lifecycle tests: real TensorRT-RTX builds of the tiny model into a temp store.

Not a test module (no `test_` prefix); the racing workers live here so spawned processes can import them.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
from collections.abc import Callable
from pathlib import Path

import tensorrt_rtx

from pipeline import recipe as recipes
from pipeline.build import plan as plans
from pipeline.build import runner
from pipeline.store import Artifact, Store
from pipeline.trt import backend as backends
from pipeline.trt.gpu import Probe
from tests.conftest import TINY_STAGES

RTX = ".".join(tensorrt_rtx.__version__.split(".")[:3])  # the installed TensorRT-RTX, as tags spell it
SM86, SM89, SM120 = f"sm86.rtx-{RTX}", f"sm89.rtx-{RTX}", f"sm120.rtx-{RTX}"
NO_GPU = Probe(False, (), "no CUDA driver on this machine (test)")
LOG = logging.getLogger("test.lifecycle")

TINY = "name: tiny\nversion: 1.0.0\nmodel: {path: MODEL}\nbackend: tensorrt-rtx\ntargets: [sm86, sm89, sm120]\n" + TINY_STAGES

TWO_INPUT = """\
name: two-input
version: 2.1.0
model: {path: MODEL}
backend: tensorrt-rtx
targets: [sm89]
stages:
  - parse: {}
  - network-flag: {strongly_typed: true}
  - memory-pool: {workspace: 256MiB}
  - serialize:
      profiles:
        - image: {min: [1, 3, 32, 32], opt: [2, 3, 64, 64], max: [4, 3, 128, 128]}
          scale: {min: [1, 1], opt: [2, 1], max: [4, 1]}
"""


def write(path: Path, body: str, model: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body.replace("MODEL", str(model)))
    return path


def build(recipe_path: Path, store: Store, targets: tuple[str, ...] = (), force: bool = False) -> list[Artifact]:
    """A real build with TensorRT-RTX (no GPU needed), through the runner like `trt-pipeline build`."""
    plan = plans.make_plan(recipes.load(recipe_path), backends.load("tensorrt-rtx"), NO_GPU, targets)
    return [outcome.artifact for outcome in runner.build(plan, store, LOG, force=force)]


def copy_store(template: Store, dest: Path) -> Store:
    shutil.copytree(template.root, dest)
    return Store(dest)


def set_validation(store: Store, artifact: Artifact, status: str, reason: str | None = None) -> None:
    """What a GPU validation run records (pipeline.validate.record writes the same block); used because this
    machine has no GPU, so a real validation can only be 'skipped' here."""

    def change(manifest: dict) -> None:
        manifest["validation"] = {"status": status, "reason": reason, "gpu": "NVIDIA GeForce RTX 4090 (test edit)"}

    store.update_manifest(artifact, change)


def race_channel(root: str, tag: str, prefix: str, count: int, start: object) -> None:
    """Worker: `count` channel updates of one tag file, each to its own channel name."""
    from pipeline.lifecycle import channel

    store = Store(Path(root))
    start.wait()  # type: ignore[attr-defined]
    for index in range(count):
        entry = {"ref": "tiny@1.0.0", "version": "1.0.0", "build": 1, "tag": tag, "engine_sha256": prefix}
        channel.set_(store, "tiny", tag, f"{prefix}{index}", entry, {"at": "now", "by": prefix})


def race_promote(root: str, ref: str, tag: str, channel_name: str, reason: str, start: object) -> None:
    """Worker: one real promotion (reuse, production with a waiver) through pipeline.promote."""
    from pipeline.lifecycle import promote

    start.wait()  # type: ignore[attr-defined]
    promote.promote(Store(Path(root)), ref, tag, tag, channel_name, by=f"worker-{reason}", log=LOG,
                    allow_unvalidated=True, reason=reason, probe=NO_GPU)


def race(target: Callable[..., None], calls: list[tuple], timeout: float) -> None:
    """Run target(*args, start) in one spawned process per args tuple, released together; each must exit 0."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=target, args=(*args, start)) for args in calls]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout)
        assert worker.exitcode == 0
