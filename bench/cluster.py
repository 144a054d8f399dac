"""Benchmark the build farm (`nightly --cluster`) on this machine. Three parts, each in its own process:

  nightly     6 recipes x 3 targets (ResNet-50, two-input and tiny models): the local executor (--jobs 2) against a
              local Ray cluster of a head (no CPUs) and two 1-CPU worker nodes, alternating which goes first, cold
              stores; the overhead is cluster / local - 1 (goal <= 15%). The cluster is started before and stopped
              after (not timed).
  nightly-resnet  the same with six ResNet-50 recipes (a heavier night).
  overhead    per cluster shape (head + 2 one-CPU nodes; one 2-CPU node, as a machine of a real farm is one
              node), local --jobs 2 against the farm (files by path: the nodes see this machine's files) and the
              farm with --transport object-store (as across machines), rotating, so that load hits all alike.
  large       the 2.25 GiB model of bench/run.py through a one-worker cluster, by the object store (as between
              machines): how the model travels to the node, how the cleaned model and engine come back, the
              peak RSS of the driver and the node's worker.
  simulation  100 recipes x 4 GPU types (sm75, sm86, sm89, sm120) on 1, 4 and 16 nodes: sleeping Ray tasks
              with the nodes' resources (per pair a build asking for a CPU, then its validation asking for the
              GPU type), durations from the nightly part's measured builds, time compressed so that
              each run takes about --real-s seconds.

    python bench/cluster.py                    # all three (~10 minutes, ~12 GB of RAM at the large part's peak)
    python bench/cluster.py --part nightly --runs 3
    python bench/cluster.py --quick            # tiny recipes, 1 run, simulation on 1 node (for the test suite)

Results go to bench/cluster.json (--output DIR).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = ("sm86", "sm89", "sm120")
GPU_TYPES = ("sm75", "sm86", "sm89", "sm120")
RECIPE = """\
name: {name}
version: 1.0.0
model: {{path: {model}}}
backend: tensorrt-rtx
targets: [{targets}]
stages:
  - parse: {{}}
{cleanup}  - network-flag: {{strongly_typed: true}}
  - memory-pool: {{workspace: 1GiB}}
  - serialize:
      profiles:
{profiles}validate: {{atol: 1.0e-2, rtol: 1.0e-2}}
"""
# name -> (model, profiles, graph-cleanup?)
NIGHTLY = {
    "resnet-a": ("resnet50", "        - input: {min: [1, 3, 224, 224], opt: [8, 3, 224, 224], max: [32, 3, 224, 224]}\n",
                 True),
    "resnet-b": ("resnet50", "        - input: {min: [1, 3, 224, 224], opt: [1, 3, 224, 224], max: [4, 3, 224, 224]}\n",
                 False),
    "two-a": ("two_input", "        - image: {min: [1, 3, 16, 16], opt: [2, 3, 32, 32], max: [4, 3, 64, 64]}\n"
                           "          scale: {min: [1, 1], opt: [2, 1], max: [4, 1]}\n", False),
    "two-b": ("two_input", "        - image: {min: [1, 3, 32, 32], opt: [4, 3, 64, 64], max: [8, 3, 128, 128]}\n"
                           "          scale: {min: [1, 1], opt: [4, 1], max: [8, 1]}\n", True),
    "tiny-a": ("tiny", "        - x: {min: [1, 4], opt: [8, 4], max: [64, 4]}\n", False),
    "tiny-b": ("tiny", "        - x: {min: [1, 4], opt: [2, 4], max: [4, 4]}\n", True),
}
# The same night with six ResNet-50 recipes (a heavier night: ~3x the build time of the mixed set)
for _i, _opt in enumerate((1, 2, 4, 8, 16, 32)):
    NIGHTLY[f"resnet-{_opt}"] = ("resnet50", f"        - input: {{min: [1, 3, 224, 224], opt: [{_opt}, 3, 224, 224], "
                                             f"max: [32, 3, 224, 224]}}\n", _i % 2 == 0)
SETS = {"mixed": ("resnet-a", "resnet-b", "two-a", "two-b", "tiny-a", "tiny-b"),
        "resnet": tuple(f"resnet-{opt}" for opt in (1, 2, 4, 8, 16, 32)), "quick": ("tiny-a", "tiny-b")}


def write_recipes(folder: Path, models: Path, names: Sequence[str]) -> None:
    from models.make_models import MODELS, write_model

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        model, profiles, cleanup = NIGHTLY[name]
        path = models / f"{model}.onnx"
        if not path.is_file():
            models.mkdir(parents=True, exist_ok=True)
            write_model(MODELS[model](), path)
        (folder / f"{name}.yaml").write_text(RECIPE.format(
            name=name, model=path, targets=", ".join(TARGETS), profiles=profiles,
            cleanup="  - graph-cleanup: {fold_constants: true}\n" if cleanup else ""))


def cluster(nodes: list[tuple[str, dict, int]], object_store: int | None = 256 << 20) -> Any:
    from tests.nightly.cluster import LocalCluster

    farm = LocalCluster(object_store_bytes=object_store)
    farm.start_head(cpus=0)
    for name, resources, cpus in nodes:
        farm.add_ray_node(name, resources, cpus)
    farm.wait_for(len(nodes) + 1, timeout=300)
    return farm


# ---------------------------------------------------------------- part 1: nightly, cluster vs local


def part_nightly(work: Path, runs: int, recipe_set: str, object_store: int | None) -> dict:
    from pipeline.nightly import run as nightly
    from pipeline.nightly.farm import Farm
    from pipeline.store import Store

    names = SETS[recipe_set]
    recipes = work / "recipes"
    write_recipes(recipes, work / "models", names)
    started = time.perf_counter()
    farm = cluster([("w1", {"sm86": 1, "sm89": 1}, 1), ("w2", {"sm120": 1}, 1)], object_store=object_store)
    startup = time.perf_counter() - started
    walls: dict[str, list[float]] = {"local": [], "cluster": []}
    reports: dict[str, dict] = {}
    try:
        for run in range(runs):
            for kind in (("local", "cluster") if run % 2 == 0 else ("cluster", "local")):
                store = Store(work / f"{kind}-{run}")
                begin = time.perf_counter()
                if kind == "local":
                    reports[kind] = nightly.run(recipes, store, jobs=2)
                else:
                    with Farm.connect(farm.address) as executor:
                        reports[kind] = nightly.run(recipes, store, executor=executor)
                walls[kind].append(round(time.perf_counter() - begin, 3))
                assert reports[kind]["summary"]["built"] == len(names) * len(TARGETS), reports[kind]["summary"]
                print(f"  run {run + 1} {kind:<7} {walls[kind][-1]:6.2f}s", file=sys.stderr, flush=True)
    finally:
        farm.stop()
    local, remote = statistics.median(walls["local"]), statistics.median(walls["cluster"])
    same = [(p["recipe"], p["target"], p["build_key"]) for p in reports["local"]["pairs"]] == \
        [(p["recipe"], p["target"], p["build_key"]) for p in reports["cluster"]["pairs"]]
    transports = sorted({p.get("transport") for p in reports["cluster"]["pairs"]})
    return {"set": recipe_set, "object_store_bytes": object_store, "recipes": len(names), "targets": list(TARGETS),
            "runs": runs,
            "cluster_startup_s": round(startup, 2),
            "walls": walls, "median_local_s": local, "median_cluster_s": remote,
            "overhead_pct": round((remote / local - 1) * 100, 1), "goal_pct": 15,
            "same_build_keys": same, "transports": transports, "pairs": _measured(reports["cluster"])}


def _measured(report: dict) -> list[dict]:
    """Per pair: its build time (the manifest's stages plus the wait for the cleanup check) and the cleanup
    check's ONNX Runtime time (the validation proxy of the simulation)."""
    from pipeline.store import Store

    found = []
    for pair in report["pairs"]:
        manifest = Store(Path(report["store"])).resolve(pair["path"]).manifest()
        check = (manifest.to_dict().get("cleanup_check") or {}).get("seconds")
        found.append({"recipe": pair["recipe"], "target": pair["target"], "build_s": pair["build_s"],
                      "check_s": check, "engine_bytes": pair["engine_bytes"], "built_on": pair.get("built_on")})
    return found


# ---------------------------------------------------------------- part 1b: where the overhead goes


SHAPES = {  # name -> (head CPUs, head resources, worker nodes)
    "two-nodes": (0, {}, [("w1", {"sm86": 1, "sm89": 1}, 1), ("w2", {"sm120": 1}, 1)]),
    "one-node": (2, {"sm86": 1, "sm89": 1, "sm120": 1}, []),  # one raylet per machine, as a real farm has
}


def part_overhead(work: Path, runs: int, recipe_set: str, object_store: int | None,
                  shapes: Sequence[str] = tuple(SHAPES)) -> dict:
    """A/B under the same load: per cluster shape, `runs` rounds of local --jobs 2 and the farm, alternating
    which goes first; the overhead is the farm's median over the local median of the same block."""
    from pipeline.nightly import run as nightly
    from pipeline.nightly.farm import Farm
    from pipeline.store import Store
    from tests.nightly.cluster import LocalCluster

    names = SETS[recipe_set]
    recipes = work / "recipes"
    write_recipes(recipes, work / "models", names)
    variants = ("local", "cluster", "object-store")
    found: dict[str, Any] = {"set": recipe_set, "recipes": len(names), "runs": runs, "shapes": {}}
    for shape in shapes:
        cpus, resources, workers = SHAPES[shape]
        farm = LocalCluster(object_store_bytes=object_store)
        farm.start_head(cpus=cpus, resources=resources)
        for name, offered, count in workers:
            farm.add_ray_node(name, offered, count)
        farm.wait_for(len(workers) + 1, timeout=300)
        walls: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[dict]] = {v: [] for v in variants}
        try:
            for run in range(runs):
                for kind in variants[run % 3:] + variants[:run % 3]:
                    store = Store(work / f"{shape}-{kind}-{run}")
                    meter = _CpuSeconds(farm.root if kind != "local" else None)
                    begin = time.perf_counter()
                    if kind == "local":
                        report = nightly.run(recipes, store, jobs=2)
                    else:
                        transport = "auto" if kind == "cluster" else "object-store"
                        with Farm.connect(farm.address, transport=transport) as executor:
                            report = nightly.run(recipes, store, executor=executor)
                        assert {p["transport"] for p in report["pairs"]} == \
                            {"path" if kind == "cluster" else "object-store"}, report["pairs"]
                    walls[kind].append(round(time.perf_counter() - begin, 3))
                    cpu[kind].append(meter.stop())
                    assert report["summary"]["built"] == len(names) * len(TARGETS), report["summary"]
                    print(f"  {shape} run {run + 1} {kind:<7} {walls[kind][-1]:6.2f}s  CPU {cpu[kind][-1]}",
                          file=sys.stderr, flush=True)
        finally:
            farm.stop()
        medians = {k: statistics.median(v) for k, v in walls.items()}
        cpu_medians = {k: statistics.median(sum(s for n, s in c.items() if n != "worker_processes") for c in v)
                       for k, v in cpu.items()}
        found["shapes"][shape] = {"walls": walls, "medians": medians, "cpu_s": cpu, "median_cpu_s": cpu_medians,
                                  "overhead_pct": round((medians["cluster"] / medians["local"] - 1) * 100, 1),
                                  "cpu_overhead_pct": round((cpu_medians["cluster"] / cpu_medians["local"] - 1) * 100,
                                                            1),
                                  "object_store_overhead_pct": round((medians["object-store"] / medians["local"] - 1)
                                                                     * 100, 1),
                                  "object_store_cpu_overhead_pct": round(
                                      (cpu_medians["object-store"] / cpu_medians["local"] - 1) * 100, 1)}
    return found


