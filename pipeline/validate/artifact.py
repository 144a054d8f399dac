"""Prove an engine against ONNX Runtime, and a cleaned graph against the original, with Polygraphy's Comparator.

Both checks share one wiring: seeded inputs from a Polygraphy DataLoader at each shape the recipe asks for
(min/opt/max of each profile), `Comparator.run` on two runners, `Comparator.compare_accuracy` with the recipe's
atol/rtol and per-output overrides, and per output and shape the max absolute and relative error.
An engine's validation is `passed` only when it really ran on a GPU and every output matched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, MutableMapping, Sequence

from pipeline.trt import runtime as engines
from pipeline.trt.backend import Backend, make_logger
from pipeline.stages.context import Context
from pipeline.digest import file_sha256, plain
from pipeline.errors import BackendError, BuildError, CannotRunHere, PipelineError, RecipeError
from pipeline.trt.gpu import Probe
from pipeline.recipe import Recipe, Tolerance, ValidateSpec
from pipeline.store import Artifact, Store, replace_json

RTX_ENV = "POLYGRAPHY_USE_TENSORRT_RTX"
REPORT = "validation.json"


# ---------------------------------------------------------------- Polygraphy set-up


def use_polygraphy(backend: Backend, environ: MutableMapping[str, str]) -> Any:
    """Point Polygraphy at this backend's TensorRT before it is imported; returns `polygraphy.config`.

    Polygraphy reads POLYGRAPHY_USE_TENSORRT_RTX once, when `polygraphy.config` is first imported. If it was
    imported earlier without it (by an ONNX-Runtime-only comparison, say), its TensorRT binding is still lazy
    until `polygraphy.backend.trt` loads, so the setting can be corrected until then, and not after.
    """
    if backend.is_rtx:
        environ[RTX_ENV] = "1"
    import polygraphy.config as config

    if config.USE_TENSORRT_RTX != backend.is_rtx:
        if "polygraphy.backend.trt" in sys.modules:
            loaded = "TensorRT-RTX" if config.USE_TENSORRT_RTX else "full TensorRT"
            raise BackendError(f"Polygraphy is already bound to {loaded} in this process; {backend.label()} "
                               "needs a fresh process")
        config.USE_TENSORRT_RTX = backend.is_rtx
    return config


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Polygraphy prints to stdout; the pipeline's stdout is for results. Its errors reach us as exceptions."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        yield


@contextlib.contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """Polygraphy's and ONNX Runtime's exceptions become one-line PipelineErrors that say what was being done."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as error:  # PolygraphyException, onnxruntime's Fail/InvalidArgument, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise PipelineError(f"{what}: {first}") from None


# ---------------------------------------------------------------- shapes and inputs


@dataclass(frozen=True)
class ShapeSet:
    profile: int | None  # optimization profile index; None when the model has no profiles
    label: str  # 'min' | 'opt' | 'max' | 'static'
    shapes: Mapping[str, tuple[int, ...]]


Profiles = Sequence[Mapping[str, Mapping[str, Sequence[int]]]]  # [{input: {min, opt, max}}], as in manifests


def recipe_profiles(recipe: Recipe) -> list[dict]:
    return [{i.name: {"min": list(i.min), "opt": list(i.opt), "max": list(i.max)} for i in profile}
            for profile in recipe.spec("serialize").profiles]


def _static(shape: Sequence[Any]) -> tuple[int, ...]:
    """A declared shape with every symbolic or -1 dimension set to 1 (Polygraphy's default too)."""
    return tuple(dim if isinstance(dim, int) and dim >= 0 else 1 for dim in shape)


def shape_sets(profiles: Profiles, which: Sequence[str], inputs: Mapping[str, dict]) -> list[ShapeSet]:
    """One set of input shapes per profile and requested point; inputs outside a profile keep their own shape."""
    if not profiles:
        return [ShapeSet(None, "static", {name: _static(info["shape"]) for name, info in inputs.items()})]
    return [ShapeSet(index, label, {name: tuple(profile[name][label]) if name in profile else _static(info["shape"])
                                    for name, info in inputs.items()})
            for index, profile in enumerate(profiles) for label in which]


def frozen_feed(frozen: Mapping[str, Any], original_inputs: Mapping[str, dict]) -> dict[str, Any]:
    """The values graph-cleanup froze into constants, as the original model's inputs (the same rule)."""
    from pipeline.stages.graph_cleanup import frozen_value

    return {name: frozen_value(value, original_inputs[name]["dtype"], original_inputs[name]["shape"])
            for name, value in frozen.items()}


