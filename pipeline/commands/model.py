"""`trt-pipeline inspect MODEL` and `trt-pipeline init MODEL`: a model before any recipe exists."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.build import model as models
from pipeline.build.support import Unsupported, summary
from pipeline.commands.output import Command, emit_json
from pipeline.recipe import load as load_recipe
from pipeline.trt import backend as backends
from pipeline.units import size


def _facts(path: Path, backend_name: str, log: logging.Logger) -> dict:
    backend = None if backend_name == "none" else backends.load(backend_name)
    return models.facts(path, backend, log)


def inspect(args: argparse.Namespace, log: logging.Logger) -> int:
    found = _facts(args.model, args.backend, log)
    if args.json:
        emit_json(found)
    else:
        for line in _lines(found):
            print(line)
    return 1 if found["unsupported"] else 0


def _lines(found: dict) -> list[str]:
    lines = [f"{found['model']}: opset {found['opset']}, {found['nodes']} nodes, weights {size(found['weights_bytes'])}"
             + (f" (external data: {', '.join(found['external_data'])})" if found["external_data"] else "")]
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        for name, info in found[kind].items():
            dims = ", ".join(str(d) for d in info["shape"])
            named = [d for d in info["shape"] if isinstance(d, str)]
            lines.append(f"  {name:<20} {info['dtype']:<8} [{dims}]" + (f"  dynamic: {', '.join(named)}" if named else ""))
    lines.append("ops: " + ", ".join(f"{op} {count}" for op, count in found["ops"].items()))
    refused = found["unsupported"]
    if refused is None:
        lines.append("parser support: not checked (--backend none)")
    elif not refused:
        lines.append(f"parser support: {found['backend']} takes every node")
    else:
        nodes = [Unsupported(**node) for node in refused]
        lines.append(f"parser support ({found['backend']}): {summary(nodes)}")
        lines += [f"  {node.line()}" for node in nodes]
    return lines


def init(args: argparse.Namespace, log: logging.Logger) -> int:
    found = _facts(args.model, "none", log)
    out = args.output or Path("recipes") / f"{models.recipe_name(args.model)}.yaml"
    models.write_recipe(out, models.recipe_text(args.model, out, found, tuple(args.target) or models.DEFAULT_TARGETS),
                        args.force)
    load_recipe(out)  # what was written must load; a problem here is a bug in init
    if args.json:
        emit_json({"recipe": str(out), "model": str(args.model), "dynamic": found["dynamic"]})
    else:
        print(out)
    return 0


def register(command: Command) -> None:
    p = command("inspect", inspect,
                "Read an ONNX model (weights are not loaded) and show its inputs and outputs with dtypes and dims "
                "(dynamic dimensions by name), opset, op counts, weights size and external data files, and the "
                "nodes TensorRT's ONNX parser cannot take, from the parser's own support query.")
    p.epilog = """\
examples:
  trt-pipeline inspect models/resnet50.onnx
  trt-pipeline --json inspect models/resnet50.onnx | jq .inputs

exit codes: 0 the parser takes every node, 1 it refuses some (listed) or the model cannot be read."""
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "tensorrt-rtx", "none"],
                   help="whose parser to ask (default: auto; none: skip the support query)")

    p = command("init", init,
                "Write a commented recipe for MODEL that `check` accepts: a profile for each dynamic input (the "
                "first dynamic dimension is taken for a batch 1/8/32; others get 16/256/1024, to be checked), "
                "targets, the standard stages and a validate block.")
    p.epilog = """\
examples:
  trt-pipeline init models/resnet50.onnx                      writes recipes/resnet50.yaml
  trt-pipeline init models/ocr.onnx -o recipes/ocr.yaml --target sm89

stdout: the recipe's path. exit codes: 0 written, 1 the model cannot be read or the file exists (--force)."""
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("-o", "--output", type=Path, metavar="RECIPE", help="default: recipes/NAME.yaml")
    p.add_argument("--target", action="append", default=[], metavar="T",
                   help=f"a build target (repeatable); default: {', '.join(models.DEFAULT_TARGETS)}")
    p.add_argument("--force", action="store_true", help="replace an existing recipe file")