class _CpuSeconds(threading.Thread):
    """CPU seconds (user + system) used from now to `stop`: this process and its children (the local executor's
    workers), and with `root` every process of that local cluster (found by its directory in their command line:
    raylets, GCS, agents, task workers), grouped as driver / ray system / task workers. Sampled every 0.1 s, so a
    task worker that exits keeps its last sample; load from other work does not count, unlike wall time."""

    def __init__(self, root: Path | None) -> None:
        super().__init__(daemon=True)
        self.root, self.done = root, threading.Event()
        self.start_self = self._own()
        self.base: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        if root is not None:
            self.base = {pid: used for pid, (_, used) in self._cluster().items()}
            self.start()

    @staticmethod
    def _own() -> float:
        import resource

        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def _cluster(self) -> dict[int, tuple[str, float]]:
        """Processes naming the cluster's directory, and their children (task workers retitle themselves
        'ray::...' and no longer name it)."""
        rows = {}
        tick = os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                line = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            mine = str(self.root).encode() in line
            rows[int(entry.name)] = (mine, int(fields[1]), line.replace(b"\0", b" ").decode(errors="replace"),
                                     (int(fields[11]) + int(fields[12])) / tick)
        ours = {pid for pid, row in rows.items() if row[0]}
        return {pid: (title, used) for pid, (mine, parent, title, used) in rows.items()
                if mine or parent in ours}

    def run(self) -> None:
        while not self.done.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        """A process that is exiting has no command line any more: it keeps the title it was seen with."""
        for pid, (title, used) in self._cluster().items():
            self.last[pid] = (title or self.last.get(pid, ("", 0.0))[0], used)

    def stop(self) -> dict[str, float]:
        used = {"driver": round(self._own() - self.start_self, 2)}
        if self.root is None:
            return used
        self.done.set()
        self.join()
        self._sample()
        workers = system = 0.0
        count = 0
        for pid, (name, seconds) in self.last.items():
            spent = seconds - self.base.get(pid, 0.0)
            if (name.startswith("ray::") and "Agent" not in name) or "default_worker.py" in name:  # a task worker
                workers += spent
                count += pid not in self.base
            else:
                system += spent
        return {**used, "task_workers": round(workers, 2), "ray_system": round(system, 2), "worker_processes": count}


