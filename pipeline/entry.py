"""How the command line starts and ends, for the `trt-pipeline` console script (pyproject's [project.scripts])
and `python -m pipeline` alike: the signal handlers are installed before the command line and every command are
imported, so an interrupt while they import unwinds too and exits 130 or 143."""

import sys
from typing import NoReturn

from pipeline import interrupt

interrupt.install()
try:
    from pipeline import cli
except BaseException as error:  # an interrupt while importing, however wrapped (interrupt.caused): run() reports it
    if not interrupt.caused(error):
        raise
    cli = None  # type: ignore[assignment]


def run() -> NoReturn:
    """main(), with the exit status fixed as late as possible (interrupt.end)."""
    try:
        code = cli.main() if cli is not None else _interrupted()
    except BaseException as error:  # an interrupt before main's own handler was reached, however wrapped
        if not interrupt.caused(error):
            raise
        code = _interrupted()
    try:
        interrupt.end(code)
    except KeyboardInterrupt:  # the signal came between main's return and end's first line, where nothing catches it
        interrupt.end(interrupt.exit_code())


def _interrupted() -> int:
    print(f"interrupted: {interrupt.summary()}", file=sys.stderr)
    return interrupt.exit_code()
