"""Conversion + build time, engine size and accuracy delta per precision: the shipped ResNet-50 recipes (fp32, fp16,
int8) built for one target into a temporary store, one after the other in this process; JSON on stdout.

    python bench/precision.py                  # ResNet-50 fp32 / fp16 / int8 for sm89 (about a minute)
    python bench/precision.py --quick          # the tiny model, seeded random calibration (seconds)

Per precision: `convert_s` (the precision stage: conversion or calibration + quantization), `build_s` (serialize:
TensorRT's build), `wall_s` (the whole `build`, checks beside it included), `engine_bytes` and its ratio to FP32,
and the precision check's accuracy delta per output (max abs error, cosine similarity, top-1 agreement).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.make_models import MODELS, resnet50_calibration, write_arrays, write_model  # noqa: E402
from pipeline import recipe as recipes  # noqa: E402
from pipeline.build import plan as plans  # noqa: E402
from pipeline.build import runner  # noqa: E402
from pipeline.store import Store  # noqa: E402
from pipeline.trt import backend as backends  # noqa: E402
from pipeline.trt.gpu import Probe  # noqa: E402

NO_GPU = Probe(False, (), "benchmark: builds only")
TINY = """\
name: tiny-{mode}
version: 1.0.0
model: {{path: {model}}}
backend: tensorrt-rtx
targets: [{target}]
stages:
  - parse: {{}}
{precision}  - network-flag: {{strongly_typed: true}}
  - memory-pool: {{workspace: 64MiB}}
  - serialize:
      profiles:
        - x: {{min: [1, 4], opt: [8, 4], max: [64, 4]}}
"""
TINY_PRECISION = {"fp32": "", "fp16": "  - precision: {mode: fp16}\n",
                  "int8": "  - precision: {mode: int8, calibration: {random: {samples: 8}}}\n"}


def recipes_for(folder: Path, quick: bool, target: str) -> dict[str, Path]:
    """One recipe per precision in `folder`, with the model and calibration data they need."""
    if quick:
        model = folder / "tiny.onnx"
        write_model(MODELS["tiny"](), model)
        paths = {mode: folder / f"tiny-{mode}.yaml" for mode in TINY_PRECISION}
        for mode, path in paths.items():
            path.write_text(TINY.format(mode=mode, model=model, target=target, precision=TINY_PRECISION[mode]))
        return paths
    models = ROOT / "models"
    if not (models / "resnet50.onnx").is_file():
        write_model(MODELS["resnet50"](), models / "resnet50.onnx")
    if not (models / "resnet50_calibration.npz").is_file():
        write_arrays(resnet50_calibration(), models / "resnet50_calibration.npz")
    paths = {}
    for mode, name in (("fp32", "resnet50.yaml"), ("fp16", "resnet50-fp16.yaml"), ("int8", "resnet50-int8.yaml")):
        text = (ROOT / "recipes" / name).read_text().replace("../models/", f"{models}/")
        paths[mode] = folder / name
        paths[mode].write_text(text)
    return paths


def measure(path: Path, store: Store, target: str) -> dict:
    log = logging.getLogger("bench.precision")
    recipe = recipes.load(path)
    started = time.perf_counter()
    plan = plans.make_plan(recipe, backends.load(recipe.backend), NO_GPU, (target,))
    [outcome] = runner.build(plan, store, log)
    wall = time.perf_counter() - started
    manifest = outcome.artifact.manifest().to_dict()
    stages = {stage["name"]: stage["seconds"] for stage in manifest["build"]["stages"]}
    precision = manifest.get("precision") or {}
    check = precision.get("check") or {}
    return {"recipe": recipe.name, "convert_s": stages.get("precision", 0.0), "build_s": stages["serialize"],
            "wall_s": round(wall, 3), "engine_bytes": manifest["engine"]["bytes"],
            "calibration": precision.get("calibration"),
            "accuracy_delta": {name: {key: row[key] for key in ("max_abs", "max_rel", "cosine", "top1")}
                               for name, row in (check.get("outputs") or {}).items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model (seconds), for the test suite")
    parser.add_argument("--target", default="sm89", help="the one target to build for (default sm89)")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as folder:
        store = Store(Path(folder) / "store")
        for mode, path in recipes_for(Path(folder), args.quick, args.target).items():
            results[mode] = measure(path, store, args.target)
    for row in results.values():
        row["engine_ratio"] = round(row["engine_bytes"] / results["fp32"]["engine_bytes"], 3)
    print(json.dumps({"target": args.target, "backend": backends.load("tensorrt-rtx").label(),
                      "precisions": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