# ---------------------------------------------------------------- part 2: the >2 GiB model


def part_large(work: Path, object_store: int) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from run import LARGE_LAYERS, LARGE_WIDTH

    from pipeline.nightly import run as nightly
    from pipeline.nightly.farm import Farm
    from pipeline.store import Store

    recipes = work / "large"
    recipes.mkdir(parents=True)
    shutil.copyfile(ROOT / "bench" / "recipes" / "large.yaml", recipes / "large.yaml")
    print(f"  generating the model ({LARGE_LAYERS * LARGE_WIDTH ** 2 * 4 / 2 ** 30:.2f} GiB of weights) ...",
          file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--write-large-model",
                    str(recipes / "large.onnx")], check=True)
    farm = cluster([("w1", {"sm89": 1}, 1)], object_store=object_store)
    peak = _PeakRss(farm)
    driver_lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: driver_lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("pipeline.nightly.farm").addHandler(handler)
    logging.getLogger("pipeline.nightly.farm").setLevel(logging.INFO)
    try:
        peak.start()
        begin = time.perf_counter()
        # through the object store, as between machines (on this machine the node would take the files by path)
        with Farm.connect(farm.address, transport="object-store") as executor:
            report = nightly.run(recipes, Store(work / "store"), executor=executor)
        wall = time.perf_counter() - begin
    finally:
        peak.stop()
        farm.stop()
    (pair,) = report["pairs"]
    log = Path(pair["log"]).read_text()
    lines = [f"driver: {line}" for line in driver_lines if "object store" in line] + [
        line.split(": ", 1)[-1] for line in log.splitlines() if "fetched in" in line or line.startswith("driver:")]
    weights = sum(p.stat().st_size for p in recipes.glob("large.onnx*"))
    return {"status": pair["status"], **({"failure": pair["error"]} if pair.get("error") else {}),
            "model_bytes": weights, "wall_s": round(wall, 2),
            "build_s": pair.get("build_s"), "engine_bytes": pair.get("engine_bytes"), "transfer": lines,
            "driver_peak": peak.driver, "node_worker_peak": peak.worker, "object_store_bytes_per_node": object_store}


