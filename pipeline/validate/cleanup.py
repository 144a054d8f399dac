"""The cleanup check, on every build and on CPU: ONNX Runtime on the cleaned graph vs the original model."""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.digest import plain
from pipeline.errors import BuildError
from pipeline.recipe import Recipe, ValidateSpec
from pipeline.validate.compare import (
    ShapeSet,
    compare,
    failed_outputs,
    failures,
    frozen_feed,
    quiet_onnxruntime,
    recipe_profiles,
    record_of,
    seeded_feed,
    shape_sets,
)

# ---------------------------------------------------------------- cleanup check (every build, CPU)


# One small shape per profile: its min, with every dimension raised to 2 where the profile allows, so that a pass
# that bakes in a batch of 1 still shows. ONNX Runtime's cost grows with the shape (ResNet-50 on 2 cores: ~0.2 s at
# batch 2, ~0.6 s at opt (8) per side, ~30 s for min, opt and max).
SMALL = "small"


# The record's reason when graph-cleanup changed nothing that computes (graph_cleanup.unchanged).
UNCHANGED = ("graph-cleanup changed only the order of the graph's nodes: the cleaned graph computes exactly what "
             "the original does, so there was nothing for ONNX Runtime to compare")


def cleanup_check(recipe: Recipe, cleaned: Path, model: Mapping[str, Any], inputs: Mapping[str, dict],
                  log: Any, stopping: threading.Event, unchanged: bool = False) -> Callable[[], dict]:
    """A build's cleanup check, ready to run on any thread: ONNX Runtime on the cleaned graph at `cleaned` (whose
    `inputs` are given, as parse.describe records them) vs the original model (`model`: parse's record of it), with
    the same seeded inputs and the recipe's tolerances. The job raises BuildError naming the outputs that differ,
    and returns the manifest's `cleanup_check` record. Polygraphy must already point at the build's TensorRT.
    When the cleaned graph is `unchanged` (the original's, its nodes at most reordered) the job only records that
    the check was skipped, and why: it imports and runs nothing."""
    spec = dataclasses.replace(recipe.validate or ValidateSpec(), shapes=(SMALL,))
    frozen = plain(recipe.spec("graph-cleanup").freeze_inputs)
    if unchanged:
        return functools.partial(record_of, "skipped", spec, UNCHANGED, frozen_inputs=frozen, seconds=0.0)
    profiles = [{name: {**point, SMALL: [max(lo, min(2, hi)) for lo, hi in zip(point["min"], point["max"])]}
                 for name, point in profile.items()} for profile in recipe_profiles(recipe)]
    return functools.partial(
        _check_cleaned, {"cleaned": cleaned, "original": recipe.model_path},
        shape_sets(profiles, spec.shapes, inputs), {name: i["dtype"] for name, i in inputs.items()},
        frozen, frozen_feed(frozen, model["inputs"]), list(model["outputs"]), spec, log, stopping)


def _check_cleaned(models: Mapping[str, Path], sets: Sequence[ShapeSet], dtypes: Mapping[str, str],
                   frozen: dict, fixed: Mapping[str, Any], outputs: Sequence[str], spec: ValidateSpec,
                   log: Any, stopping: threading.Event) -> dict:
    from polygraphy.backend.onnxrt import OnnxrtRunner

    started = time.perf_counter()
    quiet_onnxruntime(log)
    feeds = [{**seeded_feed(s, dtypes, spec.seed), **fixed} for s in sets]
    runners = lambda profile: [OnnxrtRunner(functools.partial(_beside_build, models[name], stopping),  # noqa: E731
                                            name=name) for name in ("cleaned", "original")]
    rows = compare(runners, sets, feeds, outputs, spec, "graph-cleanup: the cleanup check could not run ONNX Runtime")
    bad = failures(rows)
    for line in bad:
        log.info("graph-cleanup: cleaned graph differs from the original: %s", line)  # all, in build.log
    if bad:
        raise BuildError(f"graph-cleanup: the cleaned graph changes the numerics of output(s) "
                         f"{', '.join(failed_outputs(rows))}: {bad[0]}",
                         hint="a cleanup pass changed what the model computes; check freeze_inputs and the passes "
                              "(tolerances come from the recipe's validate: block)")
    return record_of("passed", spec, None, rows, frozen_inputs=frozen, seconds=round(time.perf_counter() - started, 3))


def _beside_build(path: Path, stopping: threading.Event) -> Any:
    """An ONNX Runtime CPU session that runs the graph as written (no graph optimizations: half the memory and
    start-up time of the default on ResNet-50; no pre-packed weights) and leaves one core to the TensorRT build running beside it.
    Not made once the build is stopping (Ctrl-C): the check then ends at its next session."""
    import onnxruntime

    if stopping.is_set():
        raise BuildError("graph-cleanup: the cleanup check was stopped")

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    # No pre-packed copies of the weights (MatMul, Conv): ONNX Runtime then reads external data straight from its
    # memory map, page cache shared with the original's session and with TensorRT, instead of a private copy
    # of every weight per session (2.25 GiB of MatMul weights: 0.7 s instead of 3.8 s, no anonymous memory).
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)) - 1)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
