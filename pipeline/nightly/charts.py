"""The nightly report's charts: one matplotlib figure per recipe, with a panel each for engine size, build time and
max error across the recorded nights and a line per target, written as SVG to inline in the HTML report.

The SVG keeps its text as text (`svg.fonttype: none`), is the same for the same nights (`svg.hashsalt`, no date),
has its ids prefixed so several figures share one page, a tooltip (<title>) on every point, and no fixed size: the
page's CSS scales it to its column. matplotlib is imported here only, so only writing a report loads it; drawing
goes through a `Figure` of its own (no pyplot, no GUI backend, no global state touched).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from xml.etree import ElementTree

from pipeline.nightly.text import night_text, night_time, value

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Lines = dict[str, list]  # target -> one value (or None) per night
SIZE = (10.0, 2.8)  # inches: about the page's column at 1200 px; scaled to the column by CSS
RC = {"svg.fonttype": "none", "svg.hashsalt": "trt-pipeline-nightly", "font.size": 9, "font.family": "sans-serif",
      "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": "#e6e6e6",
      "grid.linewidth": 0.6, "axes.edgecolor": "#888", "axes.labelcolor": "#333", "xtick.color": "#555",
      "ytick.color": "#555", "legend.frameon": False, "figure.facecolor": "white"}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
DASHES = ("-", "--", ":", "-.")
SVG, XLINK = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"


Series = dict[str, dict[tuple[str, str], list]]  # metric -> (recipe, target) -> values (report._series)


def per_recipe(runs: Sequence[str], series: Series) -> list[tuple[str, str | None]]:
    """(recipe, inline SVG) in the order the recipes first appear; None for a recipe with no value on any night."""
    import matplotlib

    out = []
    with matplotlib.rc_context(RC):
        for index, (recipe, metrics) in enumerate(by_recipe(series).items()):
            if not any(v is not None for lines in metrics.values() for vs in lines.values() for v in vs):
                out.append((recipe, None))
                continue
            figure, titles = draw(recipe, runs, metrics)
            out.append((recipe, inline(figure, titles, f"c{index}-")))
    return out


def by_recipe(series: Series) -> dict[str, dict[str, Lines]]:
    """metric -> (recipe, target) -> values, regrouped as recipe -> metric -> target -> values."""
    out: dict[str, dict[str, Lines]] = {}
    for metric, lines in series.items():
        for (recipe, target), values in lines.items():
            out.setdefault(recipe, {m: {} for m in series})[metric][target] = values
    return out


# ---------------------------------------------------------------- drawing


def draw(recipe: str, runs: Sequence[str], metrics: dict[str, Lines]) -> tuple[Figure, dict[str, list[str]]]:
    """The recipe's figure and the tooltips of its points, by the gid of the line they are on."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    targets = list(dict.fromkeys(t for lines in metrics.values() for t in lines))
    figure = Figure(figsize=SIZE, layout="constrained")
    labels = night_labels(runs)
    titles: dict[str, list[str]] = {}
    for ax, (metric, lines) in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics.items()):
        titles |= _panel(ax, recipe, metric, lines, targets, labels, runs)
    handles = [Line2D([], [], **_style(i, len(targets))) for i in range(len(targets))]
    figure.legend(handles, targets, loc="outside upper center", ncols=legend_columns(targets))
    figure.supxlabel(f"night (UTC{_years(runs)})", fontsize=8, color="#555")
    return figure, titles


