"""The nightly HTML report (one self-contained, well-formed file) and the Markdown summary, from report records."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from pipeline.nightly import report as reports

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SVG_LEAVES = {"polyline", "circle", "line", "path", "rect"}  # written self-closed: <circle .../> or with a <title>


class Checker(HTMLParser):
    """Every element closed in order; no attribute that could fetch anything."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.fetching: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action", "xlink:href") or "url(" in (value or ""):
                self.fetching.append(f"<{tag} {name}={value}>")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def assert_self_contained(text: str) -> Checker:
    """Well-formed, one document, nothing loaded from anywhere (no URLs, scripts, links, imports)."""
    assert text.startswith("<!DOCTYPE html>")
    checker = Checker()
    checker.feed(text)
    checker.close()
    assert checker.stack == [], f"unclosed: {checker.stack}"
    assert checker.fetching == []
    assert not {"script", "link", "iframe", "img", "object"} & set(checker.tags)
    assert not re.search(r"https?://|@import|//[a-z0-9.-]+\.[a-z]{2,}/", text)
    return checker


def pair(recipe: str, target: str, status: str = "built", **values: object) -> dict:
    return {"recipe": recipe, "target": target, "status": status, "reason": None, "artifact": f"{recipe}@1.0.0",
            "engine_bytes": 1000, "build_s": 1.0, "validation": {"status": "passed", "max_errors": {"y": 1e-4}},
            "recipe_file": f"/r/{recipe}.yaml", "log": f"/s/{recipe}.{target}.log", **values}


def night(run: str, pairs: list[dict], regressions: list[dict] = (), changes: list[dict] = ()) -> dict:
    failed = sum(p["status"] == "failed" for p in pairs)
    return {"run": run, "started_at": "2026-11-20T02:00:00Z", "duration_s": 12.5, "recipes_dir": "recipes",
            "store": "artifacts", "workers": 2, "jobs": 2, "force": False, "previous": None,
            "config": {"engine_bytes_pct": 10, "file": None},
            "summary": {"pairs": len(pairs), "built": len(pairs) - failed, "skipped": 0, "failed": failed,
                        "validation_failed": 0, "regressions": len(regressions), "ok": not failed and not regressions},
            "pairs": pairs, "regressions": list(regressions), "changes": list(changes)}


def history() -> list[dict]:
    regression = {"recipe": "tiny", "target": "sm89", "metric": "engine_bytes", "before": 1000, "after": 2000,
                  "detail": "+100.0%, threshold 10%"}
    return [
        night("20261118T020000Z", [pair("tiny", "sm89", build_s=1.0), pair("two", "sm86", engine_bytes=5000)]),
        night("20261119T020000Z", [pair("tiny", "sm89", build_s=1.2),
                                   pair("two", "sm86", "failed", error="network-flag: <Reshape> | failed\nmore")]),
        night("20261120T020000Z", [pair("tiny", "sm89", engine_bytes=2000, build_s=1.1,
                                        validation={"status": "passed", "max_errors": {"y": 3e-4}}),
                                   pair("two", "sm86", engine_bytes=5100)], [regression],
              [{"recipe": "two", "target": "sm86", "metric": "status", "before": "failed", "after": "built",
                "detail": "recovered"}]),
    ]


def test_html_is_one_well_formed_file_that_fetches_nothing() -> None:
    nights = history()
    text = reports.html(nights[1], nights)
    checker = assert_self_contained(text)
    assert "&lt;Reshape&gt; | failed" in text and "<Reshape>" not in text  # error text is escaped
    assert checker.tags.count("table") == 2  # failures and pairs (no regressions that night)
    assert "<h2>Regressions</h2>\n<p class=\"ok\">none</p>" in text


def test_html_has_the_table_and_charts_across_the_nights() -> None:
    nights = history()
    text = reports.html(nights[-1], nights)
    checker = assert_self_contained(text)
    assert "Across 3 recorded night(s)" in text
    for title in ("build time (s)", "engine size (bytes)", "max error"):
        assert f"<h3>{title}</h3><svg" in text
    # one overview chart per metric, and a sparkline per pair and metric (each pair has 2 or 3 values of each)
    assert checker.tags.count("svg") == 3 + 2 * 3
    assert "tiny sm89 20261120T020000Z: 2000" in text  # a point's tooltip names pair, night and value
    assert "<td>engine_bytes</td>" not in text and "engine_bytes</span>" in text
    assert "1000 B" in text and "2000 B" in text  # before and after, readable and exact


def test_failed_nights_break_the_line_instead_of_dropping_to_zero() -> None:
    nights = history()
    series = reports._series(nights, reports.METRICS["engine_bytes"][1])
    assert series[("two", "sm86")] == [5000, None, 5100]
    assert reports._segments(series[("two", "sm86")]) == [[(0, 5000)], [(2, 5100)]]


def test_markdown_summary_for_a_ci_page() -> None:
    nights = history()
    text = reports.markdown(nights[-1])
    assert text.startswith("## ❌ Nightly 20261120T020000Z\n\n2 pairs: 2 built, 0 skipped (unchanged), 0 failed; "
                           "1 regression(s)")
    assert "| tiny | sm89 | engine_bytes | 1000 B | 2.0 KiB (2000 B) | +100.0%, threshold 10% |" in text
    assert "- two sm86 status: failed -> built recovered" in text
    failing = reports.markdown(nights[1])
    assert "| two | sm86 | network-flag: <Reshape> \\| failed |" in failing  # first line only, pipes escaped


def test_write_puts_both_files_in_the_night(tmp_path: Path) -> None:
    nights = history()
    reports.write(tmp_path, nights[-1], nights)
    assert_self_contained((tmp_path / reports.HTML).read_text())
    assert (tmp_path / reports.MARKDOWN).read_text() == reports.markdown(nights[-1])


def test_a_skipped_pair_shows_no_build_time_of_its_own() -> None:
    built = reports.pair_row(pair("tiny", "sm89", build_s=1.25))
    skipped = reports.pair_row(pair("tiny", "sm89", "skipped", reason="source key unchanged", build_s=1.25))
    assert (built[2], built[4]) == ("built", "1.25s")
    assert (skipped[2], skipped[4], skipped[7]) == ("skipped (source key unchanged)", "-", "tiny@1.0.0")
