"""pipeline.lifecycle.diff and `trt-pipeline diff` / `show` of every tag, on real builds."""

from __future__ import annotations

import json

import pytest

from pipeline import cli
from pipeline.lifecycle.diff import causes, changes, previous, why_built
from pipeline.store import Store
from tests.build.test_runner import RECIPE, build_with


def test_a_changed_workspace_is_named_with_old_and_new(write_recipe, store: Store) -> None:
    (first,) = build_with(write_recipe(RECIPE), store, targets=("sm89",))
    (second,) = build_with(write_recipe(RECIPE.replace("workspace: 64MiB", "workspace: 128MiB"), "b.yaml"), store,
                           targets=("sm89",))
    found = {c.path: (c.old, c.new) for c in changes(first.artifact.manifest(), second.artifact.manifest())}
    assert found["config.memory_pools.workspace"] == (64 << 20, 128 << 20)
    assert "build.created_at" not in found and "build.number" not in found  # incidental, unless asked
    everything = changes(first.artifact.manifest(), second.artifact.manifest(), everything=True)
    assert "build.number" in {c.path for c in everything}
    assert changes(first.artifact.manifest(), first.artifact.manifest()) == []


def test_diff_and_show_through_the_cli(write_recipe, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    build_with(write_recipe(RECIPE), store)  # sm86 and sm89
    build_with(write_recipe(RECIPE.replace("workspace: 64MiB", "workspace: 128MiB"), "b.yaml"), store)
    argv = ["--store", str(store.root)]
    capsys.readouterr()
    assert cli.main([*argv, "diff", "tiny@1.0.0+1", "tiny@1.0.0+2", "--tag", "sm89"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny@1.0.0+1 [sm89.rtx-") and out[0].endswith(" change(s)")
    assert "  config.memory_pools.workspace: 67108864 -> 134217728" in out
    assert cli.main([*argv, "diff", "tiny@1.0.0+1", "tiny@1.0.0+1", "--tag", "sm86"]) == 0
    assert cli.main([*argv, "--json", "show", "tiny@1.0.0+1"]) == 0  # both tags, no --tag needed
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after diff's line
    assert sorted(m["target"]["name"] for m in shown) == ["sm86", "sm89"]
    assert cli.main([*argv, "show", "tiny@1.0.0+1"]) == 0
    text = capsys.readouterr().out
    assert text.count("artifact    tiny@1.0.0+1 [") == 2 and "profile     0: x min [1, 4]" in text


def test_why_a_build_was_made_names_what_changed_since_the_previous_build_of_its_target(write_recipe,
                                                                                       store: Store) -> None:
    (first,) = build_with(write_recipe(RECIPE), store, targets=("sm89",))
    assert why_built(store, first.artifact) == ("first build for sm89", [])
    (other,) = build_with(write_recipe(RECIPE), store, targets=("sm86",))  # another target: not a previous build
    assert why_built(store, other.artifact) == ("first build for sm86", [])
    (second,) = build_with(write_recipe(RECIPE.replace("workspace: 64MiB", "workspace: 128MiB")), store,
                           targets=("sm89",))
    reason, found = why_built(store, second.artifact)
    assert previous(store, second.artifact) == first.artifact
    assert reason == (f"since tiny@1.0.0+1 [{first.artifact.tag}]: config.memory_pools.workspace: 67108864 -> "
                      "134217728")
    assert [c.to_json() for c in found] == [{"path": "config.memory_pools.workspace", "old": 64 << 20,
                                             "new": 128 << 20}]
    (forced,) = build_with(write_recipe(RECIPE.replace("workspace: 64MiB", "workspace: 128MiB")), store,
                           targets=("sm89",), force=True)
    assert why_built(store, forced.artifact) == (f"nothing changed since tiny@1.0.0+3 [{first.artifact.tag}] "
                                                 "(forced)", [])


def test_causes_leave_out_what_the_build_made(write_recipe, store: Store) -> None:
    (first,) = build_with(write_recipe(RECIPE), store, targets=("sm89",))
    (second,) = build_with(write_recipe(RECIPE.replace("max: [64, 4]", "max: [128, 4]")), store, targets=("sm89",))
    everything = {c.path for c in changes(first.artifact.manifest(), second.artifact.manifest())}
    assert {"engine.sha256", "build.key", "recipe.sha256"} <= everything  # effects and the recipe's bytes
    assert [c.path for c in causes(first.artifact.manifest(), second.artifact.manifest())] == [
        "config.profiles[0].x.max[0]"]


def test_validate_settings_are_a_difference_but_never_a_cause(write_recipe, store: Store) -> None:
    (first,) = build_with(write_recipe(RECIPE + "validate: {atol: 0.01}\n"), store, targets=("sm89",))
    changed = RECIPE.replace("workspace: 64MiB", "workspace: 128MiB") + "validate: {atol: 0.5}\n"
    (second,) = build_with(write_recipe(changed), store, targets=("sm89",))
    a, b = first.artifact.manifest(), second.artifact.manifest()
    assert "validate.atol" in {c.path for c in changes(a, b)}  # `diff` shows it
    assert [c.path for c in causes(a, b)] == ["config.memory_pools.workspace"]
    assert why_built(store, second.artifact)[0] == (f"since tiny@1.0.0+1 [{first.artifact.tag}]: "
                                                    "config.memory_pools.workspace: 67108864 -> 134217728")