def _panel(ax: Axes, recipe: str, metric: str, lines: Lines, targets: list[str], labels: list[str],
           runs: Sequence[str]) -> dict[str, list[str]]:
    """One metric: a line per target (missing nights break it), x = night, y in human units."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    name, unit_of = AXES[metric]
    known = [v for vs in lines.values() for v in vs if v is not None]
    scale, unit = unit_of(known)
    titles = {}
    for i, target in enumerate(targets):
        values = lines.get(target) or []
        if not any(v is not None for v in values):
            continue
        gid = f"{metric}-{i}"
        x = [n + dodge(i, len(targets)) for n in range(len(values))]
        y = [math.nan if v is None else v / scale for v in values]
        ax.plot(x, y, gid=gid, **_style(i, len(targets)))
        titles[gid] = [f"{recipe} {target}, {night_text(runs[n])}: {value(metric, v)}"
                       for n, v in enumerate(values) if v is not None]
    ax.set_ylabel(name)
    ax.set_xlim(-0.5, max(len(runs), 1) - 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, min_n_ticks=1))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _label_at(labels, x)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g} {unit}".strip()))
    ax.margins(y=0.15)
    if not known:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="#888")
    return titles


def _style(index: int, count: int) -> dict:
    """Lines that stay apart where their values are equal: a colour, a dash, a marker shape each, and markers
    that shrink from line to line so a later one sits inside an earlier one (hollow ones for every other)."""
    return {"color": COLOURS[index % len(COLOURS)], "linestyle": DASHES[index % len(DASHES)],
            "marker": MARKERS[index % len(MARKERS)], "markersize": max(3.0, 7.5 - 4.5 * index / max(count - 1, 1)),
            "markerfacecolor": "white" if index % 2 == 0 else COLOURS[index % len(COLOURS)], "linewidth": 1.4,
            "zorder": 2 + index}


def dodge(index: int, count: int) -> float:
    """A small sideways shift per target (a fraction of a night) so equal values do not sit on each other."""
    step = min(0.08, 0.32 / max(count - 1, 1))
    return (index - (count - 1) / 2) * step


def legend_columns(labels: list[str], width_pt: float = SIZE[0] * 72, font_pt: float = 9) -> int:
    """As many legend columns as fit the figure's width (the legend wraps into rows instead of running off)."""
    entry = max((len(label) for label in labels), default=1) * font_pt * 0.62 + 45
    return max(1, min(len(labels), int(width_pt * 0.95 // entry)))


# ---------------------------------------------------------------- units and labels


def _bytes(values: list[float]) -> tuple[float, str]:
    top = max((abs(v) for v in values), default=0)
    power = min(3, int(math.log(top, 1024))) if top >= 1 else 0
    return 1024.0 ** power, ("B", "KiB", "MiB", "GiB")[power]


def _seconds(values: list[float]) -> tuple[float, str]:
    return (60.0, "min") if max(values, default=0) >= 180 else (1.0, "s")


def _plain(values: list[float]) -> tuple[float, str]:
    return 1.0, ""


AXES: dict[str, tuple[str, Callable[[list[float]], tuple[float, str]]]] = {  # metric -> y label, (scale, unit)
    "engine_bytes": ("engine size", _bytes), "build_s": ("build time", _seconds),
    "max_error": ("max abs error", _plain)}


def night_labels(runs: Sequence[str]) -> list[str]:
    """'Nov 18' per night, with the time (to the second) only where that is needed to tell nights apart; a night's
    -2 suffix (two started in the same second) is kept."""
    times = [night_time(run) for run in runs]
    known = {t for t in times if t}
    form = next(f for f in ("%b %d", "%b %d\n%H:%M", "%b %d\n%H:%M:%S")
                if f.endswith("%S") or len({t.strftime(f) for t in known}) == len(known))
    return [t.strftime(form) + run[16:] if t else run for t, run in zip(times, runs)]


def _years(runs: Sequence[str]) -> str:
    years = sorted({t.year for t in map(night_time, runs) if t})
    return f", {years[0]}" if len(years) == 1 else f", {years[0]}-{years[-1]}" if years else ""


def _label_at(labels: list[str], x: float) -> str:
    n = round(x)
    return labels[n] if abs(x - n) < 1e-6 and 0 <= n < len(labels) else ""


# ---------------------------------------------------------------- SVG for the page


def inline(figure: Figure, titles: dict[str, list[str]], prefix: str) -> str:
    """The figure as an <svg> element for an HTML page: no XML prologue, metadata or fixed size, ids prefixed,
    a <title> on each point."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    root = ElementTree.fromstring(buffer.getvalue())
    _add_titles(root, titles)
    _prefix_ids(root, prefix)
    _html_names(root)
    for name in ("width", "height"):
        root.attrib.pop(name, None)
    root.set("role", "img")
    return ElementTree.tostring(root, encoding="unicode")


def _add_titles(root: ElementTree.Element, titles: dict[str, list[str]]) -> None:
    """Wrap the markers of the line with each gid, in order, in a <g> with that point's <title>."""
    parents = {child: parent for parent in root.iter() for child in parent}
    for group in [g for g in root.iter(f"{{{SVG}}}g") if g.get("id") in titles]:
        for use, text in zip(list(group.iter(f"{{{SVG}}}use")), titles[group.get("id")]):
            parent = parents[use]
            wrapper = ElementTree.Element(f"{{{SVG}}}g")
            ElementTree.SubElement(wrapper, f"{{{SVG}}}title").text = text
            parent.insert(list(parent).index(use), wrapper)
            parent.remove(use)
            wrapper.append(use)


def _prefix_ids(root: ElementTree.Element, prefix: str) -> None:
    """Ids unique within the page: every id, #ref and url(#ref) gets the figure's prefix."""
    href = f"{{{XLINK}}}href"
    for element in root.iter():
        for name, text in list(element.attrib.items()):
            if name == "id":
                element.set(name, prefix + text)
            elif name == href and text.startswith("#"):
                element.set(name, "#" + prefix + text[1:])
            elif "url(#" in text:
                element.set(name, text.replace("url(#", "url(#" + prefix))


def _html_names(root: ElementTree.Element) -> None:
    """Names as written in HTML, which puts an inline <svg> and its xlink:href in their namespaces itself."""
    for element in root.iter():
        element.tag = element.tag.replace(f"{{{SVG}}}", "")
        for name in [n for n in element.attrib if n.startswith(f"{{{XLINK}}}")]:
            element.set(name.replace(f"{{{XLINK}}}", "xlink:"), element.attrib.pop(name))
