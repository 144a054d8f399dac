"""Capacity: the largest external-data model that builds on this machine, `trt-pipeline build` vs `polygraphy convert`.

The model is bench/run.py's big one (models/make_models.py's matmul chain: LAYERS x MatMul [W, W] -> Relu, float32,
every weight in external data) with a growing number of layers; each tool is bisected on the layer count, coarsely:
a probe is one build in its own process, within a time limit, into a fresh store; it passes when the tool exits 0.
A probe that runs out of memory is killed by the kernel (or fails to allocate): that size does not build here.
Each probe's model is generated before it and deleted after it (one at a time: about 3x the weights on disk).

It needs the whole machine (a probe near the limit uses all of its memory): run it when nothing else runs.

    python bench/capacity.py                                   # both tools, 2..16 GiB of weights, 4 steps each
    python bench/capacity.py --tool pipeline --max-gib 12      # one tool, a smaller range
    python bench/capacity.py --width 256 --max-layers 3 --output /tmp/c   # seconds: the test suite's smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Bench, Case, _polygraphy, _profile, machine  # noqa: E402

sys.path.insert(0, str(ROOT))
from models.make_models import write_matmul_chain  # noqa: E402

RECIPE = """\
name: capacity
version: 1.0.0
model: {{path: model.onnx}}
backend: tensorrt-rtx
targets: [sm89]
stages:
  - parse: {{check: true, infer_shapes: true}}
  - graph-cleanup: {{fold_constants: true, passes: [cleanup, toposort]}}
  - network-flag: {{strongly_typed: true}}
  - memory-pool: {{workspace: 2GiB}}
  - serialize:
      builder_optimization_level: 3
      profiles:
        - x: {{min: [1, {width}], opt: [4, {width}], max: [8, {width}]}}
"""


def bisect(lo: int, hi: int, steps: int, passes: Callable[[int], bool]) -> tuple[int | None, int | None]:
    """(largest size known to pass, smallest known to fail) after probing `lo`, `hi`, then at most `steps` sizes in
    between, halving the interval each time. (None, lo) when even `lo` fails; (hi, None) when `hi` passes."""
    if not passes(lo):
        return None, lo
    if passes(hi):
        return hi, None
    good, bad = lo, hi
    for _ in range(steps):
        if bad - good <= 1:
            break
        middle = (good + bad) // 2
        if passes(middle):
            good = middle
        else:
            bad = middle
    return good, bad


def probe(bench: Bench, tool: str, layers: int, width: int, log: list[dict]) -> bool:
    """Generate the model with `layers` layers, build it once with `tool`, delete it; record the outcome in `log`."""
    folder = Path(tempfile.mkdtemp(prefix=f"capacity-{layers}-", dir=bench.workdir))
    try:
        weights = write_matmul_chain(folder / "model.onnx", width, layers)
        (folder / "recipe.yaml").write_text(RECIPE.format(width=width))
        case = Case("capacity", "", "", "", _profile(x=([1, width], [4, width], [8, width])), ("workspace:2G",))
        entry: dict[str, Any] = {"tool": tool, "layers": layers, "weight_bytes": weights}
        start = time.perf_counter()
        try:
            if tool == "pipeline":
                run = bench.pipeline(folder / "recipe.yaml", folder / "store")
            else:
                run = bench.convert(case, folder / "model.onnx")
            entry.update(ok=True, wall_s=run.wall_s, peak_rss_mib=run.peak_rss_mib)
        except RuntimeError as error:  # a non-zero exit (killed by the kernel: -9) or the time limit
            entry.update(ok=False, wall_s=round(time.perf_counter() - start, 3), error=str(error).splitlines()[0])
        log.append(entry)
        print(f"  {tool} {layers} layers ({weights / 2**30:.2f} GiB): "
              f"{'ok' if entry['ok'] else 'FAILED'} in {entry['wall_s']:.1f}s"
              + (f", {entry['peak_rss_mib']:.0f} MiB" if entry["ok"] else f": {entry['error']}"),
              file=sys.stderr, flush=True)
        return bool(entry["ok"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", choices=("pipeline", "polygraphy", "both"), default="both")
    parser.add_argument("--width", type=int, default=8192, help="W: each layer is W x W float32 (8192: 256 MiB)")
    parser.add_argument("--min-layers", type=int, default=8, help="smallest probe (default 8: 2 GiB at W=8192)")
    parser.add_argument("--max-layers", type=int, default=64,
                        help="largest probe (default 64: 16 GiB at W=8192; the pipeline needs 3x that on disk)")
    parser.add_argument("--steps", type=int, default=4, help="probes between the two ends, per tool (default 4)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per probe (default 1200)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--tree", type=Path, default=ROOT, help="source tree whose pipeline package is measured")
    parser.add_argument("--workdir", type=Path, default=None, help="where models are generated (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent,
                        help="directory for capacity.json (default: bench/)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ("pipeline", "polygraphy") if args.tool == "both" else (args.tool,)
    layer_bytes = args.width * args.width * 4
    results: dict[str, Any] = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(args.python, args.tree.resolve()),
        "method": f"bisection on the layer count ({args.min_layers}..{args.max_layers} layers of {layer_bytes} bytes, "
                  f"{args.steps} steps), one build per probe in its own process, {args.timeout:.0f}s limit",
        "tools": {}, "probes": []}
    with tempfile.TemporaryDirectory(prefix="trt-capacity-", dir=args.workdir) as tmp:
        bench = Bench(args.python, _polygraphy(args.python), Path(tmp), args.timeout, args.tree.resolve())
        bench.compile()
        for tool in tools:
            good, bad = bisect(args.min_layers, args.max_layers, args.steps,
                               lambda layers: probe(bench, tool, layers, args.width, results["probes"]))  # noqa: B023
            results["tools"][tool] = {
                "largest_ok_layers": good, "largest_ok_bytes": good and good * layer_bytes,
                "smallest_failed_layers": bad, "smallest_failed_bytes": bad and bad * layer_bytes}
    ok = {tool: r["largest_ok_bytes"] for tool, r in results["tools"].items()}
    if ok.get("pipeline") and ok.get("polygraphy"):
        results["ratio"] = round(ok["pipeline"] / ok["polygraphy"], 3)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "capacity.json").write_text(json.dumps(results, indent=2) + "\n")
    for tool, r in results["tools"].items():
        print(f"{tool:<11} builds {r['largest_ok_bytes'] or 0:>14,} bytes of weights; fails at "
              f"{r['smallest_failed_bytes'] or 'none tried'}")
    if "ratio" in results:
        print(f"pipeline / polygraphy: {results['ratio']:.2f}x (a lower bound when the pipeline never failed)")
    print(f"wrote {args.output / 'capacity.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
