"""Benchmark `trt-pipeline build` against `polygraphy convert`: same model, profiles and backend.

Each case runs both tools N times in the same session, alternating which goes first (A/B, then B/A), as
separate processes. Wall time comes from the parent's clock, peak RSS from the child's own rusage
(`os.wait4`). Medians and ratios go to results.json, with a description of the machine, and to a PNG chart.

Cases: ResNet-50 cold build (a fresh, empty store each run), ResNet-50 unchanged rebuild (a store that
already holds the artifact), a dynamic-shape model with two inputs, and a generated model with more than
2 GiB of weights in ONNX external data (written here, deleted afterwards). `--quick` runs the tiny model
once, for the test suite.

    python bench/run.py                 # everything, 5 runs each (several minutes)
    python bench/run.py --quick         # the tiny model, 1 run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECIPES = Path(__file__).resolve().parent / "recipes"
PACKAGES = ("trt-pipeline", "tensorrt-rtx", "polygraphy", "onnx", "onnx-graphsurgeon", "onnxruntime", "numpy",
            "protobuf")
LARGE_WIDTH, LARGE_LAYERS = 8192, 9  # 9 float32 [8192, 8192] weights: 2.25 GiB
# Issue 14's targets, pipeline / the other side: ResNet-50 cold <= 1.5x polygraphy convert (RSS <= 1.3x); an unchanged
# rebuild <= 0.15x; big models <= 1.3x the time and <= 0.75x the peak RSS; <= 0.3x the peer-tool workflow.
TARGETS = {"cold": {"wall": 1.5, "rss": 1.3}, "rebuild": {"wall": 0.15, "rss": 1.5}, "big": {"wall": 1.3, "rss": 0.75},
           "peer": {"wall": 0.3, "rss": 1.3}}
VERSUS = {"peer": "peer tools (polygraphy surgeon sanitize, run x2, convert; sha256sum)"}
VERSUS.update({kind: "polygraphy convert" for kind in TARGETS if kind not in VERSUS})
STAGE_LINE = re.compile(r"^\[\d+/\d+\] (\S+).*?\s([0-9.]+)s$")


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    recipe: str  # file name in bench/recipes/
    model: str  # 'resnet50', 'two_input' (models/), or 'tiny', 'large' (generated next to the recipe)
    shapes: dict[str, tuple[str, str, str]]  # input -> (min, opt, max), polygraphy's [D0,D1,...] form
    pools: tuple[str, ...]
    rebuild: bool = False  # time a second build into a store that already has the artifact
    kind: str = "cold"  # which TARGETS apply; 'peer': the other side is the peer-tool workflow, not convert


def _profile(**shapes: tuple[list[int], list[int], list[int]]) -> dict[str, tuple[str, str, str]]:
    form = lambda dims: "[" + ",".join(map(str, dims)) + "]"  # noqa: E731
    return {name: (form(lo), form(opt), form(hi)) for name, (lo, opt, hi) in shapes.items()}


RESNET = _profile(input=([1, 3, 224, 224], [8, 3, 224, 224], [32, 3, 224, 224]))
TINY = _profile(x=([1, 4], [4, 4], [8, 4]))
CASES = {
    "resnet50-cold": Case("resnet50-cold", "ResNet-50, cold build (empty store)", "resnet50.yaml", "resnet50",
                          RESNET, ("workspace:2G", "tactic_shared_memory:48K")),
    "resnet50-rebuild": Case("resnet50-rebuild", "ResNet-50, unchanged rebuild (same store)", "resnet50.yaml",
                             "resnet50", RESNET, ("workspace:2G", "tactic_shared_memory:48K"), rebuild=True,
                             kind="rebuild"),
    "two-input": Case("two-input", "two dynamic inputs (batch, height, width)", "two_input.yaml", "two_input",
                      _profile(image=([1, 3, 32, 32], [4, 3, 224, 224], [8, 3, 512, 512]),
                               scale=([1, 1], [4, 1], [8, 1])), ("workspace:512M",)),
    "large-2gb": Case("large-2gb", f"{LARGE_LAYERS} x MatMul [{LARGE_WIDTH}]^2, 2.25 GiB external data",
                      "large.yaml", "large",
                      _profile(x=([1, LARGE_WIDTH], [4, LARGE_WIDTH], [8, LARGE_WIDTH])), ("workspace:2G",), kind="big"),
    "resnet50-peer": Case("resnet50-peer", "ResNet-50 cold vs the peer tools scripted (sanitize, run x2, convert, "
                          "sha256sum)", "resnet50.yaml", "resnet50", RESNET, ("workspace:2G", "tactic_shared_memory:48K"),
                          kind="peer"),
    "tiny-cold": Case("tiny-cold", "tiny MatMul model, cold build", "tiny.yaml", "tiny", TINY, ("workspace:256M",)),
    "tiny-rebuild": Case("tiny-rebuild", "tiny MatMul model, unchanged rebuild", "tiny.yaml", "tiny", TINY,
                         ("workspace:256M",), rebuild=True, kind="rebuild"),
}
FULL = ("resnet50-cold", "resnet50-rebuild", "resnet50-peer", "two-input", "large-2gb")
QUICK = ("tiny-cold", "tiny-rebuild")


@dataclass
class Run:
    wall_s: float
    peak_rss_mib: float
    stages: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- processes


def run_child(argv: Sequence[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[Run, str]:
    """Run one command; wall time from here, peak RSS from the child's own rusage. Raises on failure."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        child = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                os.wait4(child.pid, 0)
                raise RuntimeError(f"timed out after {timeout:.0f}s: {' '.join(argv)}")
            time.sleep(0.005)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
        out.seek(0)
        text = out.read().decode(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"exit {child.returncode}: {' '.join(argv)}\n{text[-3000:]}")
    return Run(round(wall, 3), round(usage.ru_maxrss / 1024, 1)), text  # ru_maxrss is KiB on Linux