class _PeakRss(threading.Thread):
    """Every 0.2 s: the largest RSS and anonymous (private, not file-backed) memory of the cluster's task
    processes (`ray::` workers of its nodes) and of this process. RSS also counts pages of mapped files (the
    files a node sends back are mapped), which the kernel can drop; anonymous memory is what the process holds."""

    def __init__(self, farm: Any) -> None:
        super().__init__(daemon=True)
        self.farm, self.done = farm, threading.Event()
        self.worker = {"rss_mib": 0, "anonymous_mib": 0}
        self.driver = {"rss_mib": 0, "anonymous_mib": 0}

    def run(self) -> None:
        raylets = {str(n.process.pid) for n in self.farm.nodes.values()}
        while not self.done.wait(0.2):
            out = subprocess.run(["ps", "-eo", "pid,ppid,sid,args"], capture_output=True, text=True).stdout
            rows = [line.split(None, 3) for line in out.splitlines()[1:]]
            sessions = {sid for pid, _, sid, _ in rows if pid in raylets}
            for pid, ppid, sid, args in rows:
                if args.startswith("ray::") and "Agent" not in args and (sid in sessions or ppid in raylets):
                    _peak(self.worker, pid)
            _peak(self.driver, str(os.getpid()))

    def stop(self) -> None:
        self.done.set()
        self.join()


