"""Build targets and their GPU tags: 'sm89' -> Target(tag='sm89.rtx-1.7.1', ...).

The one place that spells and reads versions, compute capabilities and tags:
'1.7.1.116' -> '1.7.1' (short_version), 'sm89' <-> '8.9' (compute_capability, sm),
tag(...) builds 'sm89.rtx-1.7.1' / 'nvidia-a100-sxm4-80gb.sm80.trt-10.9.0' and parse_tag reads it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import BackendError, TagError

if TYPE_CHECKING:  # for annotations only: backend and gpu spell their versions and tags with this module
    from pipeline.trt.backend import Backend
    from pipeline.trt.gpu import Probe

PLATFORMS = {"rtx": "tensorrt-rtx", "trt": "tensorrt"}  # tag spelling -> backend name
_TAG = re.compile(r"^(?:(?P<gpu>[a-z0-9][a-z0-9-]*)\.)?(?P<sm>sm\d{2,3})\."
                  r"(?P<platform>rtx|trt)-(?P<version>\d+\.\d+\.\d+)$")


def short_version(version: str) -> str:
    """'1.7.1.116' -> '1.7.1' (the part that decides engine compatibility, as tags spell it)."""
    return ".".join(version.split(".")[:3])


def compute_capability(sm: str) -> str:
    """'sm89' -> '8.9', 'sm120' -> '12.0'."""
    digits = sm[2:]
    return f"{digits[:-1]}.{digits[-1]}"


def sm(compute_capability: str) -> str:
    """'8.9' -> 'sm89', '12.0' -> 'sm120'."""
    major, minor = compute_capability.split(".")
    return f"sm{major}{minor}"


def tag(sm_: str, backend: str, version: str, gpu: str | None = None) -> str:
    """The GPU tag (a store directory name): 'sm89.rtx-1.7.1', or '<gpu slug>.sm80.trt-10.9.0' for full TensorRT."""
    platform = {name: short for short, name in PLATFORMS.items()}[backend]
    return (f"{gpu}." if gpu else "") + f"{sm_}.{platform}-{short_version(version)}"


@dataclass(frozen=True)
class Tag:
    text: str  # 'sm89.rtx-1.7.1', 'nvidia-a100-sxm4-80gb.sm80.trt-10.9.0'
    sm: str
    backend: str  # 'tensorrt-rtx' | 'tensorrt'
    version: str  # the short version in the tag: '1.7.1'
    gpu: str | None  # GPU model slug (full TensorRT only)

    @property
    def compute_capability(self) -> str:
        return compute_capability(self.sm)


def parse_tag(text: str) -> Tag:
    match = _TAG.match(text)
    if not match:
        raise TagError(f"'{text}' is not a GPU tag; expected e.g. sm89.rtx-1.7.1 or "
                             "nvidia-a100-sxm4-80gb.sm80.trt-10.9.0", hint="see the TAG column of `trt-pipeline list`")
    return Tag(text, match["sm"], PLATFORMS[match["platform"]], match["version"], match["gpu"])


def complete_tag(text: str, like: str) -> str:
    """A GPU tag in any form --from takes: whole, or its leading 'sm75' / 'sm75.rtx' completed with the platform
    and version of `like` (the tag of the build being promoted). A full-TensorRT tag also names its GPU model, which
    another compute capability cannot share: that one is written out."""
    if _TAG.match(text):
        return text
    short, known = re.fullmatch(r"(sm\d{2,3})(?:\.(rtx|trt))?", text), parse_tag(like)
    if short and known.gpu is None and (short[2] is None or PLATFORMS[short[2]] == known.backend):
        return tag(short[1], known.backend, known.version)
    why = "a full-TensorRT tag names its GPU model" if short and known.gpu else f"the build's tag is {like}"
    raise TagError(f"'{text}' is not a GPU tag, nor a short form of one that completes from {like} ({why}); expected "
                   "e.g. sm89.rtx-1.7.1, sm89 or nvidia-a100-sxm4-80gb.sm80.trt-10.9.0",
                   hint="see the TAG column of `trt-pipeline list`")


@dataclass(frozen=True)
class Target:
    name: str  # as written in the recipe: 'sm89' or 'local'
    tag: str  # directory name in the store
    compute_capability: str  # '8.9'
    gpu: str | None  # GPU model for full TensorRT builds (they target the GPU they run on)
    sm: str  # 'sm89'


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
            raise BackendError(f"{backend.label()} cannot build for {sm}; it supports {', '.join(backend.build_sms())}")
        return Target(name, tag(sm, backend.name, backend.version), cc, None, sm)
    if gpu is None or gpu.sm != sm:
        here = f"this machine's GPU is {gpu.name} ({gpu.sm})" if gpu else probe.reason
        raise BackendError(f"full TensorRT builds for the GPU it runs on; target {sm} is not buildable here: {here}",
                           hint="build on a machine with that GPU, or use targets: [local]")
    return Target(name, tag(sm, backend.name, backend.version, gpu.slug), cc, gpu.name, sm)
