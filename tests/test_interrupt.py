"""interrupt: signals remembered, a deferred step run whole, the exit status and the one line that says what was
published. Real signals, delivered to this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import interrupt


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    handlers = {signum: signal.getsignal(signum) for signum in interrupt.SIGNALS}
    interrupt.install()
    yield
    interrupt.clear()
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_unwinds_and_sets_the_exit_status(signum: int, code: int) -> None:
    assert interrupt.exit_code() == 130  # a KeyboardInterrupt nobody sent by signal counts as Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises at once: the sleep is cut short
    assert interrupt.requested() and interrupt.exit_code() == code


def test_a_signal_during_a_deferred_step_takes_effect_when_it_ends() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("renamed")
            interrupt.published("tiny@1.0.0+1 [sm89]")
            steps.append("noted")
        steps.append("after")  # never reached
    assert steps == ["renamed", "noted"] and interrupt.exit_code() == 143
    assert interrupt.summary() == "published before the interrupt: tiny@1.0.0+1 [sm89]; nothing after it"


def test_nothing_published_says_so() -> None:
    assert interrupt.summary() == "nothing was published by the interrupted step"
    interrupt.published("a")
    interrupt.install()
    assert interrupt.summary() == "nothing was published by the interrupted step"  # each run starts afresh


def _ended(body: str) -> subprocess.CompletedProcess:
    """Run `body` in a fresh interpreter that ends with interrupt.end(3)."""
    script = "import atexit, sys, threading, time\nfrom pipeline import interrupt\n" + body + "\ninterrupt.end(3)\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_end_runs_the_atexit_functions_and_flushes() -> None:
    """What a normal exit does that anyone sees still happens: atexit functions (logging's flush among them),
    buffered output written, the exit status kept; the interpreter's teardown (here a global's __del__) does not."""
    done = _ended("atexit.register(lambda: print('atexit ran'))\nprint('out', end='')\n"
                  "print('err', end='', file=sys.stderr)\n"
                  "class Torn:\n    def __del__(self): print(' torn down')\nkept = Torn()")
    assert (done.returncode, done.stdout, done.stderr) == (3, "outatexit ran\n", "err")


def test_end_waits_for_a_running_thread_as_a_normal_exit_does() -> None:
    done = _ended("threading.Thread(target=lambda: (time.sleep(0.3), print('joined', flush=True))).start()")
    assert (done.returncode, done.stdout) == (3, "joined\n")


def test_end_leaves_a_profile_to_be_written(tmp_path: Path) -> None:
    """Under cProfile (and coverage) the interpreter exits normally, so they write their results."""
    script = tmp_path / "ends.py"
    script.write_text("from pipeline import interrupt\ninterrupt.end(0)\n")
    out = tmp_path / "profile.out"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), str(script)], check=True, timeout=60)
    assert out.stat().st_size > 0


class _InterruptedWhileNamed:
    """A descriptor whose __set_name__ meets the interrupt, as a dataclass field can while its module imports."""

    def __set_name__(self, owner: type, name: str) -> None:
        raise KeyboardInterrupt


def test_an_interrupt_is_recognised_however_it_was_wrapped() -> None:
    """Python 3.11 turns an exception in __set_name__ into a RuntimeError (its cause the KeyboardInterrupt): a Ctrl-C
    during an import must still end as an interrupt (130), not as a crash. Seen in tests/test_faults.py's signal
    sweep: 1 run in ~200."""
    with pytest.raises(BaseException) as caught:
        type("Spec", (), {"outputs": _InterruptedWhileNamed()})
    assert interrupt.caused(caught.value)
    assert interrupt.caused(KeyboardInterrupt())
    assert not interrupt.caused(RuntimeError("a bug"))
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ValueError("raised while unwinding from it") from None
    except ValueError as error:
        assert interrupt.caused(error)  # the run was interrupted: its context says so, shown or not
