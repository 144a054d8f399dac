import sys

from pipeline import interrupt

interrupt.install()  # before the heavy imports: a signal during them unwinds too, and exits 130 or 143
try:
    from pipeline.cli import main

    code = main()
except Exception as error:  # an interrupt before main's own handler was reached (while importing), however wrapped
    if not interrupt.caused(error):
        raise
    print(f"interrupted: {interrupt.summary()}", file=sys.stderr)
    code = interrupt.exit_code()
except KeyboardInterrupt:
    print(f"interrupted: {interrupt.summary()}", file=sys.stderr)
    code = interrupt.exit_code()
try:
    interrupt.end(code)
except KeyboardInterrupt:  # the signal came between main's return and end's first line, where nothing catches it
    interrupt.end(interrupt.exit_code())
