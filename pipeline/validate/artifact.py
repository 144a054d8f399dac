"""Prove an engine against ONNX Runtime on the original model, and record the result in the store.

An engine's validation is `passed` only when it really ran on a GPU and every output matched.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from pipeline import clock
from pipeline import recipe as recipes
from pipeline.digest import file_sha256
from pipeline.errors import CannotRunHere, PipelineError, RecipeError
from pipeline.manifest import Manifest
from pipeline.recipe import Recipe, ValidateSpec
from pipeline.store import Artifact, Store
from pipeline.trt import runtime as engines
from pipeline.trt.backend import make_logger
from pipeline.trt.gpu import Probe
from pipeline.trt.polygraphy import one_line_errors, quiet, use_polygraphy
from pipeline.validate.compare import (
    ShapeSet,
    compare,
    failed_outputs,
    failures,
    frozen_feed,
    quiet_onnxruntime,
    record_of,
    seeded_feed,
    shape_sets,
)

REPORT = "validation.json"


# ---------------------------------------------------------------- engine validation (GPU)


def settings(manifest: Manifest, log: Any) -> ValidateSpec:
    """The validate: block the artifact was built with, as its manifest records it (defaults when the recipe
    had none), so that validation runs the same on any machine. Older manifests: read from the recipe file."""
    if manifest.validate is not None:
        return manifest.validate
    path = manifest.recipe.path
    try:
        recipe = recipes.load(path)
    except RecipeError as error:
        raise RecipeError(error.problems, hint="validation reads tolerances and shapes from the artifact's recipe; "
                                               f"restore {path}") from None
    if recipe.sha256 != manifest.recipe.sha256:
        log.warning("%s changed since this artifact was built; using its current validate: block", path)
    return recipe.validate or ValidateSpec()


def engine_feeds(manifest: Manifest, spec: ValidateSpec) -> tuple[list[ShapeSet], list[dict]]:
    """The shape sets and seeded feeds for an engine: its inputs at each requested profile point, plus the
    inputs graph-cleanup froze (the original model still needs them; the engine ignores them)."""
    model_inputs, engine_inputs = manifest.model.inputs, manifest.network.inputs
    sets = shape_sets(manifest.config.profiles, spec.shapes, engine_inputs)
    fixed = frozen_feed(manifest.cleanup_check.frozen_inputs if manifest.cleanup_check else {}, model_inputs)
    dtypes = {name: model_inputs[name]["dtype"] for name in engine_inputs}
    return sets, [{**seeded_feed(s, dtypes, spec.seed), **fixed} for s in sets]


def original_model(manifest: Manifest, given: Path | None = None) -> Path:
    """The model the engine came from, as it was at build time (checked by sha256): `given` (--model, e.g. on
    a GPU machine where the build machine's path does not exist), else the path the manifest records."""
    path = given or manifest.model.path
    if not path.is_file() or file_sha256(path) != manifest.model.sha256:
        raise PipelineError(f"the original model {path} is missing or is not the one the engine was built from "
                            f"(sha256 {manifest.model.sha256[:12]}); validation compares against that exact "
                            "model", hint="pass its path with --model PATH")
    return path


def _engine_rows(artifact: Artifact, manifest: Manifest, spec: ValidateSpec, environ: MutableMapping[str, str],
                 log: Any, model: Path | None = None) -> list[dict]:
    """TensorRT (Polygraphy's TrtRunner on the engine) vs ONNX Runtime on the ORIGINAL model."""
    backend = engines.runtime_backend(manifest)
    use_polygraphy(backend, environ)
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    original = original_model(manifest, model)
    quiet_onnxruntime(log)
    runtime = engines.runtime_for(backend, make_logger(backend, log.getChild("trt")), manifest.network.plugins)
    with quiet(), one_line_errors("cannot load the engine"):
        trt_engine = EngineFromBytes((artifact.path / manifest.engine.file).read_bytes(), runtime=runtime)()
    sets, feeds = engine_feeds(manifest, spec)
    runners = lambda profile: [TrtRunner(trt_engine, name="tensorrt", optimization_profile=profile),  # noqa: E731
                               OnnxrtRunner(SessionFromOnnx(str(original)), name="onnxruntime")]
    return compare(runners, sets, feeds, list(manifest.model.outputs), spec, "validation could not run")


def validate_artifact(store: Store, artifact: Artifact, spec: ValidateSpec, probe: Probe,
                      environ: MutableMapping[str, str], log: Any,
                      run: Callable[..., list[dict]] | None = None, model: Path | None = None) -> dict:
    """Validate one artifact and record the result (validation.json + the manifest's `validation` block).
    `skipped` when this machine cannot run the engine, with the probe's reason; `passed` only after a real run.
    A run that compared nothing (skipped, or could not complete) never replaces a recorded passed/failed result:
    the report then says `recorded: false`. A damaged engine (Store.verified) that this machine would run is a
    StoreError: nothing is recorded. (A machine that cannot run it may hold only the manifest: a farm node.)"""
    manifest = artifact.manifest()
    gpu = None
    try:
        gpu = engines.runnable_gpu(manifest, probe)
    except CannotRunHere as error:
        report = record_of("skipped", spec, error.reason)
    else:
        store.verified(artifact)  # a damaged engine: the StoreError goes up, nothing is recorded
        report = _compared(artifact, manifest, spec, environ, log, run or functools.partial(_engine_rows, model=model))
    report.update(validated_at=clock.utc(), host=socket.gethostname(),
                  gpu=gpu.name if gpu else None, file=REPORT)
    kept = manifest.validation
    if not report["results"] and kept.status in ("passed", "failed") and kept.results:
        log.warning("%s [%s]: keeping the recorded '%s' validation; this run was %s (%s)", artifact.ref,
                    artifact.tag, kept.status, report["status"], report["reason"])
        return {**report, "recorded": False, "kept": kept.status}
    record(store, artifact, report)
    log.info("validation of %s [%s]: %s%s", artifact.ref, artifact.tag, report["status"],
             f" ({report['reason']})" if report["reason"] else "")
    return report


def _compared(artifact: Artifact, manifest: Manifest, spec: ValidateSpec, environ: MutableMapping[str, str],
              log: Any, run: Callable[..., list[dict]]) -> dict:
    """The engine run against ONNX Runtime: `passed`, or `failed` naming the outputs (or why it could not run)."""
    try:
        rows = run(artifact, manifest, spec, environ, log)
    except CannotRunHere as error:  # found only once it tried (a driver that refuses the engine)
        return record_of("skipped", spec, error.reason)
    except PipelineError as error:
        return record_of("failed", spec, f"validation could not complete: {error}")
    bad = failures(rows)
    reason = f"output(s) {', '.join(failed_outputs(rows))} differ from ONNX Runtime: {bad[0]}" if bad else None
    return record_of("failed" if bad else "passed", spec, reason, rows)


def record(store: Store, artifact: Artifact, report: dict) -> Manifest:
    """validation.json beside the manifest, and the manifest's `validation` block, under the store's lock.
    Only `validation` changes: the engine and every other manifest field stay as published."""

    def change(manifest: dict) -> None:
        store.replace_json(artifact.path / REPORT, report)
        manifest["validation"] = report

    return store.update_manifest(artifact, change)


def after_build(recipe: Recipe, artifacts: Sequence[Artifact], store: Store, probe: Probe,
                environ: MutableMapping[str, str], log: Any, progress: Callable[[str], None]) -> bool:
    """The build's validate step, for newly built artifacts when the recipe has a validate: block.
    False only when a validation ran and failed (skipped is not a failure)."""
    if recipe.validate is None:
        return True
    ok = True
    for artifact in artifacts:
        report = validate_artifact(store, artifact, recipe.validate, probe, environ, log)
        reason = f": {report['reason']}" if report["reason"] else ""
        progress(f"[validate] {artifact.tag} {report['status']}{reason}")
        ok = ok and report["status"] != "failed"
    return ok


def describe_report(report: dict) -> list[str]:
    """Readable lines: status, then one line per shape set and output."""
    lines = [f"{report['status']}" + (f": {report['reason']}" if report["reason"] else "")]
    for row in report["results"]:
        profile = "" if row["profile"] is None else f" profile {row['profile']}"
        for name, out in row["outputs"].items():
            verdict = "ok  " if out["passed"] else "FAIL"
            lines.append(f"  {verdict} {name:<16} {row['shape']:<6}{profile:<10} max abs {_fmt(out['max_abs'])} "
                         f"(atol {out['atol']:g})  max rel {_fmt(out['max_rel'])} (rtol {out['rtol']:g})")
    return lines


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.3g}"
