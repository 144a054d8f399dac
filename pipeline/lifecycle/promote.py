"""Promotion: put a build on a channel of a GPU tag, deciding from its manifest whether to reuse, rebuild or refuse.

- reuse: the engine is valid on the target as it is (TensorRT-RTX: the target's compute capability is in the
  engine's target set; full TensorRT: same compute capability and same GPU model or hardware compatibility
  same_compute_capability, or hardware compatibility ampere_plus and an Ampere-or-newer target), always with
  the same backend version;
- rebuild: for the target, from exactly the same inputs (recipe sha256, model sha256, settings, backend; the
  build key of the source is recomputed to prove it), the new manifest linking to the source build;
- refuse: one line naming the mismatch (platform, backend version, compute capability, GPU model, or an input
  that changed since the source was built).
A build reaches `production` only when validation passed on that GPU tag, or with a recorded waiver.
The source holds a lease for the whole promotion (Store.lease), so a gc meanwhile cannot remove it.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from pipeline import clock
from pipeline import recipe as recipes
from pipeline.build import plan as plans
from pipeline.build import runner
from pipeline.build.cache import build_key, reusable
from pipeline.errors import BackendError, PipelineError, PromotionError
from pipeline.lifecycle import channel as channels
from pipeline.manifest import Manifest
from pipeline.stages.parse import digests
from pipeline.store import Artifact, Store
from pipeline.trt import backend as backends
from pipeline.trt import gpu
from pipeline.trt.gpu import Probe
from pipeline.trt.target import Tag, Target, complete_tag, parse_tag, short_version
from pipeline.trt.target import sm as sm_of
from pipeline.validate.artifact import after_build

AMPERE = (8, 0)
Progress = Callable[[str], None]


def _cc(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@dataclass(frozen=True)
class Toolchain:
    """What this machine can build: backend, its short version, the compute capabilities, the local GPU."""

    backend: str
    version: str
    sms: tuple[str, ...]
    gpu: str | None  # slug of the local GPU (full TensorRT builds for it only)
    reason: str | None = None  # why nothing can be built here, when sms is empty

    def problem(self, to: Tag) -> str | None:
        if self.backend != to.backend:
            return f"platform: rebuilding for {to.text} needs {to.backend}; this machine has {self.backend}"
        if self.version != to.version:
            return (f"backend version: rebuilding for {to.text} needs {to.backend} {to.version}; "
                    f"this machine has {self.version}")
        if to.sm not in self.sms:
            can = ", ".join(self.sms) or f"nothing ({self.reason})"
            return (f"compute capability: {self.backend} {self.version} here cannot build for {to.sm}; "
                    f"it builds for {can}")
        if to.gpu and to.gpu != self.gpu:
            return f"GPU model: {to.text} is for {to.gpu}, and full TensorRT builds for this machine's GPU ({self.gpu})"
        return None


def toolchain(backend_name: str, probe: Probe,
              load: Callable[[str], Any] | None = None) -> Toolchain:
    """The installed backend of that name and what it can build on this machine."""
    try:
        backend = (load or backends.load)(backend_name)
    except BackendError as error:
        return Toolchain(backend_name, "not installed", (), None, str(error))
    if backend.is_rtx:
        return Toolchain(backend.name, backend.short_version, backend.build_sms(), None)
    gpu = probe.gpu
    return Toolchain(backend.name, backend.short_version, (gpu.sm,) if gpu else (), gpu.slug if gpu else None,
                     probe.reason)


@dataclass(frozen=True)
class Decision:
    action: str  # 'reuse' | 'rebuild' | 'refuse'
    reason: str


def _reuse_reason(manifest: Manifest, to: Tag) -> str | None:
    backend, target, config = manifest.backend, manifest.target, manifest.config
    label = f"{backend.name} {short_version(backend.version)}"
    cc, want = target.compute_capability, to.compute_capability
    if backend.name == "tensorrt-rtx":
        covered = config.compute_capabilities or (cc,)
        if want in covered:
            return (f"TensorRT-RTX engine built for compute capabilities {', '.join(covered)} covers {want}; "
                    f"same {label}")
        return None
    hardware = config.hardware_compatibility
    if hardware == "ampere_plus" and _cc(want) >= AMPERE:
        return f"built with hardware compatibility ampere+ and {want} is Ampere or newer; same {label}"
    same_gpu = to.gpu == parse_tag(target.tag).gpu
    if want == cc and (hardware == "same_compute_capability" or same_gpu):
        return f"same compute capability {cc} and same {label}"
    return None


def decide(manifest: Manifest, to: Tag, tools: Callable[[], Toolchain]) -> Decision:
    """Reuse, rebuild or refuse, from the source manifest alone (and, for a rebuild, what this machine has)."""
    backend, target = manifest.backend, manifest.target
    built = f"{backend.name} {short_version(backend.version)}"
    if to.backend != backend.name:
        return Decision("refuse", f"platform: the engine was built with {backend.name}; {to.text} needs a "
                                  f"{to.backend} engine, and a rebuild would change the backend, not only the target")
    if to.version != short_version(backend.version):
        return Decision("refuse", f"backend version: the engine was built with {built}; {to.text} needs "
                                  f"{to.backend} {to.version}, and an engine only runs with the TensorRT version "
                                  "that built it (build the recipe with that version instead)")
    reason = _reuse_reason(manifest, to)
    if reason:
        return Decision("reuse", reason)
    problem = tools().problem(to)
    if problem:
        return Decision("refuse", problem)
    why = (f"compute capability {target.compute_capability} -> {to.compute_capability}" if to.gpu is None else
           f"GPU {parse_tag(target.tag).gpu} -> {to.gpu}")
    return Decision("rebuild", f"{why}: the engine is not valid there as it is; rebuilding from the same recipe, "
                               f"model and settings with {built}")


def unvalidated(manifest: Manifest, tag: str) -> str | None:
    """Why this build has not passed validation on `tag`, or None when it has."""
    validation = manifest.validation
    if validation.status != "passed":
        detail = validation.reason
        return f"its validation status is '{validation.status}'" + (f" ({detail})" if detail else "")
    where = validation.tag or manifest.target.tag
    if where != tag:
        return f"it passed validation on {where}, not on {tag}"
    return None


@dataclass(frozen=True)
class Promotion:
    decision: Decision
    source: Artifact
    artifact: Artifact  # what the channel points at now
    tag: str
    channel: str
    built: bool  # a new engine was built for this promotion
    waiver: str | None
    previous: dict | None

    def to_json(self) -> dict:
        return {"decision": self.decision.action, "reason": self.decision.reason,
                "source": {"ref": self.source.ref, "tag": self.source.tag, "path": str(self.source.path)},
                "artifact": {"ref": self.artifact.ref, "tag": self.artifact.tag, "path": str(self.artifact.path)},
                "tag": self.tag, "channel": self.channel, "built": self.built, "waiver": self.waiver,
                "previous": self.previous}


def who(environ: Mapping[str, str]) -> str:
    """user@host, or TRT_PIPELINE_USER when set (CI jobs name themselves)."""
    if environ.get("TRT_PIPELINE_USER"):
        return environ["TRT_PIPELINE_USER"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _gate(manifest: Manifest, decision: Decision, tag: str, channel: str) -> str | None:
    """Why this promotion would put an unvalidated engine into production, or None."""
    if channel != channels.PRODUCTION:
        return None
    if decision.action == "rebuild":
        return "a rebuilt engine has not been validated yet"
    return unvalidated(manifest, tag)


def promote(store: Store, ref: str, from_tag: str, to_tag: str, channel: str, *, by: str,
            log: logging.Logger, allow_unvalidated: bool = False, reason: str | None = None,
            probe: Probe | None = None, progress: Progress = lambda line: None,
            load_backend: Callable[[str], Any] | None = None,
            environ: MutableMapping[str, str] | None = None) -> Promotion:
    """`environ`: where Polygraphy is told which TensorRT to use for a rebuild's validate step (the CLI's)."""
    channels.check_name(channel)
    if allow_unvalidated and not (reason or "").strip():
        raise PromotionError("--allow-unvalidated needs --reason \"...\": the waiver is recorded in the history")
    store.reclaim()
    resolved = store.resolve(ref, from_tag)
    with store.lease(resolved):
        return _promote(store, store.verified(resolved), to_tag, channel, by, log, allow_unvalidated, reason, probe,
                        progress, load_backend, os.environ if environ is None else environ)


def _promote(store: Store, source: Artifact, to_tag: str, channel: str, by: str, log: logging.Logger,
             allow_unvalidated: bool, reason: str | None, probe: Probe | None, progress: Progress,
             load_backend: Callable[[str], Any] | None, environ: MutableMapping[str, str]) -> Promotion:
    manifest = source.manifest()
    to = parse_tag(complete_tag(to_tag, source.tag))  # 'sm75', as --from takes it
    probe_ = _lazy(probe)  # the GPU is asked about only when a rebuild is considered
    decision = decide(manifest, to, lambda: toolchain(manifest.backend.name, probe_(), load_backend))
    line = f"cannot promote {source.ref} {source.tag} to {to.text}"
    if decision.action == "refuse":
        raise PromotionError(f"{line}: {decision.reason}")
    existing = _built_already(store, manifest, to, probe_(), load_backend, log) \
        if decision.action == "rebuild" else None
    if existing is not None:
        decision = _reused(existing, to)
    gate = _gate(existing.manifest() if existing else manifest, decision, to.text, channel)
    if gate and not allow_unvalidated:
        raise PromotionError(f"{line} {channel}: {gate}; production needs validation passed on {to.text}",
                             hint=_gate_hint(source, to, decision, channel))
    artifact, built = existing or source, False
    if decision.action == "rebuild":
        artifact, built = _rebuild(store, source, manifest, to, probe_(), log, progress, load_backend, environ)
        if not built:  # another run built it meanwhile
            decision = _reused(artifact, to)
    now = clock.utc()
    waiver = reason if gate else None
    event = {"at": now, "by": by, "decision": decision.action, "reason": decision.reason,
             "from": {"ref": source.ref, "tag": source.tag}, "built": built, "why": reason,
             "waiver": {"reason": reason, "unvalidated": gate} if gate else None}
    entry = channels.pointer(artifact, since=now, by=by, decision=decision.action, waiver=waiver)
    previous = channels.set_(store, source.name, to.text, channel, entry, event)
    return Promotion(decision, source, artifact, to.text, channel, built, waiver, previous)


def _reused(artifact: Artifact, to: Tag) -> Decision:
    return Decision("reuse", f"{to.text} already has {artifact.ref} [{artifact.tag}], built from the same inputs "
                             f"(same build key); not rebuilt")


def _built_already(store: Store, manifest: Manifest, to: Tag, probe: Probe,
                   load_backend: Callable[[str], Any] | None, log: logging.Logger) -> Artifact | None:
    """The build for `to` made from exactly the source's inputs (its build key for `to`), when the store has one.
    None whenever that cannot be shown (a changed recipe, another backend...): the rebuild then says why."""
    try:
        recipe = recipes.load(manifest.recipe.path)
        backend = (load_backend or backends.load)(manifest.backend.name)
        if recipe.sha256 != manifest.recipe.sha256 or backend.version != manifest.backend.version:
            return None
        (target,) = plans.make_plan(recipe, backend, probe, (to.sm,)).targets
    except (PipelineError, ValueError):
        return None
    if target.tag != to.text:
        return None
    return reusable(store, recipe, "key", build_key(recipe, manifest.model.cleaned_sha256, backend, target), log)


def _gate_hint(source: Artifact, to: Tag, decision: Decision, channel: str) -> str:
    if decision.action == "rebuild":
        return (f"promote to candidate first (trt-pipeline promote {source.ref} --from {source.tag} --to {to.text}), "
                f"validate it on a GPU of compute capability {to.compute_capability}, then promote it to {channel}; "
                "or waive with --allow-unvalidated --reason \"...\"")
    return (f"validate it on a GPU of compute capability {to.compute_capability} first, or waive with "
            "--allow-unvalidated --reason \"...\"")


def _lazy(probe: Probe | None) -> Callable[[], Probe]:
    found: list[Probe] = [probe] if probe else []

    def get() -> Probe:
        if not found:
            found.append(gpu.probe())
        return found[0]

    return get


def _source_target(manifest: Manifest) -> Target:
    target = manifest.target
    return Target(target.name, target.tag, target.compute_capability, target.gpu, sm_of(target.compute_capability))


def _rebuild(store: Store, source: Artifact, manifest: Manifest, to: Tag, probe: Probe, log: logging.Logger,
             progress: Progress, load_backend: Callable[[str], Any] | None,
             environ: MutableMapping[str, str]) -> tuple[Artifact, bool]:
    """Build for `to` from exactly the inputs of `source`; refuse when any of them changed."""
    line = f"cannot rebuild {source.ref} {source.tag} for {to.text}"
    path = manifest.recipe.path
    if not path.is_file():
        raise PromotionError(f"{line}: recipe: {path} (where it was built from) no longer exists")
    recipe = recipes.load(path)
    if recipe.sha256 != manifest.recipe.sha256:
        raise PromotionError(f"{line}: recipe: {path} changed since it was built (sha256 {recipe.sha256[:12]}, was "
                             f"{manifest.recipe.sha256[:12]}); a rebuild needs exactly the same inputs",
                             hint=f"build the new recipe instead: trt-pipeline build {path} --target {to.sm}")
    model = digests(recipe.model_path)
    if model["sha256"] != manifest.model.sha256:
        raise PromotionError(f"{line}: model: {recipe.model_path} changed since it was built (sha256 "
                             f"{model['sha256'][:12]}, was {manifest.model.sha256[:12]})")
    backend = (load_backend or backends.load)(manifest.backend.name)
    if backend.version != manifest.backend.version:
        raise PromotionError(f"{line}: backend version: it was built with {manifest.backend.name} "
                             f"{manifest.backend.version}; this machine has {backend.version}")
    key = build_key(recipe, manifest.model.cleaned_sha256, backend, _source_target(manifest))
    if key != manifest.build.key:
        raise PromotionError(f"{line}: settings: the recipe's settings or timing cache give another build key than "
                             "the source's")
    link = {"ref": source.ref, "tag": source.tag, "build_key": manifest.build.key,
            "engine_sha256": manifest.engine.sha256, "recipe_sha256": manifest.recipe.sha256,
            "cleaned_sha256": manifest.model.cleaned_sha256}
    plan = plans.make_plan(recipe, backend, probe, (to.sm,))
    outcome = runner.build(plan, store, log, progress, annotate={"promoted_from": link})[0]
    built = outcome.artifact.manifest()
    if outcome.artifact.tag != to.text:
        raise PromotionError(f"{line}: this machine built {outcome.artifact.tag}, not {to.text}; channel unchanged")
    if built.model.cleaned_sha256 != manifest.model.cleaned_sha256:
        raise PromotionError(f"{line}: cleaned model: the rebuild's is {built.model.cleaned_sha256[:12]}, the "
                             f"source's {manifest.model.cleaned_sha256[:12]} (graph tools changed?); "
                             f"channel unchanged, new build left at {outcome.artifact.path}")
    if not outcome.reused:  # the build's validate step, as `trt-pipeline build` runs it (skipped without a GPU)

        after_build(recipe, [outcome.artifact], store, probe, environ, log, progress)
    return outcome.artifact, not outcome.reused
