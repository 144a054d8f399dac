"""Build targets and their GPU tags: 'sm89' -> Target(tag='sm89.rtx-1.7.1', ...)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.backend import Backend
from pipeline.errors import BackendError
from pipeline.gpu import Probe


@dataclass(frozen=True)
class Target:
    name: str  # as written in the recipe: 'sm89' or 'local'
    tag: str  # directory name in the store
    compute_capability: str  # '8.9'
    gpu: str | None  # GPU model for full TensorRT builds (they target the GPU they run on)
    sm: str  # 'sm89'


def compute_capability(sm: str) -> str:
    """'sm89' -> '8.9', 'sm120' -> '12.0'."""
    digits = sm[2:]
    return f"{digits[:-1]}.{digits[-1]}"


def resolve(name: str, backend: Backend, probe: Probe) -> Target:
    """Turn a recipe target into a concrete one, or say why this backend/machine cannot build it."""
    gpu, sm = probe.gpu, name
    if name == "local":
        if gpu is None:
            raise BackendError(f"target 'local' means the GPU of this machine, but {probe.reason}",
                               hint="name the targets instead, e.g. targets: [sm86, sm89]")
        sm = gpu.sm
    cc = compute_capability(sm)
    if backend.is_rtx:
        if backend.member("ComputeCapability", sm.upper()) is None:
            supported = sorted((m.lower() for m in backend.member_names("ComputeCapability") if m.startswith("SM")),
                               key=lambda m: int(m[2:]))
            raise BackendError(f"{backend.label()} cannot build for {sm}; it supports {', '.join(supported)}")
        return Target(name, f"{sm}.rtx-{backend.short_version}", cc, None, sm)
    if gpu is None or gpu.sm != sm:
        here = f"this machine's GPU is {gpu.name} ({gpu.sm})" if gpu else probe.reason
        raise BackendError(f"full TensorRT builds for the GPU it runs on; target {sm} is not buildable here: {here}",
                           hint="build on a machine with that GPU, or use targets: [local]")
    return Target(name, f"{gpu.slug}.{sm}.trt-{backend.short_version}", cc, gpu.name, sm)
