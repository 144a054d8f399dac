"""The report's charts, drawn by matplotlib: dated nights, human units, lines that stay apart, a legend that fits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.nightly import charts

RUNS = ["20261118T020000Z", "20261119T020000Z", "20261120T020000Z"]


def test_nights_are_labelled_by_date_with_the_time_only_when_needed() -> None:
    assert charts.night_labels(RUNS) == ["Nov 18", "Nov 19", "Nov 20"]
    assert charts.night_labels(["20261118T020000Z", "20261118T031500Z"]) == ["Nov 18\n02:00", "Nov 18\n03:15"]
    assert charts.night_labels(["20261118T020000Z", "20261118T020001Z"]) == ["Nov 18\n02:00:00", "Nov 18\n02:00:01"]
    assert charts.night_labels(["20261118T020000Z", "20261118T020000Z-2", "manual"]) == [
        "Nov 18", "Nov 18-2", "manual"]


def test_axes_are_in_human_units() -> None:
    engine = 102_874_112  # 98.1 MiB
    svg = draw_svg({"engine_bytes": {"sm89": [engine, engine, engine * 1.1]},
                    "build_s": {"sm89": [200.0, 260.0, 300.0]}, "max_error": {"sm89": [1e-4, 2e-4, None]}})
    assert re.search(r">\d+(\.\d+)? MiB</text>", svg) and re.search(r">\d+(\.\d+)? min</text>", svg)
    assert ">0.0001</text>" in svg and "e+0" not in svg
    assert "<title>tiny sm89, 2026-11-18 02:00:00 UTC: 98.1 MiB (102874112 B)</title>" in svg


def test_lines_with_equal_values_stay_apart() -> None:
    styles = [charts._style(i, 4) for i in range(4)]
    for key in ("color", "linestyle", "marker", "markersize"):
        assert len({s[key] for s in styles}) == 4, key
    assert len({charts.dodge(i, 4) for i in range(4)}) == 4 and abs(charts.dodge(0, 4)) < 0.5


def test_the_legend_wraps_inside_the_figure() -> None:
    targets = [f"sm{n}-with-a-long-name" for n in (75, 80, 86, 87, 89, 90, 100, 103, 110, 120)]
    figure, _ = charts.draw("big", RUNS, {"engine_bytes": {t: [1e6, 1e6, 1.1e6] for t in targets}})
    figure.draw_without_rendering()
    (legend,) = figure.legends
    box, page = legend.get_window_extent(), figure.bbox
    assert 1 < charts.legend_columns(targets) < len(targets)
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1


def test_matplotlib_loads_only_when_a_report_is_drawn() -> None:
    code = ("import sys\nfrom pipeline.nightly import charts, report, run\nfrom pipeline.commands import nightly\n"
            "print('matplotlib' in sys.modules)")
    repo = Path(__file__).parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


def draw_svg(metrics: dict) -> str:
    import matplotlib

    with matplotlib.rc_context(charts.RC):
        figure, titles = charts.draw("tiny", RUNS, metrics)
        return charts.inline(figure, titles, "t-")
