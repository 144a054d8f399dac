"""The `trt-pipeline` console script (pyproject's [project.scripts]): the signal handlers are installed before the
command line and every command are imported, so an interrupt while they import unwinds too and exits 130 or 143,
as with `python -m pipeline`."""

import sys

from pipeline import interrupt

interrupt.install()
try:
    from pipeline import cli
except KeyboardInterrupt:  # while importing: run() reports it
    cli = None  # type: ignore[assignment]


def run() -> None:
    """main(), with the exit status fixed as late as possible (interrupt.finish)."""
    if cli is None:
        print(f"interrupted: {interrupt.summary()}", file=sys.stderr)
        interrupt.end(interrupt.exit_code())
    try:
        code = cli.main()
    except KeyboardInterrupt:  # before main's own handler was reached
        code = interrupt.exit_code()
    interrupt.end(code)
