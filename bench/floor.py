"""The floor of a cold build: only the work every `trt-pipeline build` must do, timed against `polygraphy convert`.

A child process does, with the same libraries and settings as the pipeline but nothing else (no recipe, store,
manifest, fsync, shape inference or cleanup check): read and sha256 the model, parse it, run the ONNX checker,
the graphsurgeon passes of bench/recipes (fold_constants, cleanup, toposort), export, serialize, write and sha256
the cleaned model, let TensorRT parse it and build the engine, write and sha256 the engine. Its wall time
against polygraphy convert's, alternating A/B as bench/run.py does, is the lowest ratio a build that keeps
those steps on its critical path can reach.

    python bench/floor.py               # ResNet-50, 5 runs each
    python bench/floor.py --quick       # the tiny model, 1 run (the test suite)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CASES, Bench, _polygraphy, prepare, run_child  # noqa: E402

STEP_PREFIX = "floor-steps: "


def floor_build(model: Path, shapes: dict[str, tuple[str, str, str]], pools: Sequence[str], out: Path) -> dict:
    """The mandatory steps, timed one by one (seconds); imports are the first step."""
    steps: dict[str, float] = {}
    mark = time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        steps[name] = round(now - mark, 3)
        mark = now

    import hashlib

    import onnx
    import onnx_graphsurgeon as gs
    import tensorrt_rtx as trt
    step("imports")
    data = model.read_bytes()
    hashlib.sha256(data).hexdigest()
    step("read + sha256 model")
    parsed = onnx.load_from_string(data)
    onnx.checker.check_model(data)
    del data
    step("parse + checker")
    graph = gs.import_onnx(parsed).fold_constants().cleanup().toposort()
    cleaned = gs.export_onnx(graph)
    del graph, parsed
    step("graphsurgeon passes + export")
    written = cleaned.SerializeToString()
    (out / "model.cleaned.onnx").write_bytes(written)
    hashlib.sha256(written).hexdigest()
    del written, cleaned
    step("serialize + write + sha256 cleaned")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(out / "model.cleaned.onnx")):
        raise SystemExit(f"TensorRT could not parse {model}")
    config = builder.create_builder_config()
    for pool in pools:
        name, size = pool.split(":")
        config.set_memory_pool_limit(getattr(trt.MemoryPoolType, name.upper()), _bytes(size))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, *(json.loads(dims) for dims in (lo, opt, hi)))
    config.add_optimization_profile(profile)
    config.builder_optimization_level = 3
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    plan = builder.build_serialized_network(network, config)
    step("TensorRT parse + build")
    (out / "engine.plan").write_bytes(memoryview(plan))
    hashlib.sha256(memoryview(plan)).hexdigest()
    step("write + sha256 engine")
    return steps


def _bytes(size: str) -> int:
    """polygraphy's pool sizes: '2G', '48K', '512M'."""
    return int(size[:-1]) << {"K": 10, "M": 20, "G": 30}[size[-1]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per side (default: 5)")
    parser.add_argument("--quick", action="store_true", help="the tiny model, 1 run (for tests)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the pipeline's dependencies")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per process (default: 600)")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "MODEL"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        case = CASES[args.child[0]]
        with tempfile.TemporaryDirectory(prefix="trt-floor-") as out:
            steps = floor_build(Path(args.child[1]), case.shapes, case.pools, Path(out))
        print(STEP_PREFIX + json.dumps(steps))
        return 0
    case = CASES["tiny-cold" if args.quick else "resnet50-cold"]
    runs = 1 if args.quick else args.runs
    floors: list[Any] = []
    theirs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="trt-floor-") as tmp:
        bench = Bench(args.python, _polygraphy(args.python), Path(tmp), args.timeout)
        model = prepare(case, bench.workdir, args.python)[1]
        for index in range(runs):
            def floor() -> None:
                run, output = run_child([args.python, __file__, "--child", case.name, str(model)], bench.env(),
                                        Path(tmp), args.timeout)
                steps = json.loads(next(line for line in output.splitlines() if line.startswith(STEP_PREFIX))
                                   [len(STEP_PREFIX):])
                floors.append((run, steps))

            order = (floor, lambda: theirs.append(bench.convert(case, model)))
            for side in order if index % 2 == 0 else order[::-1]:
                side()
            print(f"  run {index + 1}/{runs}: floor {floors[-1][0].wall_s:.2f}s, polygraphy {theirs[-1].wall_s:.2f}s",
                  file=sys.stderr, flush=True)
    mine = statistics.median(run.wall_s for run, _ in floors)
    other = statistics.median(run.wall_s for run in theirs)
    print(f"{case.description}: floor {mine:.2f}s, polygraphy convert {other:.2f}s, ratio {mine / other:.2f} "
          f"(medians of {runs})")
    for name in floors[0][1]:
        print(f"  {name:<36} {statistics.median(steps[name] for _, steps in floors):6.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
