"""Lifecycle commands: promote, channel, history, export triton, gc, fsck."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.commands.output import Command, emit_json, print_table, progress
from pipeline.lifecycle import channel as channels
from pipeline.lifecycle import fsck as checker
from pipeline.lifecycle import gc as collector
from pipeline.lifecycle import promote as promotion
from pipeline.lifecycle import triton
from pipeline.store import Store

KEEP = 3  # gc's default: newest builds kept per recipe and GPU tag


def promote(args: argparse.Namespace, log: logging.Logger) -> int:
    done = promotion.promote(Store(args.store), args.artifact, args.from_tag, args.to_tag or args.from_tag,
                             args.channel, by=promotion.who(args.environ), log=log,
                             allow_unvalidated=args.allow_unvalidated, reason=args.reason, progress=progress(args),
                             environ=args.environ)
    if args.json:
        emit_json(done.to_json())
        return 0
    print(f"{done.decision.action}: {done.decision.reason}")
    note = " (new build)" if done.built else ""
    print(f"{done.channel} of {done.tag} -> {done.artifact.ref} [{done.artifact.tag}]{note} {done.artifact.path}")
    if done.waiver:
        print(f"waiver recorded: {done.waiver}")
    return 0


def channel(args: argparse.Namespace, log: logging.Logger) -> int:
    store = Store(args.store)
    rows: list[dict[str, Any]] = [{"tag": tag, "channel": name, "artifact": entry}
                                  for tag, name, entry in channels.everything(store, store.require(args.name))]
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        print(f"no channels for '{args.name}' in {args.store}", file=sys.stderr)
        return 0
    print_table(("TAG", "CHANNEL", "ARTIFACT", "ENGINE TAG", "SINCE", "BY", "DECISION"),
           [(r["tag"], r["channel"], r["artifact"]["ref"], r["artifact"]["tag"], r["artifact"].get("since", ""),
             r["artifact"].get("by", ""),
             r["artifact"].get("decision", "") + (" (waiver)" if r["artifact"].get("waiver") else ""))
            for r in rows])
    return 0


def history(args: argparse.Namespace, log: logging.Logger) -> int:
    store = Store(args.store)
    events = channels.history(store, store.require(args.name))
    if args.json:
        emit_json(events)
        return 0
    for e in events:
        art, source = e["artifact"], e.get("from") or {}
        how = f" ({e.get('decision', '?')} from {source.get('ref', '?')} [{source.get('tag', '?')}])"
        why = f" why: {e['why']}" if e.get("why") else ""
        waiver = " [WAIVER: unvalidated]" if e.get("waiver") else ""
        print(f"{e.get('at', '?')} {e.get('by', '?')} {e['channel']}@{e['tag']} <- {art['ref']} [{art['tag']}]"
              f"{how}{waiver}{why}")
    return 0


def export(args: argparse.Namespace, log: logging.Logger) -> int:
    settings = triton.Settings(args.max_batch_size, args.dynamic_batching, args.max_queue_delay_us, args.instances)
    done = triton.export(Store(args.store), args.name, args.channel, args.repo, settings, args.model_name)
    if args.json:
        emit_json(done.to_json())
        return 0
    state = "written" if done.changed else (
        "config.pbtxt updated; version unchanged (it already holds these engines): reload the model in Triton"
        if done.config_changed else "unchanged (the newest version already holds these engines)")
    print(f"{done.model_dir}/{done.version}: {state}")
    for tag, file in sorted(done.files.items()):
        print(f"  {tag:<22} {file}")
    return 0


def gc(args: argparse.Namespace, log: logging.Logger) -> int:
    store = Store(args.store)
    if args.name is not None:
        store.require(args.name)
    sweep = collector.collect(store, args.keep, args.name, dry_run=args.dry_run)
    if args.json:
        emit_json({"dry_run": args.dry_run, "removed" if not args.dry_run else "would_remove":
                   [{"ref": a.ref, "tag": a.tag, "path": str(a.path)} for a in sweep.remove],
                   "protected": [{"ref": a.ref, "tag": a.tag, "why": why} for a, why in sweep.protected],
                   "kept": sweep.kept})
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for artifact in sweep.remove:
        print(f"{verb} {artifact.ref} [{artifact.tag}] {artifact.path}")
    for artifact, why in sweep.protected:
        print(f"kept   {artifact.ref} [{artifact.tag}]: {why}")
    print(f"{verb} {len(sweep.remove)} build(s); kept {sweep.kept} newest and {len(sweep.protected)} promoted",
          file=sys.stderr)
    return 0


def fsck(args: argparse.Namespace, log: logging.Logger) -> int:
    store = Store(args.store)
    problems = checker.check(store)
    removed = checker.repair(store, problems) if args.repair else []
    left = [p for p in problems if p not in removed]
    if args.json:
        emit_json({"store": str(store.root), "clean": not left, "problems": [p.to_json() for p in left],
                   "removed": [p.to_json() for p in removed]})
        return 1 if left else 0
    for problem in removed:
        print(f"removed {problem}")
    for problem in left:
        print(problem)
    summary = (f"{len(left)} problem(s)" + (f", {len(removed)} removed" if removed else "") if left else
               "clean" + (f" ({len(removed)} removed)" if removed else ""))
    garbage = sum(p.garbage for p in left)
    hint = f"; `trt-pipeline fsck --repair` removes {garbage} of them" if garbage and not args.repair else ""
    print(f"store {store.root}: {summary}{hint}", file=sys.stderr)
    return 1 if left else 0


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= least."""
    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = least - 1
        if number < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
        return number
    return parse