def _peak(peak: dict, pid: str) -> None:
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    except (OSError, ValueError):
        return
    peak["rss_mib"] = max(peak["rss_mib"], int(fields["Rss"].split()[0]) // 1024)
    peak["anonymous_mib"] = max(peak["anonymous_mib"], int(fields["Anonymous"].split()[0]) // 1024)


# ---------------------------------------------------------------- part 3: simulation


def part_simulation(measured: list[dict], real_s: float, node_counts: Sequence[int], recipes: int) -> dict:
    """Each node: 2 build slots (CPUs); GPUs so that every type exists: 1 node holds one of each type, 4 nodes one
    type each, 16 nodes one GPU each (4 of each type). Time is compressed so that each run takes about `real_s`
    seconds (never stretched): the shortest sleeps stay well above Ray's per-task cost."""
    import ray

    builds = [p["build_s"] for p in measured if p["build_s"]]
    checks = [(p["check_s"] or 0.0) + 0.5 for p in measured]  # + loading the engine: not measurable here
    durations = [(builds[i % len(builds)], checks[i % len(checks)]) for i in range(recipes * len(GPU_TYPES))]
    results = []
    for count in node_counts:
        nodes = [(f"n{i}", dict.fromkeys(GPU_TYPES, 1) if count == 1 else {GPU_TYPES[i % len(GPU_TYPES)]: 1}, 2)
                 for i in range(count)]
        slots = 2 * count
        per_gpu = {t: sum(c for i, (_, c) in enumerate(durations) if GPU_TYPES[i % 4] == t) / max(
            1, sum(t in n[1] for n in nodes)) for t in GPU_TYPES}
        bound = max(sum(b + c for b, c in durations) / slots, max(per_gpu.values()))
        scale = max(1.0, bound / real_s)
        started = time.perf_counter()
        farm = cluster(nodes, object_store=80 << 20)
        startup = time.perf_counter() - started
        try:
            ray.init(address=farm.address, logging_level="ERROR", log_to_driver=False)
            build = ray.remote(num_cpus=1, max_retries=0)(_sleep)
            validate = ray.remote(num_cpus=1, max_retries=0)(_after)
            ray.get([build.remote(0), validate.remote(None, 0)])  # worker processes warm on some node
            begin = time.perf_counter()
            refs = []
            for i, (built, checked) in enumerate(durations):
                gpu = GPU_TYPES[i % len(GPU_TYPES)]
                done = build.options(scheduling_strategy="SPREAD").remote(built / scale)
                refs.append(validate.options(resources={gpu: 1}).remote(done, checked / scale))
            ray.get(refs)
            wall = (time.perf_counter() - begin) * scale
        finally:
            ray.shutdown()
            farm.stop()
        results.append({"nodes": count, "build_slots": slots, "gpus": sum(len(n[1]) for n in nodes),
                        "time_compression": round(scale, 1),
                        "cluster_startup_s": round(startup, 1), "simulated_wall_s": round(wall, 1),
                        "pairs_per_hour": round(len(durations) / wall * 3600),
                        "lower_bound_s": round(bound, 1), "efficiency": round(bound / wall, 2)})
        print(f"  {count:>2} node(s): {wall:7.1f}s simulated, bound {bound:6.1f}s", file=sys.stderr, flush=True)
    return {"recipes": recipes, "gpu_types": list(GPU_TYPES), "real_s_per_run": real_s, "pairs": len(durations),
            "build_s": {"mean": round(statistics.mean(builds), 3), "max": max(builds)},
            "validation_s": {"mean": round(statistics.mean(checks), 3), "assumed": "cleanup check + 0.5 s"},
            "results": results}


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _after(_: Any, seconds: float) -> None:
    time.sleep(seconds)


# ---------------------------------------------------------------- main


PARTS = ("nightly", "nightly-resnet", "overhead", "large", "simulation")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=PARTS, action="append")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--real-s", type=float, default=30.0,
                        help="simulation: compress time so that each run takes about this long")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--object-store-gib", type=float, default=1.0,
                        help="each node's object store (0: Ray's default, 30%% of memory per node)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # run one part, write its JSON here
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    parts = args.part or (["nightly", "simulation"] if args.quick else list(PARTS))
    results: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "memory_bytes": os.sysconf("SC_PAGE_SIZE") *
                                           os.sysconf("SC_PHYS_PAGES"), "python": sys.version.split()[0]},
                               "quick": args.quick}
    previous = args.output / "cluster.json"
    if previous.is_file() and not args.quick:  # a part run alone keeps the others' last results
        results = {**json.loads(previous.read_text()), **results}
    for part in PARTS:
        if part not in parts:
            continue
        print(f"{part} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            out = Path(tmp) / "result.json"
            argv_ = [sys.executable, __file__, "--child", str(out), "--part", part, "--runs", str(args.runs),
                     "--real-s", str(args.real_s), "--output", str(args.output),
                     "--object-store-gib", str(args.object_store_gib)] + (["--quick"] if args.quick else [])
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            done = subprocess.run(argv_, env=env, cwd=tmp)
            if done.returncode != 0:
                results[part] = {"error": f"exit {done.returncode}"}
                continue
            results[part] = json.loads(out.read_text())
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "cluster.json").write_text(json.dumps(results, indent=2) + "\n")
    _print(results)
    return 1 if any("error" in results.get(p, {}) for p in parts) else 0


