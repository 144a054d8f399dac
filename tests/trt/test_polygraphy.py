"""pipeline.trt.polygraphy: Polygraphy kept quiet on stdout, also when two threads use it at once."""

from __future__ import annotations

import threading

from polygraphy.logger import G_LOGGER

from pipeline.trt.polygraphy import quiet


def _default() -> int:
    return G_LOGGER.module_severity.get("")


def test_quiet_stays_on_until_the_last_thread_leaves_even_when_they_leave_out_of_order() -> None:
    """The cleanup check (a thread) and the main thread overlap: the first to leave must not unmute Polygraphy
    while the other one still runs it (it printed '[I] ... Inference Input(s)' onto stdout)."""
    before = _default()
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def first() -> None:
        with quiet():
            a_inside.set()
            b_inside.wait(10)
        a_left.set()

    def second() -> None:
        a_inside.wait(10)
        with quiet():
            b_inside.set()
            a_left.wait(10)
            seen["while the other had left"] = _default()
        seen["after both"] = _default()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen["while the other had left"] > G_LOGGER.CRITICAL
    assert seen["after both"] == before


def test_quiet_silences_polygraphy_and_restores_it(capsys) -> None:
    before = _default()
    with quiet():
        G_LOGGER.info("not shown")
        G_LOGGER.error("not shown either")
    assert _default() == before
    assert "not shown" not in capsys.readouterr().out
