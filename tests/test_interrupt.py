"""interrupt: signals remembered, a deferred step run whole, the exit status and the one line that says what was
published. Real signals, delivered to this process."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

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
