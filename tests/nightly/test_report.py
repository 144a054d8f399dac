"""The nightly HTML report (one self-contained, well-formed file) and the Markdown summary, from report records."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from pipeline.nightly import report as reports

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def fetches(name: str, value: str | None) -> bool:
    """An attribute that could load something: only references to an element of the page itself (a chart's
    markers and clip paths: #id, url(#id)) cannot."""
    if name in ("src", "href", "srcset", "data", "action", "xlink:href"):
        return not re.fullmatch(r"#[\w.:-]+", value or "")
    return re.search(r"url\((?!#)", value or "") is not None


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
            if fetches(name, value):
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
    # a figure per recipe (panels: build time, engine size, max error), a sparkline per pair and metric
    for recipe in ("tiny", "two"):
        assert f'<figure class="chart"><figcaption>{recipe}</figcaption><svg viewBox=' in text
    assert checker.tags.count("svg") == 2 + 2 * 3
    for label in ("build time", "engine size", "max abs error", "night (UTC, 2026)", "Nov 18", "Nov 20", "sm89"):
        assert f"{label}</text>" in text  # axis labels, dated x ticks and the legend, as text
    assert re.search(r">[\d.]+ KiB</text>", text) and re.search(r">[\d.]+ s</text>", text)  # ticks in units
    # a point's tooltip names pair, night and value, as people read them (in the chart and in the sparkline)
    assert "<title>tiny sm89, 2026-11-20 02:00:00 UTC: 2.0 KiB (2000 B)</title>" in text
    assert "<title>2026-11-19 02:00:00 UTC: 1.20s</title>" in text
    assert "<td>engine_bytes</td>" not in text and "engine_bytes</span>" in text
    assert "1000 B" in text and "2000 B" in text  # before and after, readable and exact


def test_failed_nights_break_the_line_instead_of_dropping_to_zero() -> None:
    nights = history()
    series = reports._series(nights, reports.METRICS["engine_bytes"][1])
    assert series[("two", "sm86")] == [5000, None, 5100]
    assert reports._segments(series[("two", "sm86")]) == [[(0, 5000)], [(2, 5100)]]


def test_a_skipped_pair_draws_no_sparkline_and_no_build_time_in_the_charts() -> None:
    nights = history()
    tonight = night("20261121T020000Z", [pair("tiny", "sm89", "skipped", reason="source key unchanged", build_s=1.1),
                                         pair("two", "sm86", engine_bytes=5100)])
    nights.append(tonight)
    text = reports.html(tonight, nights)
    tiny = text[text.index("<tr><td>tiny</td>"):text.index("</tr>", text.index("<tr><td>tiny</td>"))]
    assert "<svg" not in tiny and "<svg" in text[text.index("<tr><td>two</td>"):]
    series = reports._series(nights, reports.METRICS["build_s"][1])
    assert series[("tiny", "sm89")] == [1.0, 1.2, 1.1, None]  # the reused build's time is not tonight's
    assert reports._series(nights, reports.METRICS["engine_bytes"][1])[("tiny", "sm89")][-1] == 1000


def test_the_html_is_the_same_for_the_same_nights_and_its_ids_are_unique() -> None:
    nights = history()
    text = reports.html(nights[-1], nights)
    assert reports.html(nights[-1], nights) == text
    ids = re.findall(r' id="([^"]+)"', text)
    assert ids and len(ids) == len(set(ids))
    assert all(ref in ids for ref in re.findall(r'(?:href="|url\()#([^")]+)', text))


def test_a_recipe_without_any_value_is_named_instead_of_drawn() -> None:
    nights = [night("20261118T020000Z", [pair("tiny", "sm89"), pair("broken", "sm89", "failed", error="x")])]
    text = reports.html(nights[-1], nights)
    assert "<figcaption>tiny</figcaption>" in text and "<figcaption>broken</figcaption>" not in text
    assert '<p class="muted">no values on any night: broken</p>' in text


def test_only_references_within_the_page_pass_as_fetching_nothing() -> None:
    assert not fetches("xlink:href", "#c0-m1a2b") and not fetches("clip-path", "url(#c0-p3)")
    assert fetches("href", "x.css") and fetches("xlink:href", "http://example.org/#m")
    assert fetches("style", "background:url(x.png)") and fetches("style", "fill:url(#a) url(b.svg)")


def test_markdown_summary_for_a_ci_page() -> None:
    nights = history()
    text = reports.markdown(nights[-1])
    assert text.startswith("## ❌ Nightly 20261120T020000Z\n\n2 pairs: 2 built, 0 skipped (unchanged), 0 failed; "
                           "1 regression(s)")
    assert "| tiny | sm89 | engine_bytes | 1000 B | 2.0 KiB (2000 B) | +100.0%, threshold 10% |" in text
    assert "- two sm86 status: failed -> built recovered" in text
    failing = reports.markdown(nights[1])
    assert "| two | sm86 | network-flag: &lt;Reshape> \\| failed |" in failing  # first line only, escaped


HOSTILE = ["<script>alert(1)</script>", "<svg onload=alert(1)>", "a|b", "[x](javascript:alert(1))", "`x`", "*y*"]


def test_markdown_carries_no_raw_html_or_markup_from_names_paths_and_errors() -> None:
    """Target names, recipe names, artifact paths and errors are escaped as report.html escapes them: summary.md is
    appended to $GITHUB_STEP_SUMMARY, which renders HTML."""
    pairs = [pair(name, name, artifact=f"/models/{name}.onnx", recipe_file=f"/r/{name}.yaml") for name in HOSTILE]
    pairs.append(pair("tiny", "sm89", "failed", error="<img src=x onerror=alert(1)> | bad"))
    changes = [{"recipe": name, "target": "sm89", "metric": "status", "before": "failed", "after": "built",
                "detail": name} for name in HOSTILE]
    text = reports.markdown({**night("<b>20261120T020000Z</b>", pairs, changes=changes), "previous": "<i>x</i>"})
    assert not re.search(r"<[a-z/]", text)  # no tag at all
    for row in [line for line in text.splitlines() if line.startswith("| ")]:
        assert len(re.findall(r"(?<!\\)\|", row)) in (4, 9)  # failures: 3 cells; pairs: 8
    for raw in ("[x](", "`x`", "*y*"):
        assert raw not in text
    assert "\\[x\\](javascript:alert(1))" in text and "&lt;script>alert(1)&lt;/script>" in text


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


def test_markdown_rows_survive_every_line_break_and_names_make_no_autolinks() -> None:
    names = ["a\rb", "c\r\nd", "e\u2028f", "g\u2029h", "i\x85j", "see http://evil.example", "www.evil.example"]
    pairs = [pair(name, "sm89", "failed", error=f"{name} | broke") for name in names]
    text = reports.markdown(night("20261120T020000Z", pairs))
    assert not set(text) & set("\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # no line break but \n
    rows = [line for line in text.split("\n") if line.startswith("| ")]
    assert all(len(re.findall(r"(?<!\\)\|", row)) in (4, 9) for row in rows)
    assert sum("a b" in row for row in rows) >= 1 and sum("e f" in row for row in rows) >= 1
    assert "://" not in text and "www." not in text.lower()
    assert "http&#58;//evil.example" in text and "www&#46;evil.example" in text
