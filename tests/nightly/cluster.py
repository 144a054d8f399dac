"""A real Ray cluster on this machine for tests and benchmarks: a head and worker nodes, each started with
`ray start --block` as its own process group, each with its own temp dir (sockets), scratch dir (no shared
scratch) and free ports, all stopped by process group, never by name (other people's Ray may run here).

The nodes run this tree's code: the driver ships it (Farm.connect uploads the package), and PYTHONPATH points at
the tree for `trt-pipeline worker`, which is run as `python -m pipeline`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
# Fast failure detection (a killed node is declared dead in ~2 s instead of ~30 s) and immediate teardown.
ENV = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
       "RAY_health_check_initial_delay_ms": "1000", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
       "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports() -> list[str]:
    return [f"--{name}={free_port()}" for name in (
        "object-manager-port", "node-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port")]


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    scratch: Path
    resources: dict


@dataclass
class LocalCluster:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc-")))  # short: socket paths
    object_store_bytes: int | None = 100 << 20  # None: Ray's default (30% of memory)
    address: str = ""
    nodes: dict[str, Node] = field(default_factory=dict)

    def start_head(self, cpus: int = 0, resources: dict | None = None) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        extra = ["--resources", json.dumps(resources)] if resources else []
        self._start("head", ["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
                             *extra], cpus, resources or {})

    def add_ray_node(self, name: str, resources: dict | None = None, cpus: int = 1) -> Node:
        """A worker node started with plain `ray start --resources ...`."""
        extra = [f"--address={self.address}"] + (["--resources", json.dumps(resources)] if resources else [])
        return self._start(name, extra, cpus, resources or {})

    def add_worker(self, name: str, resources: dict | None = None, cpus: int = 1) -> Node:
        """A worker node started with `trt-pipeline worker` (its GPU probe, plus `resources` for this GPU-less
        machine)."""
        command = [sys.executable, "-m", "pipeline", "worker", "--address", self.address, "--num-cpus", str(cpus),
                   "--name", name, "--block"] + (["--resources", json.dumps(resources)] if resources else [])
        return self._spawn(name, command + ["--", *self._node_options(name)], resources or {})

    def _start(self, name: str, options: list[str], cpus: int, resources: dict) -> Node:
        command = [RAY, "start", "--block", f"--num-cpus={cpus}", f"--node-name={name}", *options,
                   *self._node_options(name)]
        return self._spawn(name, command, resources)

    def _node_options(self, name: str) -> list[str]:
        temp = self.root / name
        temp.mkdir(parents=True, exist_ok=True)
        store = [f"--object-store-memory={self.object_store_bytes}"] if self.object_store_bytes else []
        return ["--node-ip-address=127.0.0.1", f"--temp-dir={temp}", *store, "--disable-usage-stats",
                "--include-log-monitor=false", *_ports()]

    def _spawn(self, name: str, command: list[str], resources: dict) -> Node:
        scratch = self.root / f"{name}-scratch"
        env = {**os.environ, **ENV, "TRT_PIPELINE_SCRATCH": str(scratch),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        log = open(self.root / f"{name}.log", "w")
        process = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=self.root)
        log.close()
        node = self.nodes[name] = Node(name, process, scratch, resources)
        return node

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` nodes are alive (asked of the GCS with `ray list`-free means: a short-lived driver)."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n.name for n in self.nodes.values() if n.process.poll() is not None]
            assert not dead, f"nodes {dead} exited: see {self.root}/<name>.log"
            try:
                alive = ray.nodes() if ray.is_initialized() else self._nodes_once()
                if len([n for n in alive if n["Alive"]]) >= count:
                    return
            except Exception:  # noqa: BLE001 - the head is still starting
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{count} nodes not alive after {timeout}s: see {self.root}")

    def _nodes_once(self) -> list[dict]:
        import ray

        ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        try:
            return ray.nodes()
        finally:
            ray.shutdown()

    def kill(self, name: str) -> None:
        """The node dies at once, as a machine that loses power: SIGKILL to its process group and to every
        process descending from it (Ray's task workers run in process groups of their own; a worker that outlived
        its raylet could still hand a small result straight to the driver)."""
        node = self.nodes.pop(name)
        below = _descendants(node.process.pid)
        _signal_group(node.process, signal.SIGKILL)
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.process.wait()

    def stop(self) -> None:
        """Worker nodes first, then the head; SIGTERM, then SIGKILL after 10 s."""
        order = [n for n in self.nodes.values() if n.name != "head"] + [n for n in self.nodes.values()
                                                                         if n.name == "head"]
        for node in order:
            _signal_group(node.process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in order:
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(node.process, signal.SIGKILL)
                node.process.wait()
        self.nodes.clear()
        self._reap(deadline + 5)
        shutil.rmtree(self.root, ignore_errors=True)  # sockets, Ray's logs, the nodes' scratch

    def _reap(self, deadline: float) -> None:
        """Ray's worker processes run in process groups of their own and leave when their node has gone; those
        still here at `deadline` are killed. They are found by this cluster's own directory in their command
        line, never by name."""
        while (left := self._processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _processes(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if str(self.root).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc's parent links."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