def stage_times(output: str) -> dict[str, float]:
    """The pipeline's progress lines, '[2/5] graph-cleanup   4.75s', as {stage: seconds}."""
    found = {}
    for line in output.splitlines():
        match = STAGE_LINE.match(line.strip())
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


@dataclass
class Bench:
    python: str
    polygraphy: list[str]
    workdir: Path
    timeout: float
    tree: Path = ROOT  # the source tree whose `pipeline` package is measured

    def env(self) -> dict[str, str]:
        # TMPDIR: the tools' own temporary files (polygraphy leaves tmp_polygraphy_*.onnx behind) go with workdir
        env = dict(os.environ, POLYGRAPHY_USE_TENSORRT_RTX="1", TMPDIR=str(self.workdir))
        env.pop("TRT_PIPELINE_STORE", None)
        return env

    def compile(self) -> None:
        """Byte-compile the measured tree, as pip does for polygraphy when it installs it: with an editable
        install (or PYTHONDONTWRITEBYTECODE set) the pipeline would otherwise compile its sources in every run."""
        subprocess.run([self.python, "-m", "compileall", "-q", str(self.tree / "pipeline")], check=True,
                       stdout=subprocess.DEVNULL)

    def pipeline(self, recipe: Path, store: Path) -> Run:
        argv = [self.python, "-m", "pipeline", "build", str(recipe), "--store", str(store)]
        run, output = run_child(argv, self.env(), self.tree, self.timeout)
        run.stages = stage_times(output)
        return run

    def convert_argv(self, case: Case, model: Path, plan: Path) -> list[str]:
        shapes = {which: [f"{name}:{dims[i]}" for name, dims in case.shapes.items()]
                  for i, which in enumerate(("min", "opt", "max"))}
        return [*self.polygraphy, "convert", str(model), "-o", str(plan),
                "--trt-min-shapes", *shapes["min"], "--trt-opt-shapes", *shapes["opt"],
                "--trt-max-shapes", *shapes["max"], "--pool-limit", *case.pools,
                "--builder-optimization-level", "3", "--strongly-typed", "--compute-capabilities", "8.9"]

    def convert(self, case: Case, model: Path) -> Run:
        plan = self.workdir / f"{case.name}.polygraphy.plan"
        try:
            return run_child(self.convert_argv(case, model, plan), self.env(), ROOT, self.timeout)[0]
        finally:
            plan.unlink(missing_ok=True)

    def peer(self, case: Case, model: Path) -> Run:
        """What a user would script with the public CLIs for the pipeline's work: fold and sanitize, run the original
        and the cleaned model on ONNX Runtime at batch 2 with the same inputs and compare the outputs, build the
        engine, sha256 both files. One shell; peak RSS is its largest child's."""
        work = self.workdir / f"{case.name}.peer"
        work.mkdir(exist_ok=True)
        tool = shlex.join(self.polygraphy)
        cleaned, plan = work / "cleaned.onnx", work / "engine.plan"
        batch2 = [f"{name}:{dims[0].replace('[1,', '[2,', 1)}" for name, dims in case.shapes.items()]
        script = "\n".join([
            "set -e",
            f"{tool} surgeon sanitize {model} --fold-constants -o {cleaned}",
            f"{tool} run {model} --onnxrt --input-shapes {shlex.join(batch2)} --save-inputs {work}/inputs.json "
            f"--save-outputs {work}/outputs.json",
            f"{tool} run {cleaned} --onnxrt --load-inputs {work}/inputs.json --load-outputs {work}/outputs.json",
            shlex.join(self.convert_argv(case, cleaned, plan)),
            f"sha256sum {cleaned} {plan}"])
        try:
            return run_child(["bash", "-c", script], self.env(), ROOT, self.timeout)[0]
        finally:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- models