def seeded_feed(shape_set: ShapeSet, dtypes: Mapping[str, str], seed: int) -> dict[str, Any]:
    """One feed dict from Polygraphy's DataLoader, seeded: the same seed and shapes give the same arrays."""
    import numpy as np
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import DataLoader

    metadata = TensorMetadata()
    for name, shape in shape_set.shapes.items():
        metadata.add(name, np.dtype(dtypes[name]), shape)
    with quiet():
        return dict(DataLoader(seed=seed, iterations=1, input_metadata=metadata)[0])


# ---------------------------------------------------------------- the comparison


def tolerances(spec: ValidateSpec) -> dict:
    return {"atol": spec.atol, "rtol": spec.rtol,
            "outputs": {name: {"atol": t.atol, "rtol": t.rtol} for name, t in spec.outputs.items()}}


def compare_func(spec: ValidateSpec) -> Any:
    """Polygraphy's simple (element-wise) comparison with the recipe's tolerances; '' is the default key."""
    from polygraphy.comparator import compare

    atol = {"": spec.atol, **{name: t.atol for name, t in spec.outputs.items()}}
    rtol = {"": spec.rtol, **{name: t.rtol for name, t in spec.outputs.items()}}
    simple = getattr(compare, "SimpleCompareFunc", None)  # Polygraphy >= 0.50; CompareFunc.simple before
    return simple(atol=atol, rtol=rtol) if simple else compare.CompareFunc.simple(atol=atol, rtol=rtol)


