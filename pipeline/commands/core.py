"""The core commands: check, build, list, show."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from pipeline.build import capability, runner
from pipeline.build import plan as plans
from pipeline.commands import module
from pipeline.commands.options import cluster_options
from pipeline.commands.output import Command, emit_json, paint, print_table, progress
from pipeline.errors import CannotRunHere, PipelineError, RecipeError
from pipeline.lifecycle import channel
from pipeline.lifecycle import diff as differences
from pipeline.manifest import Manifest
from pipeline.store import Artifact, Store
from pipeline.trt import gpu
from pipeline.units import size
from pipeline.validate.artifact import after_build


def _plan(path: Path, probe: gpu.Probe, target_names: tuple[str, ...] = (), check_model: bool = True,
          building: bool = False, parser_support: bool = False) -> plans.Plan:
    """Every problem at once as a RecipeError. When `building`, targets that only this machine's lack of a GPU
    stops (and nothing else) are CannotRunHere instead (exit 2); `check` reports them as problems."""
    recipe, backend = plans.load_recipe(path, probe, target_names, check_model)
    try:
        return plans.make_plan(recipe, backend, probe, target_names, check_model, parser_support)
    except RecipeError as error:
        no_gpu = capability.not_buildable_here(recipe, backend, probe, target_names) if building else []
        if no_gpu and set(error.problems) <= set(no_gpu):
            raise CannotRunHere("; ".join(no_gpu)) from None
        raise


def check(args: argparse.Namespace, log: logging.Logger) -> int:
    results, probe = [], gpu.probe()  # nvidia-smi can take seconds: ask once
    for path in args.recipes:
        try:
            plan = _plan(path, probe, parser_support=True)
            results.append({"recipe": str(path), "ok": True, "problems": [],
                            "targets": [t.tag for t in plan.targets], "backend": plan.backend.label()})
        except RecipeError as error:
            results.append({"recipe": str(path), "ok": False, "problems": error.problems})
    if args.json:
        emit_json(results)
    else:
        for result in results:
            if result["ok"]:
                print(f"{paint('ok', 'green', sys.stdout, args.environ)}   {result['recipe']} ({result['backend']}; "
                      f"{', '.join(result['targets'])})")
            for problem in result["problems"]:
                print(problem, file=sys.stderr)
    return 0 if all(r["ok"] for r in results) else 1


def build(args: argparse.Namespace, log: logging.Logger) -> int:
    if args.cluster and not args.dry_run:
        return module("farm").cluster_build(args, log)  # the farm's modules (and Ray) only for --cluster
    # The model checks run in runner.build, and only when something is to be built (a dry run needs them now).
    probe = gpu.probe()  # once: planning and the validate step see the same machine
    store, names = Store(args.store), tuple(args.target)
    plan = None if args.dry_run else plans.remembered_plan(args.recipe, store, probe, names)
    if plan is None:
        plan = _plan(args.recipe, probe, names, check_model=args.dry_run, building=True)
        if not args.dry_run:
            plans.remember_plan(plan, store, probe, names)
    if args.dry_run:
        if args.json:
            emit_json(plans.dry_run(plan, store, log, force=args.force))
        else:
            print(*plans.dry_run_lines(plan, store, log, force=args.force), sep="\n")
        return 0
    started = time.perf_counter()
    store.reclaim()  # staging and temp files of killed runs
    outcomes = runner.build(plan, store, log, progress(args), force=args.force)

    valid = after_build(plan.recipe, [o.artifact for o in outcomes if not o.reused], store, probe,
                        args.environ, log, progress(args))
    # Why each was built: one line each, and in the --json rows "reason" and "changes" as a night records them
    why = {id(o): differences.why_built(store, o.artifact) for o in outcomes if not o.reused}
    if not args.quiet:
        for outcome in outcomes:
            if not outcome.reused:
                print(f"built {outcome.artifact.ref} [{outcome.artifact.tag}]: {why[id(outcome)][0]}", file=sys.stderr)
        built = sum(not o.reused for o in outcomes)
        print(f"built {built} engine(s), reused {len(outcomes) - built}, for {plan.recipe.name} "
              f"{plan.recipe.version} with {plan.backend.label()} in {time.perf_counter() - started:.1f}s",
              file=sys.stderr)
    if args.json:
        emit_json([{**_row(o.artifact), "reused": o.reused, **({} if o.reused else {
            "reason": why[id(o)][0], "changes": [change.to_json() for change in why[id(o)][1]]})} for o in outcomes])
    else:
        for outcome in outcomes:
            print(outcome.artifact.path)
    return 0 if valid else 1


def _row(artifact: Artifact, store: Store | None = None) -> dict:
    """One `list` row; a damaged manifest, or (with `store`) an engine that does not match it, gives validation
    'damaged' and the problem, not a failed listing."""
    row = {"ref": artifact.ref, "name": artifact.name, "version": artifact.version, "build": artifact.build,
           "tag": artifact.tag, "path": str(artifact.path)}
    try:
        manifest = artifact.manifest()
        if store is not None:
            store.verified(artifact)
    except PipelineError as error:
        return {**row, "engine_bytes": None, "created_at": None, "validation": "damaged", "problem": str(error)}
    return {**row, "engine_bytes": manifest.engine.bytes, "created_at": manifest.build.created_at,
            "validation": manifest.validation.status}


def list_(args: argparse.Namespace, log: logging.Logger) -> int:
    store = Store(args.store)
    store.recipes()  # a regular file given as the store is an error; a missing store holds nothing
    rows = [_row(a, store) for a in store.artifacts(args.name)]
    channel.annotate(store, rows)
    for row in rows:
        if row["validation"] == "damaged":
            print(f"warning: {row['ref']} [{row['tag']}]: {row['problem']}", file=sys.stderr)
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        print(f"no artifacts in {args.store}", file=sys.stderr)
        return 0
    print_table(("ARTIFACT", "TAG", "ENGINE", "VALIDATION", "CREATED", "CHANNELS"),
                [(r["ref"], r["tag"], "?" if r["engine_bytes"] is None else size(r["engine_bytes"]), r["validation"],
                  r["created_at"] or "?", ", ".join(r["channels"])) for r in rows])
    return 0


def show(args: argparse.Namespace, log: logging.Logger) -> int:
    """Every GPU tag of the build (one with --tag): readable blocks, or with --json one object per tag (an object
    when there is one, else a list); a damaged engine is shown, then is the error."""
    store = Store(args.store)
    found = [(artifact, artifact.manifest(), store.engine_problem(artifact))
             for artifact in store.resolve_build(args.artifact, args.tag)]
    if args.json:
        documents = [{"path": str(artifact.path), **manifest.to_dict(), **({"damaged": problem} if problem else {})}
                     for artifact, manifest, problem in found]
        emit_json(documents[0] if len(documents) == 1 else documents)
    else:
        for index, (artifact, manifest, problem) in enumerate(found):
            if index:
                print()
            for key, value in _show_lines(artifact, manifest) + ([("damaged", problem)] if problem else []):
                print(f"{key:<11} {value}")
    damaged = [(artifact, problem) for artifact, _, problem in found if problem]
    if damaged:
        raise damaged[0][0].damaged(damaged[0][1])
    return 0


def _show_lines(artifact: Artifact, m: Manifest) -> list[tuple[str, str]]:
    return [
        ("artifact", f"{artifact.ref} [{artifact.tag}]"),
        ("path", str(artifact.path)),
        ("recipe", f"{m.recipe.path} (sha256 {m.recipe.sha256})"),
        ("model", f"{m.model.path} (sha256 {m.model.sha256})"),
        ("cleaned", f"{m.model.cleaned_file or '(no graph-cleanup)'} (sha256 {m.model.cleaned_sha256})"),
        ("inputs", ", ".join(f"{n} {v['dtype']}{v['shape']}" for n, v in m.model.inputs.items())),
        ("outputs", ", ".join(f"{n} {v['dtype']}{v['shape']}" for n, v in m.model.outputs.items())),
        ("backend", f"{m.backend.name} {m.backend.version}"),
        ("target", f"{m.target.tag} (compute capability {m.target.compute_capability})"),
        ("network", ", ".join(m.network.flags) or "(no creation flags)"),
        ("pools", ", ".join(f"{k}={size(v)}" for k, v in m.config.memory_pools.items()) or "(defaults)"),
        ("opt level", str(m.config.builder_optimization_level)),
        *[("profile" if index == 0 else "", _profile_text(index, profile))
          for index, profile in enumerate(m.config.profiles)],
        ("cleanup", _cleanup_text(m)),
        ("engine", f"{m.engine.file} {size(m.engine.bytes)} (sha256 {m.engine.sha256})"),
        ("built", f"{m.build.created_at} on {m.build.host} in {m.build.duration_s}s (build key {m.build.key[:16]})"),
        ("validation", f"{m.validation.status}: {m.validation.reason or ''}".rstrip(": ")),
    ]


def diff(args: argparse.Namespace, log: logging.Logger) -> int:
    store = Store(args.store)
    a, b = store.resolve(args.a, args.tag), store.resolve(args.b, args.tag_b or args.tag)
    found = differences.changes(a.manifest(), b.manifest(), everything=args.all)
    if args.json:
        emit_json({"a": f"{a.ref} [{a.tag}]", "b": f"{b.ref} [{b.tag}]",
                   "changes": [{"path": c.path, "old": c.old, "new": c.new} for c in found]})
    else:
        print(f"{a.ref} [{a.tag}] -> {b.ref} [{b.tag}]: " + (f"{len(found)} change(s)" if found else "no change"))
        for change in found:
            print(f"  {change.line()}")
    return 1 if found else 0


def _profile_text(index: int, profile: Mapping[str, Mapping[str, list]]) -> str:
    return f"{index}: " + "; ".join(f"{name} min {p['min']} opt {p['opt']} max {p['max']}"
                                    for name, p in profile.items())


def _cleanup_text(m: Manifest) -> str:
    """The cleanup check's verdict, as recorded (the raw record: statuses and shape sets)."""
    check = m.to_dict().get("cleanup_check")
    if not check:
        return "(no graph-cleanup)"
    if check.get("status") == "skipped":
        return f"check skipped: {check.get('reason')}"
    frozen = ", ".join(f"{k}={v}" for k, v in (check.get("frozen_inputs") or {}).items())
    return (f"check {check.get('status')} on {len(check.get('results') or [])} shape set(s)"
            + (f", frozen inputs {frozen}" if frozen else ""))


