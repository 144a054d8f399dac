"""trt-pipeline: the command line. One handler turns errors into one clear line and a trustworthy exit code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pipeline import __version__, commands, interrupt
from pipeline.commands.output import Progress, emit_json, emitted_json, paint, reset_emitted
from pipeline.errors import CannotRunHere, PipelineError, RecipeError, located

STORE_ENV = "TRT_PIPELINE_STORE"
EXIT_OK, EXIT_USER, EXIT_INTERRUPTED, EXIT_BUG = 0, 1, 130, 3

EPILOG = """\
examples:
  trt-pipeline check recipes/*.yaml             validate recipes (schema, stage order, model I/O, backend)
  trt-pipeline build recipes/resnet50.yaml      build one engine per target into artifacts/
  trt-pipeline build recipes/resnet50.yaml --target sm89 --dry-run
  trt-pipeline list                             what the store holds
  trt-pipeline show resnet50@1.0.0 --tag sm89.rtx-1.7.1 --json
  trt-pipeline validate resnet50@1.0.0 --tag sm89.rtx-1.7.1   on a GPU: Polygraphy vs ONNX Runtime
  trt-pipeline promote resnet50@1.0.0 --from sm89.rtx-1.7.1 --to sm120.rtx-1.7.1
  trt-pipeline export triton resnet50 --channel production --repo /models
  trt-pipeline nightly recipes/ --jobs 2          rebuild everything, report regressions
  trt-pipeline inspect model.onnx                 inputs, outputs, what TensorRT cannot parse
  trt-pipeline init model.onnx                    write a starting recipe for a model
  trt-pipeline --print-completion bash            shell completion (bash, zsh, tcsh)

artifacts are named NAME@VERSION (newest build), NAME@VERSION+BUILD, or by directory.
exit codes: 0 ok, 1 user error or failed build, 2 cannot run here (no GPU), 3 internal error (a bug),
130 Ctrl-C (SIGINT), 143 SIGTERM.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error exits 1 (a user error): exit 2 means 'cannot run here'."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER, f"{self.prog}: error: {message}\n")


def _common(top: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the command. Sub-commands leave unset values alone (SUPPRESS),
    so `trt-pipeline --store D list` and `trt-pipeline list --store D` mean the same."""
    common = argparse.ArgumentParser(add_help=False)
    unset = {} if top else {"default": argparse.SUPPRESS}
    common.add_argument("-v", "--verbose", action="count", help="more log output (-v: TensorRT info, -vv: debug)",
                        **(unset or {"default": 0}))
    common.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress lines", **unset)
    common.add_argument("--store", metavar="DIR", type=Path,
                        help=f"artifact store root (default: ${STORE_ENV} or ./artifacts)", **unset)
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout", **unset)
    return common


SHELLS = ("bash", "zsh", "tcsh")  # what shtab completes


class _PrintCompletion(argparse.Action):
    """--print-completion SHELL: print shtab's completion script for this parser and exit (shtab is imported only
    here: it would cost every run's start-up)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, default=None, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        import shtab  # lazy: only this option needs it

        print(shtab.complete(parser, str(values)))
        parser.exit(0)


def parser(words: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line, with the options of the command named in `words` (a command line) and of the
    commands that share its module; the others are listed by name and help only, so that their modules (the
    nightly, the farm, Triton export ...) are not imported for nothing. No `words`: every command in full."""
    common = _common(top=False)
    top = _Parser(
        prog="trt-pipeline", parents=[_common(top=True)], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build TensorRT engines from YAML recipes into a versioned, GPU-tagged artifact store.")
    top.add_argument("--version", action="version", version=f"trt-pipeline {__version__}")
    # e.g. `trt-pipeline --print-completion bash > /etc/bash_completion.d/trt-pipeline` (shtab, from this parser)
    top.add_argument("--print-completion", choices=SHELLS, action=_PrintCompletion,
                     help="print a shell completion script (bash, zsh, tcsh)")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=commands.COMMANDS[name][1], description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    loaded = commands.modules_for(() if words is None else words)
    for name in commands.MODULES:  # --help's order: the table's
        if name in loaded:
            commands.module(name).register(command)
        else:
            for listed, (owner, help_) in commands.COMMANDS.items():
                if owner == name:
                    sub.add_parser(listed, help=help_, add_help=False)
    return top


def _setup_logging(args: argparse.Namespace) -> logging.Logger:
    log = logging.getLogger("pipeline")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.setLevel(logging.ERROR if args.quiet else
                     [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)])
    log.setLevel(handler.level)  # no record is made for what nobody shows (TensorRT sends thousands at VERBOSE)
    if not args.verbose:  # TensorRT's own messages: in every build.log, on the terminal with -v
        handler.addFilter(lambda record: not record.name.startswith("pipeline.trt"))
    handler.addFilter(lambda record: Progress.end_status() or True)  # a log line never lands on a status line
    log.handlers[:] = [handler]
    log.propagate = False
    return log


def _crash_log(error: BaseException) -> Path:
    path = Path(tempfile.gettempdir()) / f"trt-pipeline-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    versions = {"trt-pipeline": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for module in ("tensorrt", "tensorrt_rtx", "onnx", "onnx_graphsurgeon", "polygraphy", "onnxruntime", "numpy"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    path.write_text(json.dumps(versions, indent=2) + "\n\n" + "".join(traceback.format_exception(error)))
    return path


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = parser(words).parse_args(words)
    reset_emitted()  # main() may run several times in one process (tests)
    environ = os.environ if environ is None else environ
    args.store = args.store or Path(environ.get(STORE_ENV) or "artifacts")
    args.environ = environ
    log = _setup_logging(args)
    interrupt.install()  # Ctrl-C and a job scheduler's SIGTERM unwind, so staged work is cleaned up on the way out
    try:
        try:
            return args.func(args, log)
        finally:
            Progress.end_status()  # an unfinished status line must not swallow the error below
    except RecipeError as error:
        lines = [problem if located(problem) else f"error: {problem}" for problem in error.problems]
        return _failed(args, error.exit_code, "recipe", lines, error.hint)
    except PipelineError as error:
        kind = "cannot-run-here" if isinstance(error, CannotRunHere) else "error"
        return _failed(args, error.exit_code, kind, [f"error: {error}"], error.hint)
    except BrokenPipeError:  # `trt-pipeline list | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:  # 130 for SIGINT (Ctrl-C), 143 for SIGTERM
        return _failed(args, interrupt.exit_code(), "interrupted", [f"interrupted: {interrupt.summary()}"], None)
    except Exception as error:  # noqa: BLE001 - the one place unexpected errors are reported
        if interrupt.caused(error):  # an interrupt some code wrapped (a class's __set_name__ during an import)
            return _failed(args, interrupt.exit_code(), "interrupted", [f"interrupted: {interrupt.summary()}"], None)
        try:
            path: Path | str = _crash_log(error)
        except OSError as unwritable:  # a full disk: the traceback goes to stderr instead
            traceback.print_exception(error)
            path = f"none written ({unwritable.strerror}); the traceback is above"
        return _failed(args, EXIT_BUG, "bug", [f"internal error (this is a bug): {type(error).__name__}: {error}",
                                               f"details and versions: {path}"], None, log=str(path))


def _failed(args: argparse.Namespace, code: int, kind: str, lines: list[str], hint: str | None, **extra: str) -> int:
    """The one way a failure is reported: its lines (and hint) on stderr; with --json, also one JSON object on
    stdout ({"error": {kind, message, problems, hint, exit_code}}) unless the command wrote its own document, so
    `| jq` always gets exactly one."""
    for line in lines:
        head, colon, rest = line.partition(": ")
        coloured = head in ("error", "interrupted") or line.startswith("internal error")
        print(f"{paint(head, 'red', sys.stderr, args.environ)}{colon}{rest}" if coloured and colon else line,
              file=sys.stderr)
    if hint:
        print(f"{paint('hint', 'yellow', sys.stderr, args.environ)}: {hint}", file=sys.stderr)
    if getattr(args, "json", False) and not emitted_json():
        message = lines[0].removeprefix("error: ") if kind != "recipe" else f"{len(lines)} problem(s) in the recipe"
        problems = [line.removeprefix("error: ") for line in lines] if kind == "recipe" else []
        emit_json({"error": {"kind": kind, "message": message, "problems": problems, "hint": hint, "exit_code": code,
                             **extra}})
    return code
