"""Nightly thresholds (nightly.yaml) and the comparison of one night's results with the previous night's.

A pair is one (recipe, target). A regression names the recipe, target, metric, before and after; a change is
worth reporting but not a failure (a recovery, a better validation status, a timing cache that moved).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import RecipeError
from pipeline.recipe import load_checked, schema
from pipeline.units import size_bytes

THRESHOLDS = ("engine_bytes_pct", "build_time_pct", "build_time_min_s", "max_error_budget")
# Worse statuses rank lower; a drop in rank is a regression, a rise a change.
VALIDATION_RANK = {"failed": 0, "error": 0, "not-run": 1, "skipped": 1, "passed": 2}


@dataclass(frozen=True)
class Config:
    engine_bytes_pct: float = 10.0  # engine size change, either way, in percent
    build_time_pct: float = 50.0  # build time increase, in percent ...
    build_time_min_s: float = 1.0  # ... and in seconds (small models' builds are noisy)
    max_error_budget: float = 0.25  # max-error growth allowed, as a fraction of the output's atol
    memory_per_job: int = 1 << 30  # bytes one parallel build is assumed to need, at least
    history: int = 30  # nights shown in the HTML charts

    def thresholds(self) -> dict:
        return {key: getattr(self, key) for key in THRESHOLDS}


def load_config(path: Path | None) -> Config:
    """Read and check nightly.yaml like a recipe (every problem at once, FILE:LINE:COL: key: message); None gives
    defaults."""
    if path is None:
        return Config()
    try:
        data, _, _ = load_checked(path, config_schema(), "nightly config")
    except RecipeError as error:
        error.hint = "see the Nightly section of README.md for the keys and their meaning"
        raise
    thresholds = data.get("thresholds") or {}
    memory = data.get("memory_per_job")
    return Config(**{k: float(v) for k, v in thresholds.items()},
                  memory_per_job=size_bytes(memory) if memory is not None else Config.memory_per_job,
                  history=data.get("history", Config.history))


def config_schema() -> dict:
    """nightly.yaml's JSON Schema; memory_per_job is a size as in recipes (the recipe schema's definition)."""
    number = {"type": "number", "minimum": 0}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "thresholds": {"type": "object", "additionalProperties": False,
                           "properties": dict.fromkeys(THRESHOLDS, number)},
            "memory_per_job": {**schema()["$defs"]["size"], "minimum": 1},
            "history": {"type": "integer", "minimum": 1},
        },
    }


# ---------------------------------------------------------------- comparison


def pair_key(record: dict) -> tuple[str, str]:
    return record["recipe"], record["target"]


def compare(previous: list[dict], current: list[dict], config: Config) -> tuple[list[dict], list[dict]]:
    """(regressions, changes) between two nights' pair records."""
    before = {pair_key(r): r for r in previous}
    regressions: list[dict] = []
    changes: list[dict] = []
    for record in current:
        old = before.get(pair_key(record))
        _timing_cache(record, old, changes)
        if record["status"] == "failed":
            if old is None or old["status"] != "failed":
                regressions.append(_item(record, "status", old["status"] if old else "absent", "failed",
                                         record.get("error", "").splitlines()[0] if record.get("error") else ""))
            continue
        if old is None:
            changes.append(_item(record, "pair", "absent", record["status"], "new (recipe, target) pair"))
            continue
        if old["status"] == "failed":
            changes.append(_item(record, "status", "failed", record["status"], "recovered"))
            continue
        regressions += _metrics(old, record, config, changes)
    gone = {pair_key(r) for r in current}
    changes += [_item(r, "pair", r["status"], "absent", "no longer built") for r in previous if pair_key(r) not in gone]
    return regressions, changes


def _item(record: dict, metric: str, before: Any, after: Any, detail: str = "") -> dict:
    return {"recipe": record["recipe"], "target": record["target"], "metric": metric,
            "before": before, "after": after, "detail": detail}


def _metrics(old: dict, new: dict, config: Config, changes: list[dict]) -> list[dict]:
    found = []
    status_old, status_new = _validation_status(old), _validation_status(new)
    if status_old != status_new:
        worse = VALIDATION_RANK.get(status_new, 1) < VALIDATION_RANK.get(status_old, 1)
        (found if worse else changes).append(_item(new, "validation", status_old, status_new))
    found += _max_error_growth(old, new, config)
    found += _max_error_growth(old, new, config, "accuracy_delta", "accuracy_limits")
    found += _engine_size(old, new, config)
    found += _build_time(old, new, config)
    return found


def _validation_status(record: dict) -> str:
    return (record.get("validation") or {}).get("status") or "not-run"


def _max_error_growth(old: dict, new: dict, config: Config, key: str = "max_errors",
                      limits: str = "tolerances") -> list[dict]:
    """Per output, growth of the max error beyond the budget (a fraction of the output's atol, else of the previous
    night's value). Also for the precision check's accuracy delta (key 'accuracy_delta', limits its max_abs)."""
    found = []
    errors_old = (old.get("validation") or {}).get(key) or {}
    errors_new = (new.get("validation") or {}).get(key) or {}
    tolerances = (new.get("validation") or {}).get(limits) or {}
    metric = "max_error" if key == "max_errors" else key
    for output, after in errors_new.items():
        before = errors_old.get(output)
        if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
            continue
        atol = tolerances.get(output)
        allowed = config.max_error_budget * atol if atol else config.max_error_budget * abs(before)
        if after - before > allowed:
            basis = (f"atol {atol:g}" if key == "max_errors" else f"max_abs {atol:g}") if atol else \
                f"previous {metric.replace('_', ' ')}"
            found.append(_item(new, f"{metric}[{output}]", before, after,
                               f"grew {after - before:.3g}, budget {config.max_error_budget:g} x {basis} "
                               f"= {allowed:.3g}"))
    return found


def _engine_size(old: dict, new: dict, config: Config) -> list[dict]:
    before, after = old.get("engine_bytes"), new.get("engine_bytes")
    if not before or after is None:
        return []
    pct = (after - before) / before * 100
    if abs(pct) <= config.engine_bytes_pct:
        return []
    return [_item(new, "engine_bytes", before, after, f"{pct:+.1f}%, threshold {config.engine_bytes_pct:g}%")]


def _build_time(old: dict, new: dict, config: Config) -> list[dict]:
    before, after = old.get("build_s"), new.get("build_s")
    if before is None or after is None:
        return []
    allowed = max(config.build_time_min_s, before * config.build_time_pct / 100)
    if after - before <= allowed:
        return []
    pct = f"{(after - before) / before * 100:+.0f}%" if before else "from 0"
    return [_item(new, "build_s", before, after,
                  f"{pct}, threshold {config.build_time_pct:g}% and {config.build_time_min_s:g}s")]


def _timing_cache(record: dict, old: dict | None, changes: list[dict]) -> None:
    cache = record.get("timing_cache")
    if not cache:
        return
    if cache.get("before") != cache.get("after"):
        changes.append(_item(record, "timing_cache", cache.get("before"), cache.get("after"),
                             f"this build changed {cache.get('path')}"))
    elif old and old.get("timing_cache") and old["timing_cache"].get("after") != cache.get("before"):
        changes.append(_item(record, "timing_cache", old["timing_cache"].get("after"), cache.get("before"),
                             f"{cache.get('path')} changed since the previous night"))
