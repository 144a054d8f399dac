"""A night's report as one self-contained HTML file (inline CSS and SVG, nothing fetched) and as Markdown for a
CI job's summary page. Both are rendered from report.json records; the charts (charts.py: matplotlib, a figure per
recipe) span the recorded nights."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path

from pipeline.files import write_bytes
from pipeline.nightly import charts
from pipeline.nightly.text import markdown_text, night_text, value
from pipeline.units import size

HTML = "report.html"
MARKDOWN = "summary.md"
METRICS: dict[str, tuple[str, Callable[[dict], float | None]]] = {
    # a skipped pair reused an earlier build: tonight has no build time of its own
    "build_s": ("build time (s)", lambda r: r.get("build_s") if r.get("status") != "skipped" else None),
    "engine_bytes": ("engine size (bytes)", lambda r: r.get("engine_bytes")),
    "max_error": ("max error", lambda r: max_error(r)),
}


def write(night: Path, report: dict, history: list[dict]) -> None:
    write_bytes(night / HTML, html(report, history).encode())
    write_bytes(night / MARKDOWN, markdown(report).encode())


# ---------------------------------------------------------------- values


def max_error(record: dict) -> float | None:
    errors = [v for v in ((record.get("validation") or {}).get("max_errors") or {}).values()
              if isinstance(v, (int, float))]
    return max(errors, default=None)


def headline(report: dict) -> str:
    s = report["summary"]
    verdict = "all good" if s["ok"] else ", ".join(
        part for part in (f"{s['regressions']} regression(s)" if s["regressions"] else "",
                          f"{s['failed']} failure(s)" if s["failed"] else "",
                          f"{s['validation_failed']} failed validation" if s.get("validation_failed") else "",
                          f"{s['unschedulable']} unschedulable" if s.get("unschedulable") else "")
        if part)
    return (f"{s['pairs']} pairs: {s['built']} built, {s['skipped']} skipped (unchanged), {s['failed']} failed; "
            f"{verdict}")


def regression_line(r: dict) -> str:
    """'tiny sm89 engine_bytes: 144.8 KiB (148268 B) -> 288.4 KiB (295348 B) (+99.2%, threshold 10%)'."""
    detail = f" ({r['detail']})" if r["detail"] and r["metric"] != "status" else ""  # a failure's error is listed
    return f"{r['recipe']} {r['target']} {r['metric']}: {value(r['metric'], r['before'])} -> " \
           f"{value(r['metric'], r['after'])}{detail}"


def change_line(c: dict, text: Callable[[object], str] = str) -> str:
    """'two sm86 status: failed -> built recovered'; `text` escapes each part (markdown_text for summary.md)."""
    return f"{text(c['recipe'])} {text(c['target'])} {text(c['metric'])}: {text(c['before'])} -> " \
           f"{text(c['after'])} {text(c['detail'])}".rstrip()


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


# ---------------------------------------------------------------- Markdown


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"## {'✅' if s['ok'] else '❌'} Nightly {markdown_text(report['run'])}", "", headline(report) +
             f" (previous night: {markdown_text(report['previous'] or 'none')}; {report['duration_s']:.1f}s, "
             f"{report['workers']} worker(s))", ""]
    if report["regressions"]:
        lines += ["### Regressions", "", *_md_table(("recipe", "target", "metric", "before", "after", "detail"), [
            (r["recipe"], r["target"], r["metric"], value(r["metric"], r["before"]), value(r["metric"], r["after"]),
             r["detail"]) for r in report["regressions"]]), ""]
    failures = [p for p in report["pairs"] if p["status"] == "failed"]
    if failures:
        lines += ["### Failures", "", *_md_table(("recipe", "target", "error"), [
            (p["recipe"], p["target"], first_line(p.get("error"))) for p in failures]), ""]
    lines += ["### Pairs", "", *_md_table(("recipe", "target", "status", "engine", "build", "max error", "validation",
                                           "artifact"), [pair_row(p) for p in report["pairs"]]), ""]
    if report["changes"]:
        lines += ["### Other changes", "", *(f"- {change_line(c, markdown_text)}" for c in report["changes"]), ""]
    return "\n".join(lines)


def pair_row(pair: dict) -> tuple[str, ...]:
    """The table's cells; a skipped pair built nothing tonight, so it has no build time (its artifact names the
    build it reused)."""
    build = pair.get("build_s") if pair["status"] == "built" else None
    error = max_error(pair)
    return (pair["recipe"], pair["target"], pair["status"] + (f" ({pair['reason']})" if pair.get("reason") else ""),
            size(pair.get("engine_bytes")) if pair.get("engine_bytes") is not None else "-",
            f"{build:.2f}s" if build is not None else "-", f"{error:.3g}" if error is not None else "-",
            (pair.get("validation") or {}).get("status", "-"),
            (pair.get("artifact") or "-") + (f" ({ran_on(pair)})" if ran_on(pair) else ""))


def ran_on(pair: dict) -> str:
    """Where a cluster's pair ran and how its files came back: 'on w1 by path, validated on l4-1, after 1 lost
    attempt(s)'; '' for a local night."""
    built, checked = pair.get("built_on"), pair.get("validated_on")
    retried = f"after {len(pair['attempts'])} lost attempt(s)" if pair.get("attempts") else ""
    how = f" by {pair['transport']}" if pair.get("transport") else ""
    return ", ".join(part for part in (f"on {built}{how}" if built else "", f"validated on {checked}" if checked else "",
                                       retried) if part)


