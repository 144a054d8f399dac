"""What GPU this machine has, asked without touching CUDA memory: driver library, then nvidia-smi."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.trt.target import sm


@dataclass(frozen=True)
class Gpu:
    name: str  # 'NVIDIA H100 80GB HBM3'
    compute_capability: str  # '9.0'

    @property
    def sm(self) -> str:
        return sm(self.compute_capability)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


@dataclass(frozen=True)
class Probe:
    driver: bool
    gpus: tuple[Gpu, ...]
    reason: str | None  # why nothing can run here, or None

    @property
    def gpu(self) -> Gpu | None:
        return self.gpus[0] if self.gpus else None


def _load_driver() -> None:
    ctypes.CDLL("libcuda.so.1")


def _query_gpus() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise FileNotFoundError("nvidia-smi")
    done = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def probe(load_driver: Callable[[], None] = _load_driver, query: Callable[[], str] = _query_gpus) -> Probe:
    """Driver present? GPUs visible? Never raises: the reason says what is missing."""
    try:
        load_driver()
    except OSError:
        return Probe(False, (), "no CUDA driver on this machine (libcuda.so.1 cannot be loaded)")
    try:
        text = query()
    except (OSError, subprocess.SubprocessError) as error:
        return Probe(True, (), f"CUDA driver found but no GPU could be listed ({error})")
    rows = [tuple(part.strip() for part in line.rsplit(",", 1)) for line in text.splitlines() if "," in line]
    gpus = tuple(Gpu(name, cc) for name, cc in rows if re.fullmatch(r"\d+\.\d+", cc))
    if not rows:
        return Probe(True, (), "CUDA driver found but no GPU is visible")
    if not gpus:
        listed = "; ".join(", ".join(row) for row in rows)
        return Probe(True, (), f"CUDA driver found but no GPU reports a compute capability (nvidia-smi: {listed})")
    return Probe(True, gpus, None)
