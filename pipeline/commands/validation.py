"""Commands that need a GPU: validate, infer, bench. Where no GPU can run the engine they exit 2 with one line."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.commands import module
from pipeline.commands.options import cluster_options
from pipeline.commands.output import Command, emit_json
from pipeline.errors import CannotRunHere, PipelineError
from pipeline.manifest import Manifest
from pipeline.store import Artifact, Store
from pipeline.trt import gpu
from pipeline.trt import runtime as engines
from pipeline.validate import artifact as validation


def _artifact(args: argparse.Namespace) -> tuple[Artifact, Manifest]:
    store = Store(args.store)
    artifact = store.verified(store.resolve(args.artifact, args.tag))
    return artifact, artifact.manifest()


def validate(args: argparse.Namespace, log: logging.Logger) -> int:
    if args.cluster:
        return module("farm").cluster_validate(args, log)  # the farm's modules (and Ray) only for --cluster
    store = Store(args.store)
    artifact = store.verified(store.resolve(args.artifact, args.tag))  # the whole store is here: check the engine
    spec = validation.settings(artifact.manifest(), log)
    report = validation.validate_artifact(store, artifact, spec, gpu.probe(), args.environ, log, model=args.model)
    if args.json:
        emit_json({"artifact": artifact.ref, "tag": artifact.tag, "path": str(artifact.path), **report})
    if report["status"] == "skipped":
        kept = f"the recorded '{report['kept']}' result is kept" if "kept" in report else "recorded as skipped"
        raise CannotRunHere(f"cannot validate {artifact.ref} [{artifact.tag}] here: {report['reason']} ({kept})")
    if not args.json:
        lines = validation.describe_report(report)
        print(f"{artifact.ref} [{artifact.tag}] {lines[0]}", *lines[1:], sep="\n")
    return 0 if report["status"] == "passed" else 1


def infer(args: argparse.Namespace, log: logging.Logger) -> int:
    artifact, manifest = _artifact(args)
    feed = engines.read_inputs(args.input, manifest.network.inputs)  # user errors before any probing
    engines.runnable_gpu(manifest, gpu.probe())
    backend = engines.runtime_backend(manifest)
    shapes = {name: tuple(array.shape) for name, array in feed.items()}
    profile = engines.profile_for(manifest.config.profiles, shapes)
    with engines.open_session(backend, artifact.path / manifest.engine.file, args.environ, log,
                              libraries=manifest.network.plugins) as session:
        outputs = engines.infer(session, feed, profile)
    written = engines.write_outputs(outputs, args.output_dir)
    if args.json:
        emit_json({"artifact": artifact.ref, "tag": artifact.tag, "profile": profile, "outputs": {
            name: {"path": str(path), "shape": list(outputs[name].shape), "dtype": outputs[name].dtype.name}
            for name, path in written.items()}})
    else:
        for path in written.values():
            print(path)
    return 0


def bench(args: argparse.Namespace, log: logging.Logger) -> int:
    artifact, manifest = _artifact(args)
    if args.iterations < 1 or args.warmup < 0:
        raise PipelineError("--iterations must be >= 1 and --warmup >= 0")
    engines.runnable_gpu(manifest, gpu.probe())
    backend = engines.runtime_backend(manifest)
    profiles = range(max(1, len(manifest.config.profiles)))
    with engines.open_session(backend, artifact.path / manifest.engine.file, args.environ, log,
                              libraries=manifest.network.plugins) as session:
        results = [engines.bench(session, p, args.iterations, args.warmup) for p in profiles]
    if args.json:
        emit_json({"artifact": artifact.ref, "tag": artifact.tag, "results": results})
        return 0
    for r in results:
        shapes = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in r["shapes"].items())
        print(f"profile {r['profile']} opt [{shapes}]: p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f} ms  "
              f"p99 {r['p99_ms']:.3f} ms  throughput {r['throughput_qps']:.1f}/s ({r['iterations']} runs)")
    return 0


def register(command: Command) -> None:
    p = command("validate", validate,
                "Run the engine (Polygraphy TrtRunner) and the original ONNX model (ONNX Runtime) on identical seeded "
                "inputs at each shape the recipe's validate: block asks for, and compare every output with its "
                "atol/rtol. The result goes into validation.json and the manifest's validation block.\n"
                "Tolerances and shapes are the ones recorded in the manifest at build time. A run that cannot "
                "compare (no GPU here) never replaces a recorded passed/failed result.")
    p.epilog = """\
examples:
  trt-pipeline validate resnet50@1.0.0 --tag sm89.rtx-1.7.1
  trt-pipeline --json validate resnet50@1.0.0 --tag sm89.rtx-1.7.1 --model /data/resnet50.onnx
  trt-pipeline validate resnet50@1.0.0 --tag sm89.rtx-1.7.1 --cluster 10.0.0.1:6379   on a node offering sm89

stdout: 'ARTIFACT [TAG] STATUS' and one line per shape and output with its max errors (--json: the report).
exit codes: 0 passed, 1 failed, 2 cannot run here (recorded as skipped).
--cluster: the engine and the model travel to a node offering the engine's GPU resource (e.g. sm89; see
`worker`); this machine records the result, with the node's name; 1 also when no node offers it."""
    p.add_argument("artifact", metavar="ARTIFACT", help="NAME@VERSION, NAME@VERSION+BUILD or a directory")
    p.add_argument("--tag", help="GPU tag, when the version was built for several")
    p.add_argument("--model", type=Path, metavar="PATH",
                   help="the original ONNX model, when it is not at the path the manifest records (e.g. on a GPU "
                        "machine); it must have the recorded sha256")
    cluster_options(p, "validate")

    p = command("infer", infer,
                "Run the engine once with TensorRT's Python API and write one OUTPUT.npy per output into --output-dir. "
                "The optimization profile is the first one whose range holds the input shapes.")
    p.epilog = """\
examples:
  trt-pipeline infer resnet50@1.0.0 --tag sm89.rtx-1.7.1 --input input=batch.npy --output-dir out/

stdout: the .npy files written, one per line (--json: per output its path, shape and dtype, and the profile).
exit codes: 0 ok, 1 error (e.g. an input that fits no profile), 2 cannot run here (no GPU that runs it)."""
    p.add_argument("artifact", metavar="ARTIFACT", help="NAME@VERSION, NAME@VERSION+BUILD or a directory")
    p.add_argument("--tag", help="GPU tag, when the version was built for several")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", required=True,
                   help="an input tensor from a .npy file; repeat for each input")
    p.add_argument("--output-dir", type=Path, required=True, metavar="DIR", help="where the outputs are written")

    p = command("bench", bench,
                "Time execute + synchronize at each optimization profile's opt shapes, after warm-up: "
                "p50/p90/p99 latency and throughput.")
    p.epilog = """\
examples:
  trt-pipeline bench resnet50@1.0.0 --tag sm89.rtx-1.7.1
  trt-pipeline --json bench resnet50@1.0.0 --iterations 1000 --warmup 50

stdout: one line per profile: its opt shapes, p50/p90/p99 in ms and throughput (--json: the same as data).
exit codes: 0 ok, 1 error, 2 cannot run here (no GPU that runs it)."""
    p.add_argument("artifact", metavar="ARTIFACT", help="NAME@VERSION, NAME@VERSION+BUILD or a directory")
    p.add_argument("--tag", help="GPU tag, when the version was built for several")
    p.add_argument("--iterations", type=int, default=100, metavar="N", help="timed runs per profile (default 100)")
    p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed runs first (default 10)")
