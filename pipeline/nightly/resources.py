"""What a build farm's node offers, from its GPU probe, and the `ray start` command that advertises it.

Per GPU: its compute capability ('sm89': TensorRT-RTX validations, full-TensorRT builds), 'gpu' (target
'local') and, when full TensorRT is installed, the full GPU tag ('nvidia-a100-sxm4-80gb.sm80.trt-10.9.0':
full-TensorRT validations). A node without a GPU offers only CPUs and memory: it builds TensorRT-RTX engines.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.trt.backend import installed_version
from pipeline.trt.gpu import Probe
from pipeline.trt.target import tag

GPU = "gpu"


def offered(probe: Probe, full_tensorrt: str | None = None) -> dict[str, float]:
    """Resources of this machine's GPUs; `full_tensorrt`: the installed full TensorRT's version, if any."""
    found: dict[str, float] = {}
    for gpu in probe.gpus:
        names = [gpu.sm, GPU] + ([tag(gpu.sm, "tensorrt", full_tensorrt, gpu.slug)] if full_tensorrt else [])
        for name in names:
            found[name] = found.get(name, 0) + 1
    return found


def full_tensorrt_version() -> str | None:
    return installed_version("tensorrt")


def parse_resources(text: str) -> dict[str, float]:
    """--resources '{"sm89": 1}' (as `ray start` takes it): a JSON object of names to amounts."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise PipelineError(f"--resources: expected a JSON object such as '{{\"sm89\": 1}}', got {text!r} "
                            f"({error})") from None
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in value.values()):
        raise PipelineError(f"--resources: expected names mapped to amounts >= 0, got {text!r}")
    return {str(k): float(v) for k, v in value.items()}


def ray_start(address: str, resources: dict[str, float], num_cpus: int | None = None, name: str | None = None,
              block: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """The `ray start` command line that joins `address` offering `resources` (the `ray` next to this Python,
    else on PATH)."""
    beside = Path(sys.executable).parent / "ray"
    ray = str(beside) if beside.is_file() else shutil.which("ray")
    if ray is None:
        raise PipelineError("the `ray` command is not installed", hint="pip install 'trt-pipeline[cluster]'")
    command = [ray, "start", f"--address={address}"]
    if resources:
        command.append(f"--resources={json.dumps(resources, sort_keys=True)}")
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    if name:
        command.append(f"--node-name={name}")
    return command + (["--block"] if block else []) + list(extra)