def _md_table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(markdown_text(c) for c in row) + " |" for row in rows)]


# ---------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}th,td{padding:.3em .6em;border-bottom:1px solid #eee;text-align:left;
vertical-align:middle}th{background:#f6f6f6}td.num{text-align:right}
.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}.muted{color:#666}.badge{display:inline-block;padding:.1em .6em;
border-radius:1em;color:#fff}.badge.ok{background:#1a7f37}.badge.bad{background:#cf222e}
pre{white-space:pre-wrap;margin:0;font-size:12px}p,pre,.path{overflow-wrap:anywhere}.v{white-space:nowrap}
svg.spark{vertical-align:middle}
figure.chart{margin:0 0 1.5em}.chart figcaption{font-weight:600;margin:0 0 .2em}
.chart svg{display:block;width:100%;height:auto}
"""


def html(report: dict, history: list[dict]) -> str:
    s = report["summary"]
    runs = [night["run"] for night in history]
    series = {key: _series(history, getter) for key, (_, getter) in METRICS.items()}
    body = [f"<h1>Nightly {escape(report['run'])} <span class=\"badge {'ok' if s['ok'] else 'bad'}\">"
            f"{'all good' if s['ok'] else 'regressions or failures'}</span></h1>",
            f"<p>{escape(headline(report))}</p>", _meta(report),
            _regressions(report), _failures(report), _pairs(report, series, runs), _changes(report),
            _charts(runs, series)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>Nightly {escape(report['run'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(part for part in body if part) + "\n</body>\n</html>\n")


def _series(history: list[dict], getter: Callable[[dict], float | None]) -> dict[tuple[str, str], list]:
    """(recipe, target) -> one value per recorded night (None where the pair failed or was absent)."""
    keys = list(dict.fromkeys((p["recipe"], p["target"]) for night in history for p in night.get("pairs", [])))
    out = {}
    for key in keys:
        by_night = [{(p["recipe"], p["target"]): p for p in night.get("pairs", [])}.get(key) for night in history]
        out[key] = [getter(p) if p and p.get("status") != "failed" else None for p in by_night]
    return out


def _meta(report: dict) -> str:
    items = [("started", report["started_at"]), ("duration", f"{report['duration_s']:.1f}s"),
             ("recipes", report["recipes_dir"]), ("store", report["store"]),
             ("workers", f"{report['workers']} (--jobs {report['jobs']})"),
             ("previous night", report["previous"] or "none"), ("force", "yes" if report["force"] else "no"),
             ("thresholds", ", ".join(f"{k} {v:g}" for k, v in report["config"].items()
                                      if isinstance(v, (int, float))))]
    return "<p class=\"muted\">" + " · ".join(f"{escape(k)}: {escape(str(v))}" for k, v in items) + "</p>"


def _table(header: tuple[str, ...], rows: list[list[str]], numeric: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    num = ' class="num"'
    body = "".join("<tr>" + "".join(f"<td{num if i in numeric else ''}>{cell}</td>" for i, cell in enumerate(row))
                   + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _regressions(report: dict) -> str:
    if not report["regressions"]:
        return "<h2>Regressions</h2>\n<p class=\"ok\">none</p>"
    rows = [[escape(r["recipe"]), escape(r["target"]), f"<span class=\"bad\">{escape(r['metric'])}</span>",
             escape(value(r["metric"], r["before"])), escape(value(r["metric"], r["after"])), escape(r["detail"])]
            for r in report["regressions"]]
    return "<h2>Regressions</h2>\n" + _table(("recipe", "target", "metric", "before", "after", "detail"), rows)


def _failures(report: dict) -> str:
    failed = [p for p in report["pairs"] if p["status"] == "failed"]
    if not failed:
        return ""
    rows = [[escape(p["recipe"]), escape(p["target"]), f"<pre>{escape(p.get('error') or '')}</pre>"
             + (f"<div class=\"muted\">hint: {escape(p['hint'])}</div>" if p.get("hint") else ""),
             f"<span class=\"path\">{escape(p.get('log') or '-')}</span>"] for p in failed]
    return "<h2>Failures</h2>\n" + _table(("recipe", "target", "error", "log"), rows)


def _pairs(report: dict, series: dict[str, dict], runs: list[str]) -> str:
    rows = []
    for p in report["pairs"]:
        key, status = (p["recipe"], p["target"]), p["status"]
        cells = pair_row(p)
        # a skipped pair built nothing tonight: no build time of its own, no sparklines
        spark = {m: "" if status == "skipped" else _spark(m, series[m].get(key, []), runs) for m in METRICS}
        errors = (p.get("validation") or {}).get("max_errors") or {}
        error_text = ", ".join(f"<span class=\"v\">{escape(o)} {v:.3g}</span>" for o, v in errors.items()
                               if isinstance(v, (int, float)))
        rows.append([escape(p["recipe"]), escape(p["target"]),
                     f"<span class=\"{'bad' if status == 'failed' else 'ok'}\">{escape(cells[2])}</span>",
                     f"<span class=\"v\">{escape(cells[3])}</span> " + spark["engine_bytes"],
                     f"<span class=\"v\">{escape(cells[4])}</span> " + spark["build_s"],
                     (error_text or "-") + " " + spark["max_error"], escape(cells[6]), escape(cells[7])])
    return "<h2>Pairs</h2>\n" + _table(("recipe", "target", "status", "engine", "build time", "max error",
                                        "validation", "artifact"), rows, frozenset({3, 4, 5}))


def _changes(report: dict) -> str:
    if not report["changes"]:
        return ""
    items = "".join(f"<li>{escape(c['recipe'])} {escape(c['target'])}: {escape(c['metric'])} "
                    f"{escape(str(c['before']))} → {escape(str(c['after']))} <span class=\"muted\">"
                    f"{escape(c['detail'])}</span></li>\n" for c in report["changes"])
    return f"<h2>Other changes</h2>\n<ul>\n{items}</ul>"


def _charts(runs: list[str], series: dict[str, dict]) -> str:
    """A figure per recipe (drawn by matplotlib, see charts.py); recipes with no value on any night are named."""
    drawn = charts.per_recipe(runs, series)
    parts = [f"<h2>Across {len(runs)} recorded night(s)</h2>"]
    parts += [f"<figure class=\"chart\"><figcaption>{escape(recipe)}</figcaption>{svg}</figure>"
              for recipe, svg in drawn if svg]
    empty = [recipe for recipe, svg in drawn if not svg]
    if empty:
        parts.append(f"<p class=\"muted\">no values on any night: {escape(', '.join(empty))}</p>")
    return "\n".join(parts)


def _spark(metric: str, values: list, runs: list[str]) -> str:
    """A 90x22 sparkline of one pair's metric across the nights (a failed night breaks the line), each point with
    its night and value as a tooltip; nothing when there are under 2 values."""
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return ""
    low, high = min(known), max(known)
    x = lambda i: 2 + 86 * i / max(len(values) - 1, 1)  # noqa: E731
    y = lambda v: 20 - 18 * ((v - low) / (high - low) if high != low else 0.5)  # noqa: E731
    out = ['<svg class="spark" width="90" height="22" viewBox="0 0 90 22" role="img">']
    for segment in _segments(values):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in segment)
        out.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{points}"/>')
    for i, v in enumerate(values):
        if v is not None:
            night = runs[i] if i < len(runs) else ""
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="1.5" fill="#1f77b4">'
                       f"<title>{escape(night_text(night))}: {escape(value(metric, v))}</title></circle>")
    return "".join(out) + "</svg>"


def _segments(values: list) -> list[list[tuple[int, float]]]:
    """Runs of consecutive known values (a failed night breaks the line)."""
    segments: list[list[tuple[int, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            segments.append([])
        else:
            segments[-1].append((i, v))
    return [s for s in segments if s]