def _number(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _output_row(name: str, result: Any, spec: ValidateSpec) -> dict:
    tolerance = spec.tolerance(name)
    if result is None:
        return {"max_abs": None, "max_rel": None, "atol": tolerance.atol, "rtol": tolerance.rtol, "passed": False,
                "error": "output missing from one side"}
    return {"max_abs": _number(result.max_absdiff), "max_rel": _number(result.max_reldiff),
            "atol": tolerance.atol, "rtol": tolerance.rtol, "passed": bool(result)}


def _rows(group: Sequence[ShapeSet], iterations: Sequence[Mapping[str, Any]], outputs: Sequence[str],
          spec: ValidateSpec) -> list[dict]:
    rows = []
    for shape_set, compared in zip(group, iterations):
        per_output = {name: _output_row(name, compared.get(name), spec) for name in outputs}
        rows.append({"profile": shape_set.profile, "shape": shape_set.label,
                     "inputs": {name: list(shape) for name, shape in shape_set.shapes.items()},
                     "outputs": per_output, "passed": all(o["passed"] for o in per_output.values())})
    return rows


Runners = Callable[[int | None], list]  # profile -> [runner under test, reference runner]


def compare(runners: Runners, sets: Sequence[ShapeSet], feeds: Sequence[Mapping[str, Any]],
            outputs: Sequence[str], spec: ValidateSpec, what: str) -> list[dict]:
    """Run both runners on identical feeds (one Comparator run per profile) and compare every output."""
    from polygraphy.comparator import Comparator

    rows: list[dict] = []
    indexed = list(zip(sets, feeds))
    for profile, pairs in itertools.groupby(indexed, key=lambda pair: pair[0].profile):
        group, group_feeds = zip(*pairs)
        with quiet(), one_line_errors(what):
            run = Comparator.run(runners(profile), data_loader=list(group_feeds))
            accuracy = Comparator.compare_accuracy(run, compare_func=compare_func(spec))
        (iterations,) = accuracy[0].values()
        rows += _rows(group, iterations, outputs, spec)
    return rows


def failures(rows: Sequence[dict]) -> list[str]:
    """'y at opt [x 8x16]: max abs error 0.53 (atol 0.0001), max rel error 2.1 (rtol 0.0001)', per failure."""
    found = []
    for row in rows:
        where = ", ".join(f"{n} {'x'.join(map(str, s)) or 'scalar'}" for n, s in row["inputs"].items())
        profile = "" if row["profile"] is None else f" of profile {row['profile']}"
        for name, out in row["outputs"].items():
            if not out["passed"]:
                detail = out.get("error") or (f"max abs error {out['max_abs']:.3g} (atol {out['atol']:g}), "
                                              f"max rel error {out['max_rel']:.3g} (rtol {out['rtol']:g})"
                                              if out["max_abs"] is not None else "NaN or infinite values")
                found.append(f"{name} at {row['shape']}{profile} [{where}]: {detail}")
    return found


def failed_outputs(rows: Sequence[dict]) -> list[str]:
    return sorted({name for row in rows for name, out in row["outputs"].items() if not out["passed"]})


def _record(status: str, spec: ValidateSpec, reason: str | None, rows: Sequence[dict] = (), **extra: Any) -> dict:
    return {"status": status, "reason": reason, "reference": spec.reference, "tolerances": tolerances(spec),
            "shapes": list(spec.shapes), "seed": spec.seed, "results": list(rows), **extra}


# ---------------------------------------------------------------- cleanup check (every build, CPU)


# One small shape per profile: its min, with every dimension raised to 2 where the profile allows, so that a pass
# that bakes in a batch of 1 still shows. ONNX Runtime's cost grows with the shape (ResNet-50 on 2 cores: ~0.2 s at
# batch 2, ~0.6 s at opt (8) per side, ~30 s for min, opt and max).
SMALL = "small"


def cleanup_check(ctx: Context, inputs: Mapping[str, dict]) -> Callable[[], dict]:
    """This build's cleanup check, ready to run on any thread: ONNX Runtime on the cleaned graph (whose `inputs`
    are given, as parse.describe records them) vs the original model, with the same seeded inputs and the recipe's
    tolerances. Everything it needs from `ctx` is read now. The job raises BuildError naming the outputs that
    differ, and returns the manifest's `cleanup_check` record."""
    use_polygraphy(ctx.backend, ctx.environ)
    recipe = ctx.recipe
    spec = dataclasses.replace(recipe.validate or ValidateSpec(), shapes=(SMALL,))
    frozen = plain(recipe.spec("graph-cleanup").freeze_inputs)
    profiles = [{name: {**point, SMALL: [max(lo, min(2, hi)) for lo, hi in zip(point["min"], point["max"])]}
                 for name, point in profile.items()} for profile in recipe_profiles(recipe)]
    return functools.partial(
        _check_cleaned, {"cleaned": ctx.cleaned_path, "original": recipe.model_path},
        shape_sets(profiles, spec.shapes, inputs), {name: i["dtype"] for name, i in inputs.items()},
        frozen, frozen_feed(frozen, ctx.model_record["inputs"]), list(ctx.model_record["outputs"]), spec, ctx.log,
        ctx.background.stopping)


def _check_cleaned(models: Mapping[str, Path], sets: Sequence[ShapeSet], dtypes: Mapping[str, str],
                   frozen: dict, fixed: Mapping[str, Any], outputs: Sequence[str], spec: ValidateSpec,
                   log: Any, stopping: threading.Event) -> dict:
    from polygraphy.backend.onnxrt import OnnxrtRunner

    started = time.perf_counter()
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
    return _record("passed", spec, None, rows, frozen_inputs=frozen, seconds=round(time.perf_counter() - started, 3))


def _beside_build(path: Path, stopping: threading.Event) -> Any:
    """An ONNX Runtime CPU session that runs the graph as written (no graph optimizations: half the memory and
    start-up time of the default on ResNet-50) and leaves one core to the TensorRT build running beside it.
    Not made once the build is stopping (Ctrl-C): the check then ends at its next session."""
    import onnxruntime

    if stopping.is_set():
        raise BuildError("graph-cleanup: the cleanup check was stopped")

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)) - 1)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- engine validation (GPU)


def settings(manifest: dict, log: Any) -> ValidateSpec:
    """The validate: block the artifact was built with, as its manifest records it (defaults when the recipe
    had none), so that validation runs the same on any machine. Older manifests: read from the recipe file."""
    from pipeline import recipe as recipes

    if "validate" in manifest:
        block = manifest["validate"] or {}
        outputs = {name: Tolerance(**tolerance) for name, tolerance in block.pop("outputs", {}).items()}
        return dataclasses.replace(ValidateSpec(**{k: tuple(v) if k == "shapes" else v for k, v in block.items()}),
                                   outputs=outputs) if block else ValidateSpec()
    path = Path(manifest["recipe"]["path"])
    try:
        recipe = recipes.load(path)
    except RecipeError as error:
        raise RecipeError(error.problems, hint="validation reads tolerances and shapes from the artifact's recipe; "
                                               f"restore {path}") from None
    if recipe.sha256 != manifest["recipe"]["sha256"]:
        log.warning("%s changed since this artifact was built; using its current validate: block", path)
    return recipe.validate or ValidateSpec()