def register(command: Command) -> None:
    p = command("check", check,
                "Check recipes against the schema, the stage order, the model's inputs and outputs, and what the "
                "chosen TensorRT backend supports. Every problem is reported at once as FILE:LINE:COL: key: message.")
    p.epilog = """\
examples:
  trt-pipeline check recipes/*.yaml
  trt-pipeline --json check recipes/resnet50.yaml

stdout: 'ok   RECIPE (BACKEND; GPU TAGS)' per sound recipe; every problem goes to stderr, one line each
(--json: one object per recipe on stdout: recipe, ok, problems, targets, backend).
exit codes: 0 every recipe is ok, 1 any problem (a target that needs a GPU here is a problem too)."""
    p.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE")

    p = command("build", build,
                "Run the recipe's stages (parse, graph-cleanup, network-flag, memory-pool, serialize) for each target "
                "and publish one artifact directory per target. Progress goes to stderr; the artifact directories "
                "are printed on stdout, one per line, last.")
    p.epilog = """\
examples:
  trt-pipeline build recipes/resnet50.yaml
  trt-pipeline build recipes/resnet50.yaml --target sm89 --dry-run
  trt-pipeline --json build recipes/resnet50.yaml --dry-run     the plan as JSON: stages, settings, targets
  trt-pipeline build recipes/resnet50.yaml --cluster 10.0.0.1:6379   on a build farm (see `worker`)

stdout: the artifact directories, one per line (--json: one object per artifact; with --dry-run the plan,
each target with the directory it would write or the artifact it would reuse). Progress goes to stderr.
exit codes: 0 ok, 1 recipe error, failed build or failed validation, 2 cannot build here (target 'local'
or full TensorRT on a machine without a GPU).
--cluster: the nightly's build farm for this one recipe; the store stays on this machine; exit 1 also when
a target or its validation is unschedulable (no node offers what it needs)."""
    p.add_argument("recipe", type=Path, metavar="RECIPE")
    p.add_argument("--target", action="append", default=[], metavar="T",
                   help="build only this target (e.g. sm89 or local); repeatable; default: the recipe's targets")
    p.add_argument("--dry-run", action="store_true", help="print the plan and where artifacts would go; build nothing")
    p.add_argument("--force", action="store_true",
                   help="rebuild even when an artifact with the same build key exists (default: reuse it)")
    cluster_options(p, "build and validate")

    p = command("list", list_,
                "List published artifacts: name, version+build, GPU tag, engine size, validation status.")
    p.epilog = """\
examples:
  trt-pipeline list
  trt-pipeline --json list resnet50

stdout: a table, one artifact per line: ARTIFACT, TAG, ENGINE, VALIDATION, CREATED, CHANNELS (--json: one object
per artifact). An empty store says so on stderr. An artifact whose manifest or engine (size, sha256) is damaged
shows validation 'damaged', with a warning on stderr.
exit codes: 0 ok, 1 unreadable store."""
    p.add_argument("name", nargs="?", help="only this recipe name")

    p = command("diff", diff,
                "Compare two artifacts' manifests field by field: recipe settings, model and cleaned-model hashes, "
                "backend and tool versions, target, builder settings, engine. Times, hosts, durations and build "
                "numbers are left out unless --all.")
    p.epilog = """\
examples:
  trt-pipeline diff resnet50@1.0.0+1 resnet50@1.0.0+2 --tag sm89
  trt-pipeline diff resnet50@1.0.0 --tag sm89.rtx-1.7.1 resnet50@1.0.0 --tag-b sm120.rtx-1.7.1

stdout: 'A -> B: N change(s)', then 'path: old -> new' per field (--json: {a, b, changes: [{path, old, new}]}).
exit codes: 0 no change, 1 they differ (as diff(1)) or no such artifact."""
    p.add_argument("a", metavar="A", help="NAME@VERSION, NAME@VERSION+BUILD or a directory")
    p.add_argument("b", metavar="B", help="the other artifact")
    p.add_argument("--tag", help="GPU tag (of both, unless --tag-b)")
    p.add_argument("--tag-b", help="GPU tag of B")
    p.add_argument("--all", action="store_true", help="also times, hosts, durations and build numbers")

    p = command("show", show,
                "Show what produced an artifact: recipe, model hashes, backend, target, builder settings, validation.")
    p.epilog = """\
examples:
  trt-pipeline show resnet50@1.0.0 --tag sm89.rtx-1.7.1
  trt-pipeline --json show artifacts/resnet50/1.0.0+2/sm89.rtx-1.7.1

stdout: one 'key  value' line per manifest field, a block per GPU tag of the build (--json: the whole manifest
with its path; a list of them when the build has several tags and no --tag narrows it), and a 'damaged' line
(--json: key) when the engine does not match the manifest's size or sha256.
exit codes: 0 ok, 1 no such artifact or a damaged engine."""
    p.add_argument("artifact", metavar="ARTIFACT", help="NAME@VERSION, NAME@VERSION+BUILD or a directory")
    p.add_argument("--tag", help="only this GPU tag (default: every tag of the build)")
