"""The comparison core: seeded inputs at each shape set, Polygraphy's Comparator on two runners, and per output
and shape the max absolute and relative error against the recipe's tolerances."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.recipe import Recipe, ValidateSpec
from pipeline.stages.graph_cleanup import frozen_value
from pipeline.trt.polygraphy import one_line_errors, quiet

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


def quiet_onnxruntime(log: logging.Logger) -> None:
    """ONNX Runtime writes its warnings straight to stderr (coloured, e.g. 'VerifyOutputSizes ... does not
    match'), past any logger: they are let through only where the terminal shows INFO (-v), errors always."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(2 if _terminal_shows_info(log) else 3)


def _terminal_shows_info(log: logging.Logger) -> bool:
    """Whether a handler writing to a stream other than a file (the CLI's, on stderr) passes INFO records."""
    node: logging.Logger | None = log
    while node is not None:
        if any(type(h) is logging.StreamHandler and h.level <= logging.INFO for h in node.handlers):
            return True
        node = node.parent if node.propagate else None
    return False


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


def record_of(status: str, spec: ValidateSpec, reason: str | None, rows: Sequence[dict] = (), **extra: Any) -> dict:
    return {"status": status, "reason": reason, "reference": spec.reference, "tolerances": tolerances(spec),
            "shapes": list(spec.shapes), "seed": spec.seed, "results": list(rows), **extra}
