"""Nightly thresholds (nightly.yaml) and the night-to-night comparison, on plain records."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import RecipeError
from pipeline.nightly.regression import Config, compare, load_config


def record(status: str = "built", **values: object) -> dict:
    return {"recipe": "tiny", "target": "sm89", "status": status, "engine_bytes": 1000, "build_s": 10.0,
            "validation": {"status": "skipped", "max_errors": {}, "tolerances": {}}, **values}


def metrics(regressions: list[dict]) -> list[tuple]:
    return [(r["metric"], r["before"], r["after"]) for r in regressions]


def test_unchanged_nights_have_no_regressions() -> None:
    assert compare([record()], [record()], Config()) == ([], [])


def test_engine_size_change_either_way_beyond_the_threshold() -> None:
    regressions, _ = compare([record()], [record(engine_bytes=1101)], Config(engine_bytes_pct=10))
    assert metrics(regressions) == [("engine_bytes", 1000, 1101)]
    assert regressions[0]["detail"] == "+10.1%, threshold 10%"
    assert metrics(compare([record()], [record(engine_bytes=800)], Config())[0]) == [("engine_bytes", 1000, 800)]
    assert compare([record()], [record(engine_bytes=1100)], Config(engine_bytes_pct=10)) == ([], [])


def test_build_time_increase_beyond_percent_and_seconds() -> None:
    slower = [record(build_s=16.0)]
    assert metrics(compare([record()], slower, Config(build_time_pct=50))[0]) == [("build_s", 10.0, 16.0)]
    assert compare([record()], slower, Config(build_time_pct=50, build_time_min_s=7))[0] == []
    assert compare([record()], [record(build_s=4.0)], Config(build_time_pct=0, build_time_min_s=0))[0] == []
    zero = compare([record()], [record(build_s=10.001)], Config(build_time_pct=0, build_time_min_s=0))[0]
    assert metrics(zero) == [("build_s", 10.0, 10.001)]


def test_max_error_growth_beyond_the_tolerance_budget() -> None:
    def errors(y: float) -> dict:
        return {"status": "passed", "max_errors": {"y": y}, "tolerances": {"y": 1e-3}}

    before = [record(validation=errors(1e-4))]
    config = Config(max_error_budget=0.25)  # may grow by 0.25 x atol = 2.5e-4
    assert compare(before, [record(validation=errors(3.4e-4))], config)[0] == []
    (regression,) = compare(before, [record(validation=errors(3.6e-4))], config)[0]
    assert (regression["metric"], regression["before"], regression["after"]) == ("max_error[y]", 1e-4, 3.6e-4)
    assert regression["detail"] == "grew 0.00026, budget 0.25 x atol 0.001 = 0.00025"


def test_accuracy_delta_tracked_across_nights_like_max_error() -> None:
    """A reduced-precision engine's accuracy delta (precision check: max abs error against FP32) may grow by the
    budget times its max_abs limit, or without one, times the previous night's delta."""
    def delta(value: float, limit: float | None = None) -> dict:
        return {"status": "skipped", "max_errors": {}, "accuracy_delta": {"output": value},
                "accuracy_limits": {"output": limit}}

    config = Config(max_error_budget=0.25)
    assert compare([record(validation=delta(0.12))], [record(validation=delta(0.149))], config)[0] == []
    (regression,) = compare([record(validation=delta(0.12))], [record(validation=delta(0.16))], config)[0]
    assert metrics([regression]) == [("accuracy_delta[output]", 0.12, 0.16)]
    assert regression["detail"] == "grew 0.04, budget 0.25 x previous accuracy delta = 0.03"
    (limited,) = compare([record(validation=delta(0.1, 0.1))], [record(validation=delta(0.13, 0.1))], config)[0]
    assert limited["detail"] == "grew 0.03, budget 0.25 x max_abs 0.1 = 0.025"


def test_validation_getting_worse_is_a_regression_and_better_a_change() -> None:
    passed, failed = ({"status": s, "max_errors": {}} for s in ("passed", "failed"))
    regressions, changes = compare([record(validation=passed)], [record(validation=failed)], Config())
    assert metrics(regressions) == [("validation", "passed", "failed")] and changes == []
    regressions, changes = compare([record(validation=failed)], [record(validation=passed)], Config())
    assert regressions == [] and metrics(changes) == [("validation", "failed", "passed")]


def test_new_failures_regress_persistent_ones_do_not_and_recoveries_are_changes() -> None:
    broken = record("failed", error="serialize: no engine\nmore", engine_bytes=None, build_s=None)
    (regression,) = compare([record()], [broken], Config())[0]
    assert (regression["metric"], regression["before"], regression["after"], regression["detail"]) == \
           ("status", "built", "failed", "serialize: no engine")
    assert compare([broken], [broken], Config()) == ([], [])
    assert metrics(compare([broken], [record()], Config())[1]) == [("status", "failed", "built")]


def test_a_timing_cache_changed_by_the_build_or_since_last_night_is_reported() -> None:
    cache = lambda before, after: {"path": "/c/t.cache", "before": before, "after": after}  # noqa: E731
    _, changes = compare([record(timing_cache=cache("a", "a"))], [record(timing_cache=cache("a", "b"))], Config())
    assert [(c["metric"], c["before"], c["after"], c["detail"]) for c in changes] == \
           [("timing_cache", "a", "b", "this build changed /c/t.cache")]
    _, changes = compare([record(timing_cache=cache("a", "a"))], [record(timing_cache=cache("c", "c"))], Config())
    assert changes[0]["detail"] == "/c/t.cache changed since the previous night"


def test_config_defaults_and_values(tmp_path: Path) -> None:
    assert load_config(None) == Config()
    path = tmp_path / "nightly.yaml"
    path.write_text("thresholds: {engine_bytes_pct: 5, build_time_min_s: 0}\nmemory_per_job: 512MiB\nhistory: 7\n")
    assert load_config(path) == Config(engine_bytes_pct=5, build_time_min_s=0, memory_per_job=512 << 20, history=7)


def test_config_problems_all_at_once_with_line_and_column_worded_like_recipe_errors(tmp_path: Path) -> None:
    path = tmp_path / "nightly.yaml"
    path.write_text("thresholds:\n  engine_bytes_pct: -1\n  build_tme_pct: 5\n  max_error_budget: lots\n"
                    "memory_per_job: lots\nhistory: 0\n")
    with pytest.raises(RecipeError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}:2:21: thresholds.engine_bytes_pct: expected a number >= 0, got -1",
        f"{path}:3:3: thresholds.build_tme_pct: unknown key (did you mean 'build_time_pct'?); expected one of "
        "build_time_min_s, build_time_pct, engine_bytes_pct, max_error_budget",
        f"{path}:4:21: thresholds.max_error_budget: expected a number, got 'lots'",
        f"{path}:5:17: memory_per_job: expected a size like '1GiB', '512MiB' or a number of bytes, got 'lots'",
        f"{path}:6:10: history: expected a number >= 1, got 0",
    ]
    assert caught.value.hint == "see the Nightly section of README.md for the keys and their meaning"


def test_config_yaml_errors_and_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "nightly.yaml"
    path.write_text("# all defaults\n")
    assert load_config(path) == Config()
    path.write_text("thresholds: {engine_bytes_pct: 5\nhistory: 3\n")
    with pytest.raises(RecipeError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith(f"{path}:2:8: invalid YAML: ")
    path.write_text("- 1\n")
    with pytest.raises(RecipeError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}:1:1: (top): expected a mapping with thresholds, memory_per_job, history"]