def large_model(path: Path, seed: int = 0, layers: int = LARGE_LAYERS, width: int = LARGE_WIDTH) -> int:
    """x [batch, W] -> LAYERS x (MatMul [W, W] -> Relu), seeded, weights in `<path>.data` (models/make_models.py's
    write_matmul_chain: one layer in memory at a time). Returns weight bytes."""
    sys.path.insert(0, str(ROOT))
    from models.make_models import write_matmul_chain

    return write_matmul_chain(path, width, layers, seed)


def prepare(case: Case, workdir: Path, python: str) -> tuple[Path, Path]:
    """(recipe, model) for a case. Generated models are written next to a copy of their recipe in workdir."""
    if case.model in ("resnet50", "two_input"):
        model = ROOT / "models" / f"{case.model}.onnx"
        if not model.is_file():
            subprocess.run([python, "models/make_models.py", case.model, str(model)], cwd=ROOT, check=True)
        return RECIPES / case.recipe, model
    recipe = workdir / case.recipe
    model = workdir / f"{case.model}.onnx"
    shutil.copyfile(RECIPES / case.recipe, recipe)
    if not model.is_file():
        if case.model == "large":
            print(f"  generating {model} ({LARGE_LAYERS * LARGE_WIDTH**2 * 4 / 2**30:.2f} GiB of weights) ...",
                  file=sys.stderr, flush=True)
            subprocess.run([python, str(Path(__file__).resolve()), "--write-large-model", str(model)], check=True)
        else:
            subprocess.run([python, "models/make_models.py", case.model, str(model)], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
    return recipe, model


# ---------------------------------------------------------------- one case


def summary(runs: list[Run]) -> dict[str, Any]:
    stages = sorted({name for run in runs for name in run.stages})
    return {
        "wall_s": [r.wall_s for r in runs],
        "median_wall_s": round(statistics.median(r.wall_s for r in runs), 3),
        "peak_rss_mib": [r.peak_rss_mib for r in runs],
        "median_peak_rss_mib": round(statistics.median(r.peak_rss_mib for r in runs), 1),
        **({"median_stage_s": {s: round(statistics.median(r.stages.get(s, 0.0) for r in runs), 3)
                               for s in stages}} if stages else {}),
    }


def run_case(bench: Bench, case: Case, runs: int) -> dict[str, Any]:
    """Time one case; a tool that fails is recorded with its error instead of numbers."""
    try:
        return _run_case(bench, case, runs)
    except RuntimeError as error:
        print(f"  {case.name} FAILED: {str(error).splitlines()[0]}", file=sys.stderr, flush=True)
        return {"name": case.name, "description": case.description, "kind": case.kind, "runs": runs,
                "error": str(error)[-4000:]}


def _run_case(bench: Bench, case: Case, runs: int) -> dict[str, Any]:
    recipe, model = prepare(case, bench.workdir, bench.python)
    warm = bench.workdir / f"{case.name}.store"
    if case.rebuild:
        bench.pipeline(recipe, warm)  # the artifact every timed run finds unchanged
    mine: list[Run] = []
    theirs: list[Run] = []
    for index in range(runs):
        def ours() -> None:
            store = warm if case.rebuild else bench.workdir / f"{case.name}.store.{index}"  # noqa: B023 - used at once, in this iteration
            try:
                mine.append(bench.pipeline(recipe, store))
            finally:
                if not case.rebuild:
                    shutil.rmtree(store, ignore_errors=True)

        other = bench.peer if case.kind == "peer" else bench.convert
        order = (ours, lambda: theirs.append(other(case, model)))  # noqa: B023 - used at once, in this iteration
        for step in order if index % 2 == 0 else order[::-1]:
            step()
        side = "peer tools" if case.kind == "peer" else "polygraphy"
        print(f"  {case.name} run {index + 1}/{runs}: pipeline {mine[-1].wall_s:.2f}s {mine[-1].peak_rss_mib:.0f} MiB,"
              f" {side} {theirs[-1].wall_s:.2f}s {theirs[-1].peak_rss_mib:.0f} MiB", file=sys.stderr, flush=True)
    shutil.rmtree(warm, ignore_errors=True)
    a, b = summary(mine), summary(theirs)
    target = TARGETS[case.kind]
    wall_ratio = round(a["median_wall_s"] / b["median_wall_s"], 3)
    rss_ratio = round(a["median_peak_rss_mib"] / b["median_peak_rss_mib"], 3)
    weights = sum(p.stat().st_size for p in model.parent.glob(f"{model.name}*"))
    return {"name": case.name, "description": case.description, "kind": case.kind, "runs": runs,
            "model_bytes": weights, "pipeline": a, "polygraphy": b, "versus": VERSUS[case.kind],
            "ratio": {"wall": wall_ratio, "peak_rss": rss_ratio},
            "target": {"wall": target["wall"], "peak_rss": target["rss"]},
            "met": {"wall": wall_ratio <= target["wall"], "peak_rss": rss_ratio <= target["rss"]}}


# ---------------------------------------------------------------- machine, output


def machine(python: str, tree: Path) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem = next((int(line.split()[1]) * 1024 for line in _read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal:")), None)
    probe = ("import importlib.metadata as m, json, platform\n"
             "def v(n):\n try: return m.version(n)\n except m.PackageNotFoundError: return None\n"
             f"p = {{n: v(n) for n in {PACKAGES!r}}}\n"
             "import pipeline; p['trt-pipeline'] = p['trt-pipeline'] or pipeline.__version__ + ' (source tree)'\n"
             "print(json.dumps({'python': platform.python_version(), 'packages': p}))")
    found = json.loads(subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True,
                                      cwd=tree).stdout)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], **found}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def chart(results: dict[str, Any], path: Path) -> None:
    """One panel per case (its own scale: a 40 s bar no longer squashes a 0.3 s one), wall time above, peak RSS
    below, each with the pipeline's ratio to the other side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in results["cases"] if "error" not in c]
    fig, axes = plt.subplots(2, max(1, len(cases)), figsize=(2.6 * max(1, len(cases)) + 1, 5.6), squeeze=False)
    for column, case in enumerate(cases):
        other = "peer tools" if case.get("kind") == "peer" else "polygraphy convert"
        for row, (key, unit) in enumerate((("median_wall_s", "s"), ("median_peak_rss_mib", "MiB"))):
            ax = axes[row][column]
            ours, theirs = case["pipeline"][key], case["polygraphy"][key]
            ax.bar([0, 1], [ours, theirs], 0.6, color=["tab:blue", "tab:orange"])
            ax.set_xticks([0, 1], ["trt-pipeline", other], fontsize=7)
            ax.annotate(f"{ours / theirs:.2f}x", (0, ours), ha="center", va="bottom", fontsize=8)
            ax.set_ylim(0, max(ours, theirs) * 1.18)
            ax.set_ylabel(f"{'wall time' if row == 0 else 'peak RSS'} ({unit})", fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            if row == 0:
                ax.set_title(case["name"], fontsize=8)
    m = results["machine"]
    fig.suptitle(f"trt-pipeline vs polygraphy, TensorRT-RTX on CPU ({m['cores']} cores, {m['cpu']}; "
                 f"{results['runs']} run(s), medians)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _polygraphy(python: str) -> list[str]:
    beside = Path(python).parent / "polygraphy"
    found = str(beside) if beside.is_file() else shutil.which("polygraphy")
    if not found:
        raise SystemExit("polygraphy not found next to the Python interpreter or on PATH; pip install polygraphy")
    return [found]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per tool and case (default: 5)")
    parser.add_argument("--quick", action="store_true", help="the tiny model only, 1 run (for tests)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), default=[],
                        help=f"run only this case; repeatable (default: {', '.join(FULL)})")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent,
                        help="directory for results.json and results.png (default: bench/)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that has the pipeline's dependencies and polygraphy (default: this one)")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="source tree whose pipeline package is measured, e.g. a checkout of an older commit "
                             "(default: this one)")
    parser.add_argument("--no-chart", action="store_true", help="skip the matplotlib chart")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process (default: 1800)")
    parser.add_argument("--write-large-model", type=Path, metavar="PATH", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_large_model:
        large_model(args.write_large_model)
        return 0
    names = args.case or (QUICK if args.quick else FULL)
    runs = 1 if args.quick else args.runs
    results: dict[str, Any] = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "machine": machine(args.python, args.tree.resolve()), "runs": runs,
                               "method": "separate processes, alternating A/B order per run; wall time from the "
                                         "parent, peak RSS from each child's rusage (os.wait4); page cache warm; "
                                         "both tools byte-compiled",
                               "cases": []}
    with tempfile.TemporaryDirectory(prefix="trt-bench-") as tmp:
        bench = Bench(args.python, _polygraphy(args.python), Path(tmp), args.timeout, args.tree.resolve())
        bench.compile()
        for name in names:
            print(f"{name}: {CASES[name].description}", file=sys.stderr, flush=True)
            results["cases"].append(run_case(bench, CASES[name], runs))
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_chart:
        chart(results, args.output / "results.png")
    print(f"{'case':<18} {'pipeline':>9} {'polygraphy':>10} {'ratio':>6} {'RSS MiB':>15} {'RSS ratio':>9}")
    for c in results["cases"]:
        if "error" in c:
            print(f"{c['name']:<18} FAILED: {c['error'].splitlines()[0]}")
            continue
        a, b = c["pipeline"], c["polygraphy"]
        print(f"{c['name']:<18} {a['median_wall_s']:>8.2f}s {b['median_wall_s']:>9.2f}s {c['ratio']['wall']:>6.2f} "
              f"{a['median_peak_rss_mib']:>7.0f}/{b['median_peak_rss_mib']:<7.0f} {c['ratio']['peak_rss']:>9.2f}")
    print(f"wrote {args.output / 'results.json'}" + ("" if args.no_chart else f" and {args.output / 'results.png'}"))
    return 1 if any("error" in c for c in results["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
