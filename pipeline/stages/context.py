"""The state one build carries from stage to stage. Stages read what earlier stages left here."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.background import Background
from pipeline.progress import Lines, Progress
from pipeline.trt.backend import Backend
from pipeline.trt.target import Target

if TYPE_CHECKING:  # the recipe module sits above the stages (it freezes their specs through the registry)
    from pipeline.recipe import Recipe

# graph-cleanup's check of the cleaned graph against the original, given by the runner: (recipe, cleaned model
# path, parse's model record, the cleaned graph's inputs, log, stop event, whether the cleaned graph is the original
# one up to the order of its nodes) -> a job to run beside the build.
Checker = Callable[["Recipe", Path, Mapping[str, Any], Mapping[str, dict], logging.Logger, threading.Event, bool],
                   Callable[[], dict]]
# precision's check of the reduced-precision graph against the FP32 original, given by the runner: (recipe, model
# paths {source, original, converted}, parse's model record, the source graph's inputs, the check's input
# arrays, log, stop event) -> a job to run beside the build.
PrecisionChecker = Callable[["Recipe", Mapping[str, Path], Mapping[str, Any], Mapping[str, dict], Mapping[str, Any],
                             logging.Logger, threading.Event], Callable[[], dict]]


@dataclass
class Context:
    recipe: Recipe
    backend: Backend
    scratch: Path  # private working directory for this build, inside the store
    log: logging.Logger
    trt_logger: Any
    checker: Checker | None = None
    progress: Progress = field(default_factory=Lines)  # a stage reports what it is doing now with progress.detail
    precision_checker: PrecisionChecker | None = None
    # parse
    model: Any = None  # onnx.ModelProto, weights loaded only when graph-cleanup needs them (None after it: on disk)
    model_record: dict = field(default_factory=dict)
    model_bytes: bytes | None = None  # parse: the model file as read (its sha256 checked), kept for graph-cleanup
    weight_copies: dict[str, Path] = field(default_factory=dict)  # external data copied as hashed: path -> copy
    # graph-cleanup (or the original model when there is no cleanup)
    onnx_path: Path | None = None
    cleaned_path: Path | None = None
    cleaned_sha256: str | None = None
    # The cleaned model's bytes while its file is written beside the build (graph-cleanup): the first target's
    # parser takes them (as (path, bytes): only for that file); later targets wait for the file.
    onnx_bytes: tuple[Path, bytes] | None = None
    cleanup_record: dict = field(default_factory=dict)
    # precision (the converted graph is then onnx_path)
    precision_path: Path | None = None
    precision_record: dict = field(default_factory=dict)
    # per target: network-flag, memory-pool, serialize
    target: Target | None = None
    staged: Path | None = None  # the artifact directory being written for this target
    builder: Any = None
    network: Any = None
    parser: Any = None  # the network borrows the parser's weights: it lives as long as the network
    parser_weights: list[Any] = field(default_factory=list)  # memory maps the parser's weights point into
    network_record: dict = field(default_factory=dict)
    config: Any = None
    config_record: dict = field(default_factory=dict)
    timing_cache: Any = None  # the ITimingCache set on the config: kept alive for as long as the build runs
    monitor: Any = None  # the IProgressMonitor set on the config: kept alive as well
    engine_path: Path | None = None
    engine_record: dict = field(default_factory=dict)  # serialize: {file, sha256, bytes}, hashed as written
    environ: MutableMapping[str, str] = field(default_factory=lambda: os.environ)  # Polygraphy reads it at import
    background: Background = field(default_factory=Background)  # checks running beside the build; shared by targets

    def for_target(self, target: Target, staged: Path) -> Context:
        """A copy for one target: shared results carried over, per-target state fresh."""
        return replace(self, target=target, staged=staged, builder=None, network=None, parser=None, parser_weights=[],
                       network_record={}, config=None, config_record={}, timing_cache=None, monitor=None,
                       engine_path=None, engine_record={})