def _child(args: argparse.Namespace) -> int:
    (part,) = args.part
    work = args.child.parent
    if part in ("nightly", "nightly-resnet"):
        recipe_set = "quick" if args.quick else "resnet" if part == "nightly-resnet" else "mixed"
        result = part_nightly(work, 1 if args.quick else args.runs, recipe_set, _store_bytes(args))
    elif part == "overhead":
        result = part_overhead(work, 1 if args.quick else args.runs, "quick" if args.quick else "mixed",
                               _store_bytes(args))
    elif part == "large":
        result = part_large(work, _store_bytes(args) or 1 << 30)
    else:
        measured = json.loads((args.output / "cluster.json").read_text())["nightly"]["pairs"] \
            if (args.output / "cluster.json").is_file() and not args.quick else None
        if measured is None:
            measured = part_nightly(work, 1, "quick", _store_bytes(args))["pairs"] if args.quick else None
        result = part_simulation(measured, args.real_s, (1,) if args.quick else (1, 4, 16), 10 if args.quick else 100)
    args.child.write_text(json.dumps(result, indent=2))
    return 0


def _store_bytes(args: argparse.Namespace) -> int | None:
    return int(args.object_store_gib * (1 << 30)) or None


def _print(results: dict) -> None:
    for night in (results.get("nightly") or {}, results.get("nightly-resnet") or {}):
        if "median_local_s" in night:
            print(f"nightly ({night.get('set', 'mixed')}) {night['recipes']} recipes x {len(night['targets'])} targets: local "
                  f"--jobs 2 {night['median_local_s']:.2f}s, cluster (2 x 1-CPU nodes) {night['median_cluster_s']:.2f}s: "
                  f"overhead {night['overhead_pct']:+.1f}% (goal <= {night['goal_pct']}%)")
    for shape, block in ((results.get("overhead") or {}).get("shapes") or {}).items():
        print(f"overhead ({shape}): local {block['medians']['local']:.2f}s, cluster {block['medians']['cluster']:.2f}s "
              f"({block['overhead_pct']:+.1f}%); CPU seconds local {block['median_cpu_s']['local']:.1f}, cluster "
              f"{block['median_cpu_s']['cluster']:.1f} ({block['cpu_overhead_pct']:+.1f}%)")
        if "object-store" in block["medians"]:
            print(f"  --transport object-store: {block['medians']['object-store']:.2f}s "
                  f"({block['object_store_overhead_pct']:+.1f}%), CPU seconds {block['median_cpu_s']['object-store']:.1f} "
                  f"({block['object_store_cpu_overhead_pct']:+.1f}%)")
    large = results.get("large") or {}
    if "wall_s" in large:
        print(f"large ({large['model_bytes'] / 2 ** 30:.2f} GiB): {large['status']} in {large['wall_s']:.1f}s "
              f"(build {large['build_s']}s); peak MiB driver {large['driver_peak']}, node worker "
              f"{large['node_worker_peak']}")
        for line in large["transfer"]:
            print(f"  {line}")
    sim = results.get("simulation") or {}
    for row in sim.get("results", []):
        print(f"simulation {sim['pairs']} pairs on {row['nodes']:>2} node(s): {row['simulated_wall_s']:8.1f}s "
              f"({row['pairs_per_hour']} pairs/h; lower bound {row['lower_bound_s']}s, efficiency "
              f"{row['efficiency']:.2f})")


if __name__ == "__main__":
    sys.exit(main())
