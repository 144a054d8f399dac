"""The build farm's commands: `trt-pipeline worker` (join this machine to a Ray cluster, offering its GPU's
resources), and what `build --cluster` and `validate --cluster` run (the nightly's farm, for one recipe or one
artifact)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

from pipeline.commands.options import TRANSPORT_ENV, TRANSPORTS
from pipeline.commands.output import Command, emit_json, progress
from pipeline.errors import CannotRunHere, PipelineError
from pipeline.nightly import farm, resources
from pipeline.nightly.node import SCRATCH_ENV
from pipeline.nightly.pool import Quiet
from pipeline.nightly.report import ran_on
from pipeline.nightly.task import Task
from pipeline.store import Store
from pipeline.trt import gpu
from pipeline.validate import artifact as validation


def worker(args: argparse.Namespace, log: logging.Logger) -> int:
    probe = gpu.probe()
    offered = resources.offered(probe, resources.full_tensorrt_version())
    offered.update(resources.parse_resources(args.resources) if args.resources else {})
    command = resources.ray_start(args.address, offered, args.num_cpus, args.name, args.block,
                                  tuple(args.ray_options))
    env = dict(args.environ)
    if args.scratch:
        env[SCRATCH_ENV] = str(args.scratch.resolve())
    if args.json:
        emit_json({"resources": offered, "command": command, "scratch": env.get(SCRATCH_ENV)})
    if not args.quiet and not args.json:
        gpus = ", ".join(f"{g.name} ({g.sm})" for g in probe.gpus) or f"none ({probe.reason})"
        print(f"GPUs: {gpus}\noffering: {', '.join(f'{k}={v:g}' for k, v in sorted(offered.items())) or 'CPUs only'}"
              f"\n{' '.join(command)}", file=sys.stderr)
    if args.dry_run:
        return 0
    sys.stderr.flush()
    if args.block:  # the node lives as long as this process: a service manager or a pod can run it
        os.execve(command[0], command, env)
    return subprocess.run(command, env=env).returncode


def register(command: Command) -> None:
    p = command("worker", worker,
                "Start a Ray worker node that joins the head at --address and offers this machine's GPUs as "
                "resources (from the GPU probe): per GPU its compute capability (e.g. sm89), 'gpu', and with full "
                "TensorRT installed the full GPU tag. `trt-pipeline nightly --cluster` routes validations and "
                "GPU builds by them; TensorRT-RTX builds go to any node with a free CPU.")
    p.epilog = """\
examples:
  trt-pipeline worker --address 10.0.0.1:6379              a GPU host (or a CPU-only build host)
  trt-pipeline worker --address 10.0.0.1:6379 --block      in the foreground (systemd, a container)
  trt-pipeline worker --address 10.0.0.1:6379 --dry-run    show what it would offer, start nothing
  trt-pipeline worker --address HEAD -- --object-store-memory=4000000000   more options for `ray start`

stderr: the GPUs found, the resources offered and the `ray start` command (--json: the same on stdout).
exit codes: `ray start`'s; 1 when Ray is not installed."""
    p.add_argument("--address", required=True, metavar="HEAD", help="the head node's HOST:PORT")
    p.add_argument("--resources", metavar="JSON", help="more resources to offer, as for `ray start`")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs to offer (default: all)")
    p.add_argument("--name", metavar="NAME", help="the node's name in reports (default: its IP address)")
    p.add_argument("--scratch", type=Path, metavar="DIR",
                   help=f"where builds and the model cache live on this node (default: ${SCRATCH_ENV} or "
                        "TMPDIR/trt-pipeline-node)")
    p.add_argument("--block", action="store_true", help="stay in the foreground until stopped")
    p.add_argument("--dry-run", action="store_true", help="print what would be offered; start nothing")
    p.add_argument("ray_options", nargs="*", metavar="-- RAY_START_OPTION",
                   help="after --: options passed to `ray start` as they are")


# ---------------------------------------------------------------- build --cluster, validate --cluster, nightly --cluster


def connect(args: argparse.Namespace) -> ContextManager[farm.Farm]:
    return farm.Farm.connect(args.cluster, retries=args.retries, unschedulable_after=args.unschedulable_after,
                             transport=transport(args))