def register(command: Command) -> None:
    p = command("promote", promote,
                "Decide from the build's manifest whether its engine is valid on the target GPU tag as it is (reuse), "
                "must be rebuilt from exactly the same inputs (rebuild), or cannot be (refuse, naming the mismatch), "
                "then point the channel at it and record who/when/why in the history. The production channel takes "
                "only builds whose validation passed on that GPU tag, unless --allow-unvalidated --reason is given.")
    p.add_argument("artifact", metavar="NAME@VERSION",
                   help="the build to promote (NAME@VERSION+BUILD for an older one)")
    p.add_argument("--from", dest="from_tag", required=True, metavar="TAG",
                   help="GPU tag of the build, e.g. sm89.rtx-1.7.1, or its short form sm89")
    p.add_argument("--to", dest="to_tag", metavar="TAG",
                   help="GPU tag to promote to, e.g. sm120.rtx-1.7.1, or sm120 (the build's platform and version); "
                        "default: the --from tag")
    p.add_argument("--channel", default=channels.CANDIDATE, help="candidate (default), production, or another name")
    p.add_argument("--allow-unvalidated", action="store_true",
                   help="let an unvalidated build into production; needs --reason, recorded as a waiver")
    p.add_argument("--reason", help="why: recorded in the history (required with --allow-unvalidated)")

    p = command("channel", channel,
                "Show which build each channel of each GPU tag points at.")
    p.add_argument("name", metavar="NAME")

    p = command("history", history,
                "Every promotion of a recipe, oldest first: when, who, channel and tag, build, decision, waiver, why.")
    p.add_argument("name", metavar="NAME")

    p = command("export", export,
                "Write DIR/MODEL/config.pbtxt (platform tensorrt_plan, I/O from the manifest, cc_model_filenames per "
                "compute capability) and a new numbered version folder holding the channel's engines; nothing new "
                "when the newest version already holds them. One model folder serves one channel: export another "
                "channel with --model-name. DIR may not be inside the artifact store.")
    p.epilog = """\
examples:
  trt-pipeline export triton resnet50 --repo /models
  trt-pipeline export triton resnet50 --channel candidate --model-name resnet50-candidate --repo /models
  trt-pipeline export triton resnet50 --repo /models --max-batch-size 32 --dynamic-batching --instances 2

stdout: 'MODEL_DIR/VERSION: written|config.pbtxt updated|unchanged', then 'TAG FILE' per engine (--json:
{model_dir, config, version, files, changed, config_changed}).
exit codes: 0 ok, 1 nothing on the channel, settings the engines cannot serve, or a folder of another channel."""
    p.add_argument("format", choices=["triton"], help="the serving format (triton)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--channel", default=channels.PRODUCTION, help="which channel to export (default production)")
    p.add_argument("--repo", type=Path, required=True, metavar="DIR", help="the model repository directory")
    p.add_argument("--model-name", metavar="MODEL", help="the Triton model name and folder (default NAME)")
    p.add_argument("--max-batch-size", type=_count(0), default=0, metavar="N",
                   help="make the engines' first (dynamic) dimension Triton's batch, up to N; profile 0 must take "
                        "batches 1..N (default 0: no batch dimension, the batch is an ordinary dim)")
    p.add_argument("--dynamic-batching", action="store_true",
                   help="let Triton combine requests into batches (needs --max-batch-size)")
    p.add_argument("--max-queue-delay-us", type=_count(0), metavar="US",
                   help="how long dynamic batching may wait for a fuller batch, in microseconds (implies "
                        "--dynamic-batching)")
    p.add_argument("--instances", type=_count(1), metavar="N",
                   help="model instances per GPU (instance_group; default: Triton's, one per GPU)")

    p = command("gc", gc,
                "Keep the newest N builds per recipe and GPU tag; remove older ones unless a channel points at them or "
                "they were ever promoted. --dry-run lists what would go.")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this recipe")
    p.add_argument("--keep", type=int, default=KEEP, metavar="N",
                   help=f"newest builds to keep per recipe and GPU tag (default {KEEP})")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")

    p = command("fsck", fsck,
                "Check every artifact (manifest readable, engine size and sha256 as recorded), every channel (it "
                "points at a build in the store with the engine it recorded, and agrees with the history), and look "
                "for leftovers: staging and trash directories and .*.tmp files of processes that are gone, empty "
                "version directories, dead hash-memo entries. --repair removes those leftovers only; an artifact or "
                "a channel is never removed.")
    p.epilog = """\
examples:
  trt-pipeline fsck
  trt-pipeline fsck --repair
  trt-pipeline --json fsck

stdout: one 'WHERE: PROBLEM' line per problem ('removed WHERE: PROBLEM' for what --repair removed); a summary on
stderr (--json: {store, clean, problems, removed}, each problem with kind, where, message, garbage).
exit codes: 0 clean (after --repair: nothing left), 1 any problem left."""
    p.add_argument("--repair", action="store_true",
                   help="remove what is provably garbage (leftovers of dead processes, temp files, empty directories, "
                        "dead memo entries)")