def engine_feeds(manifest: dict, spec: ValidateSpec) -> tuple[list[ShapeSet], list[dict]]:
    """The shape sets and seeded feeds for an engine: its inputs at each requested profile point, plus the
    inputs graph-cleanup froze (the original model still needs them; the engine ignores them)."""
    model_inputs, engine_inputs = manifest["model"]["inputs"], manifest["network"]["inputs"]
    sets = shape_sets(manifest["config"]["profiles"], spec.shapes, engine_inputs)
    fixed = frozen_feed((manifest.get("cleanup_check") or {}).get("frozen_inputs", {}), model_inputs)
    dtypes = {name: model_inputs[name]["dtype"] for name in engine_inputs}
    return sets, [{**seeded_feed(s, dtypes, spec.seed), **fixed} for s in sets]


def original_model(manifest: dict, given: Path | None = None) -> Path:
    """The model the engine came from, as it was at build time (checked by sha256): `given` (--model, e.g. on
    a GPU machine where the build machine's path does not exist), else the path the manifest records."""
    path = given or Path(manifest["model"]["path"])
    if not path.is_file() or file_sha256(path) != manifest["model"]["sha256"]:
        raise PipelineError(f"the original model {path} is missing or is not the one the engine was built from "
                            f"(sha256 {manifest['model']['sha256'][:12]}); validation compares against that exact "
                            "model", hint="pass its path with --model PATH")
    return path


def _engine_rows(artifact: Artifact, manifest: dict, spec: ValidateSpec, environ: MutableMapping[str, str],
                 log: Any, model: Path | None = None) -> list[dict]:
    """TensorRT (Polygraphy's TrtRunner on the engine) vs ONNX Runtime on the ORIGINAL model."""
    backend = engines.runtime_backend(manifest)
    use_polygraphy(backend, environ)
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    original = original_model(manifest, model)
    runtime = engines.runtime_for(backend, make_logger(backend, log.getChild("trt")), engines.plugins(manifest))
    with quiet(), one_line_errors("cannot load the engine"):
        trt_engine = EngineFromBytes((artifact.path / manifest["engine"]["file"]).read_bytes(), runtime=runtime)()
    sets, feeds = engine_feeds(manifest, spec)
    runners = lambda profile: [TrtRunner(trt_engine, name="tensorrt", optimization_profile=profile),  # noqa: E731
                               OnnxrtRunner(SessionFromOnnx(str(original)), name="onnxruntime")]
    return compare(runners, sets, feeds, list(manifest["model"]["outputs"]), spec, "validation could not run")


def validate_artifact(store: Store, artifact: Artifact, spec: ValidateSpec, probe: Probe,
                      environ: MutableMapping[str, str], log: Any,
                      run: Callable[..., list[dict]] | None = None, model: Path | None = None) -> dict:
    """Validate one artifact and record the result (validation.json + the manifest's `validation` block).
    `skipped` when this machine cannot run the engine, with the probe's reason; `passed` only after a real run.
    A run that compared nothing (skipped, or could not complete) never replaces a recorded passed/failed result:
    the report then says `recorded: false`."""
    manifest = artifact.manifest()
    gpu = None
    try:
        gpu = engines.runnable_gpu(manifest, probe)
        rows = (run or functools.partial(_engine_rows, model=model))(artifact, manifest, spec, environ, log)
    except CannotRunHere as error:  # 'cannot run X here: REASON' -> REASON
        report = _record("skipped", spec, str(error).split(" here: ", 1)[-1])
    except PipelineError as error:
        report = _record("failed", spec, f"validation could not complete: {error}")
    else:
        bad = failures(rows)
        reason = f"output(s) {', '.join(failed_outputs(rows))} differ from ONNX Runtime: {bad[0]}" if bad else None
        report = _record("failed" if bad else "passed", spec, reason, rows)
    report.update(validated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), host=socket.gethostname(),
                  gpu=gpu.name if gpu else None, file=REPORT)
    kept = manifest.get("validation") or {}
    if not report["results"] and kept.get("status") in ("passed", "failed") and kept.get("results"):
        log.warning("%s [%s]: keeping the recorded '%s' validation; this run was %s (%s)", artifact.ref,
                    artifact.tag, kept["status"], report["status"], report["reason"])
        return {**report, "recorded": False, "kept": kept["status"]}
    record(store, artifact, report)
    log.info("validation of %s [%s]: %s%s", artifact.ref, artifact.tag, report["status"],
             f" ({report['reason']})" if report["reason"] else "")
    return report


def record(store: Store, artifact: Artifact, report: dict) -> dict:
    """validation.json beside the manifest, and the manifest's `validation` block, under the store's lock.
    Only `validation` changes: the engine and every other manifest field stay as published."""

    def change(manifest: dict) -> None:
        replace_json(artifact.path / REPORT, report)
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