def transport(args: argparse.Namespace) -> str:
    """--transport, else $TRT_PIPELINE_TRANSPORT, else auto."""
    value = args.transport or args.environ.get(TRANSPORT_ENV) or "auto"
    if value not in TRANSPORTS:
        raise PipelineError(f"${TRANSPORT_ENV}: expected one of {', '.join(TRANSPORTS)}, got {value!r}",
                            hint="unset it, or pass --transport")
    return value


class Lines:
    """A farm's progress as lines (`say`): what starts, and each target's end with the node it ran on."""

    def __init__(self, say: Callable[[str], Any]) -> None:
        self.say = say

    def planned(self, total: int, to_build: int, workers: int) -> None:
        self.say(f"cluster: {to_build} of {total} target(s) to build with {workers} CPU(s)")

    def started(self, task: Task) -> None:
        self.say(f"[start] {task.recipe} {'+'.join(task.targets)}")

    def finished(self, record: dict) -> None:
        what = record["status"] + (f" ({record['reason']})" if record.get("reason") else "")
        detail = record.get("artifact") or (record.get("error") or "").split("\n")[0]
        where = ran_on(record)
        checked = (record.get("validation") or {}).get("status")
        self.say(f"[{what}] {record['target']} {detail}{'  ' + where if where else ''}"
                 f"{f'  validation {checked}' if checked and checked != 'not-run' else ''}")

    def tick(self) -> None: ...


def cluster_build(args: argparse.Namespace, log: logging.Logger) -> int:
    """`build RECIPE --cluster ADDRESS`: one recipe's targets built, published and validated as a nightly's."""
    store = Store(args.store)
    observer = Lines(progress(args))
    with store.staging("cluster-build") as folder, connect(args) as cluster:
        records = farm.build(cluster, args.recipe, store, tuple(args.target), args.force, gpu.probe(), folder,
                             observer)
        for record in records:
            if record["status"] != "built" and record["status"] != "skipped" and record.get("log") and \
                    Path(record["log"]).is_file():
                record["log"] = str(store.keep_failure_log(record["recipe"], Path(record["log"])))
            elif record.get("log"):
                record["log"] = None  # the logs of published builds are in their artifacts (build.log)
    done = [r for r in records if r["status"] in ("built", "skipped")]
    if args.json:
        emit_json([{"ref": r["artifact"], "tag": r["tag"], "path": r["path"], "reused": r["status"] == "skipped",
                    "built_on": r.get("built_on"), "validation": (r.get("validation") or {}).get("status"),
                    "validated_on": r.get("validated_on")} for r in done])
    else:
        for record in done:
            print(record["path"])
    bad = [r for r in records if r not in done]
    for record in bad:
        print(f"{record['status']}: {record['recipe']} {record['target']}: {(record.get('error') or '').splitlines()[0]}"
              + (f" (log: {record['log']})" if record.get("log") else ""), file=sys.stderr)
    invalid = [r for r in done if (r.get("validation") or {}).get("status") in ("failed", "unschedulable")]
    return 1 if bad or invalid else 0


def cluster_validate(args: argparse.Namespace, log: logging.Logger) -> int:
    """`validate ARTIFACT --cluster ADDRESS`: on a node offering the engine's GPU; this process records it."""
    store = Store(args.store)
    artifact = store.verified(store.resolve(args.artifact, args.tag))
    validation.settings(artifact.manifest(), log)  # the recorded settings are sound before anything is sent
    with store.staging("cluster-validate") as folder, connect(args) as cluster:
        check = cluster.check(store, artifact, args.model, folder)
        (record,) = cluster.run([], Quiet(), (check,))
    where = record.get("validated_on")
    report = check.report
    if report is None:
        recorded = record["validation"]
        raise PipelineError(f"cannot validate {artifact.ref} [{artifact.tag}] on the cluster: "
                            f"{check.error or recorded.get('reason')}", hint=recorded.get("hint"))
    if args.json:
        emit_json({"artifact": artifact.ref, "tag": artifact.tag, "path": str(artifact.path), **report,
                   "node": where})
    if report["status"] == "skipped":
        kept = f"the recorded '{report['kept']}' result is kept" if "kept" in report else "recorded as skipped"
        raise CannotRunHere(f"cannot validate {artifact.ref} [{artifact.tag}] on {where}: {report['reason']} "
                            f"({kept})")
    if not args.json:
        lines = validation.describe_report(report)
        print(f"{artifact.ref} [{artifact.tag}] {lines[0]} (on {where})", *lines[1:], sep="\n")
    return 0 if report["status"] == "passed" else 1
