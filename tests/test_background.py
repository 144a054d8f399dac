"""background: named jobs on one worker thread; results and failures come back where the build waits for them."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import NoReturn

import pytest

from pipeline.background import Background
from tests.test_heap import FIXED_MALLOC

REPO = Path(__file__).resolve().parent.parent


class CheckFailed(Exception):
    """What a failing background check raises in these tests."""


def fail(message: str) -> NoReturn:
    raise CheckFailed(message)


def test_a_job_runs_on_another_thread_and_its_result_comes_back() -> None:
    with Background() as background:
        background.start("double", lambda x: 2 * x, 21)
        background.start("thread", threading.get_ident)
        assert background.result("double") == 42
        assert background.result("thread") != threading.get_ident()
        assert background.result("double") == 42  # asking again gives the same answer


def test_a_job_that_was_never_started_has_no_result() -> None:
    with Background() as background:
        assert background.result("cleanup_check") is None
        background.wait()  # nothing to wait for


def test_starting_the_same_name_twice_is_refused() -> None:
    ran: list[str] = []
    with Background() as background:
        background.start("check", ran.append, "first")
        with pytest.raises(ValueError, match="^background job 'check' was already started$"):
            background.start("check", ran.append, "second")
    assert ran == ["first"]


def test_a_failure_is_raised_by_result_wait_and_leaving() -> None:
    with pytest.raises(CheckFailed, match="^numerics changed$"):
        with Background() as background:
            background.start("check", fail, "numerics changed")
            with pytest.raises(CheckFailed, match="^numerics changed$"):
                background.result("check")
            with pytest.raises(CheckFailed, match="^numerics changed$"):
                background.wait()


def test_leaving_waits_for_every_job() -> None:
    done: list[str] = []

    def slow() -> None:
        time.sleep(0.2)
        done.append("slow")

    with Background() as background:
        background.start("slow", slow)
    assert done == ["slow"]


def test_wait_raises_the_first_failure_in_the_order_started() -> None:
    ran: list[str] = []

    def late_failure() -> None:
        time.sleep(0.1)
        ran.append("first")
        fail("first")

    with pytest.raises(CheckFailed, match="^first$"):  # leaving the block raises it again
        with Background() as background:
            background.start("first", late_failure)
            background.start("second", lambda: (ran.append("second"), fail("second")))
            background.start("third", ran.append, "third")
            with pytest.raises(CheckFailed, match="^first$"):
                background.wait()
            assert background.result("third") is None
    assert ran == ["first", "second", "third"]  # one failure does not stop the jobs after it


def test_a_check_failure_wins_over_a_later_error_in_the_block() -> None:
    """The check's stage came first: its failure is the one reported, the later error its context."""
    release = threading.Event()

    def check() -> None:
        release.wait(5)  # fails only after the block has failed
        fail("cleaned graph differs")

    with pytest.raises(CheckFailed, match="^cleaned graph differs$") as caught:
        with Background() as background:
            background.start("check", check)
            release.set()
            raise RuntimeError("serialize failed")
    assert isinstance(caught.value.__context__, RuntimeError)
    assert str(caught.value.__context__) == "serialize failed"


def test_an_error_in_the_block_passes_through_when_every_job_succeeds() -> None:
    with pytest.raises(RuntimeError, match="^serialize failed$"):
        with Background() as background:
            background.start("check", lambda: None)
            raise RuntimeError("serialize failed")


def test_ctrl_c_cancels_queued_jobs_and_waits_only_for_the_running_one() -> None:
    started = threading.Event()
    ran: list[str] = []

    def running() -> None:
        started.set()
        time.sleep(0.2)
        ran.append("running finished")
        fail("not reported on Ctrl-C")

    with pytest.raises(KeyboardInterrupt):
        with Background() as background:
            background.start("running", running)
            background.start("queued", ran.append, "queued ran")
            assert started.wait(5)
            raise KeyboardInterrupt
    assert ran == ["running finished"]  # waited for; its failure does not replace the Ctrl-C
    with pytest.raises(concurrent.futures.CancelledError):
        background.result("queued")
    time.sleep(0.05)
    assert ran == ["running finished"]  # the worker is gone: the queued job never runs


def test_ctrl_c_tells_the_running_job_to_stop_and_a_normal_exit_does_not() -> None:
    seen: list[bool] = []
    with pytest.raises(KeyboardInterrupt):
        with Background() as background:
            def running() -> None:
                assert background.stopping.wait(5)  # set by the Ctrl-C below, while this job runs
                seen.append(True)

            background.start("running", running)
            raise KeyboardInterrupt
    assert seen == [True]
    with Background() as background:
        background.start("quick", lambda: None)
    assert not background.stopping.is_set() and background.done()


CHURN = """\
import sys
from pipeline.background import Background

def rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

def churn() -> tuple[int, list[bytes]]:
    # ~200 MiB in 64 KiB blocks, each followed by a small block that is kept: free() alone returns none of it
    blocks, kept = [], []
    for _ in range(3200):
        blocks.append(b"\\x01" * (64 * 1024))
        kept.append(b"\\x02" * 1024)
    peak = rss()
    del blocks
    return peak, kept

with Background() as background:
    background.start("churn", churn)
    peak, kept = background.result("churn")
print(peak - rss())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc/self/status (Linux)")
def test_what_a_job_freed_goes_back_to_the_os(tmp_path: Path) -> None:
    """The worker thread's malloc arena is trimmed after each job (a plain thread keeps all ~200 MiB)."""
    from pipeline import heap

    if heap._malloc_trim() is None:
        pytest.skip("no glibc malloc_trim here: trim() is a no-op")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CHURN)], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=True, env={**os.environ, **FIXED_MALLOC})
    assert int(done.stdout) >= 100 * 2**20


def test_a_gated_job_runs_only_once_released() -> None:
    """A job that holds the GIL waits for the build to enter code that lets go of it (`release`)."""
    ran: list[str] = []
    with Background() as background:
        background.start("checker", ran.append, "checker", gated=True)
        time.sleep(0.1)
        assert ran == [] and not background.done()
        background.release()
        assert background.result("checker") is None
        assert ran == ["checker"]


def test_waiting_for_any_job_releases_the_gated_ones_before_it() -> None:
    """The worker runs jobs in the order started: a job queued behind a gated one would wait forever if waiting
    did not release the gate (the thread that waits has nothing else to do)."""
    ran: list[str] = []
    with Background() as background:
        background.start("checker", ran.append, "checker", gated=True)
        background.start("written", ran.append, "written")
        background.result("written")
    assert ran == ["checker", "written"]


def test_leaving_releases_and_ctrl_c_skips_gated_jobs() -> None:
    ran: list[str] = []
    with Background() as background:
        background.start("checker", ran.append, "left", gated=True)
    assert ran == ["left"]
    with pytest.raises(KeyboardInterrupt):
        with Background() as background:
            background.start("checker", ran.append, "after Ctrl-C", gated=True)
            raise KeyboardInterrupt
    assert ran == ["left"]
