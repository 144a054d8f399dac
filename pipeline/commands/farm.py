"""`trt-pipeline worker`: join this machine to a build farm (a Ray cluster) offering its GPU's resources."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from pipeline.commands.output import Command, emit_json
from pipeline.nightly import resources
from pipeline.nightly.node import SCRATCH_ENV
from pipeline.trt import gpu


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
    p = command("worker", worker, "join this machine to a build farm (a Ray cluster)",
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
