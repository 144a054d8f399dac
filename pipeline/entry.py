"""The `trt-pipeline` console script (pyproject's [project.scripts]): the signal handlers are installed before the
command line and every command are imported, so an interrupt while they import unwinds too and exits 130 or 143,
as with `python -m pipeline`."""

import sys

from pipeline import interrupt

interrupt.install()
try:
    from pipeline import cli
except BaseException as error:  # an interrupt while importing, however wrapped (interrupt.caused): run() reports it
    if not interrupt.caused(error):
        raise
    cli = None  # type: ignore[assignment]


def run() -> None:
    """main(), with the exit status fixed as late as possible (interrupt.finish)."""
    if cli is None:
        print(f"interrupted: {interrupt.summary()}", file=sys.stderr)
        interrupt.end(interrupt.exit_code())
    try:
        code = cli.main()
    except BaseException as error:  # an interrupt before main's own handler was reached, however wrapped
        if not interrupt.caused(error):
            raise
        print(f"interrupted: {interrupt.summary()}", file=sys.stderr)
        code = interrupt.exit_code()
    try:
        interrupt.end(code)
    except KeyboardInterrupt:  # the signal came between main's return and end's first line
        interrupt.end(interrupt.exit_code())
