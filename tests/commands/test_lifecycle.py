"""The lifecycle commands end to end through `trt-pipeline` (pipeline.cli.main): promote, channel, history,
export triton, gc, and the CHANNELS column of list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.store import Store
from tests._lifecycle import (
    SM86,
    SM89,
    SM120,
    TINY,
    build,
    copy_store,
    set_validation,
    write,
)

USER = {"TRT_PIPELINE_USER": "ana@ci"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Store:
    """tiny@1.0.0 really built for sm86 and sm89 (sm120 is left for a promotion to rebuild)."""
    root = tmp_path_factory.mktemp("cli")
    store = Store(root / "store")
    build(write(root / "tiny.yaml", TINY, models_dir / "tiny.onnx"), store, ("sm86", "sm89"))
    return store


@pytest.fixture
def store(built: Store, tmp_path: Path) -> Store:
    return copy_store(built, tmp_path / "store")


def cli(store: Store, *argv: str) -> int:
    return main([*argv, "--store", str(store.root)], environ=USER)


def test_promote_reuse_prints_the_decision_and_the_channel(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM89) == 0
    out, err = capsys.readouterr()
    path = store.root / "tiny" / "1.0.0" / SM89
    assert out == ("reuse: TensorRT-RTX engine built for compute capabilities 8.9 covers 8.9; same tensorrt-rtx 1.7.1\n"
                   f"candidate of {SM89} -> tiny@1.0.0+1 [{SM89}] {path}\n")
    assert err == ""


def test_promote_rebuild_json(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM86, "--to", SM120, "--reason", "new fleet", "--json",
               "-q") == 0
    result = json.loads(capsys.readouterr().out)
    new = store.root / "tiny" / "1.0.0+2" / SM120  # a rebuild is a new run: a new build number
    assert result == {
        "decision": "rebuild",
        "reason": "compute capability 8.6 -> 12.0: the engine is not valid there as it is; rebuilding from the same "
                  "recipe, model and settings with tensorrt-rtx 1.7.1",
        "source": {"ref": "tiny@1.0.0+1", "tag": SM86, "path": str(store.root / "tiny" / "1.0.0" / SM86)},
        "artifact": {"ref": "tiny@1.0.0+2", "tag": SM120, "path": str(new)},
        "tag": SM120, "channel": "candidate", "built": True, "waiver": None, "previous": None}
    assert json.loads((new / "manifest.json").read_text())["promoted_from"]["tag"] == SM86


def test_promote_onto_a_tag_that_has_the_same_build_says_reuse_once(store: Store,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """sm86 -> sm120 twice: the second finds the build of the same inputs and says so in one line, no rebuild
    progress, no '[skip] ... use --force' (promote has no --force), and records 'reuse'."""
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM86, "--to", SM120) == 0
    capsys.readouterr()
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM86, "--to", SM120, "--channel", "production",
               "--allow-unvalidated", "--reason", "fleet") == 0
    out, err = capsys.readouterr()
    path = store.root / "tiny" / "1.0.0+2" / SM120
    assert out == (f"reuse: {SM120} already has tiny@1.0.0+2 [{SM120}], built from the same inputs (same build key); "
                   f"not rebuilt\nproduction of {SM120} -> tiny@1.0.0+2 [{SM120}] {path}\n"
                   "waiver recorded: fleet\n")
    assert err == ""
    assert cli(store, "history", "tiny", "--json") == 0
    assert [e["decision"] for e in json.loads(capsys.readouterr().out)] == ["rebuild", "reuse"]


def test_promote_rebuild_reports_its_progress_on_stderr(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM86, "--to", SM120) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1] == f"candidate of {SM120} -> tiny@1.0.0+2 [{SM120}] (new build) " \
                                  f"{store.root / 'tiny' / '1.0.0+2' / SM120}"
    assert "[4/4] serialize sm120" in err


def test_a_refusal_is_one_line_and_exit_1(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM89, "--to", "sm90.rtx-1.7.1") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"error: cannot promote tiny@1.0.0+1 {SM89} to sm90.rtx-1.7.1: compute capability: tensorrt-rtx "
                   "1.7.1 here cannot build for sm90; it builds for sm75, sm80, sm86, sm89, sm120, sm121\n")


def test_the_production_gate_says_what_to_do(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM89, "--channel", "production") == 1
    assert capsys.readouterr().err == (
        f"error: cannot promote tiny@1.0.0+1 {SM89} to {SM89} production: its validation status is 'not-run' (no "
        f"validation has run on this artifact yet); production needs validation passed on {SM89}\n"
        "hint: validate it on a GPU of compute capability 8.9 first, or waive with --allow-unvalidated "
        "--reason \"...\"\n")
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM89, "--channel", "production", "--allow-unvalidated") == 1
    assert capsys.readouterr().err == ('error: --allow-unvalidated needs --reason "...": the waiver is recorded in '
                                       "the history\n")


def test_validated_and_waived_promotions_into_production(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    set_validation(store, store.resolve("tiny@1.0.0", SM89), "passed")
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM89, "--channel", "production") == 0
    assert "waiver" not in capsys.readouterr().out
    assert cli(store, "promote", "tiny@1.0.0", "--from", SM86, "--channel", "production", "--allow-unvalidated",
               "--reason", "hotfix, checked by hand") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "waiver recorded: hotfix, checked by hand"


def test_list_shows_channels(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    cli(store, "promote", "tiny@1.0.0", "--from", SM89)
    cli(store, "promote", "tiny@1.0.0", "--from", SM89, "--channel", "production", "--allow-unvalidated",
        "--reason", "r")
    capsys.readouterr()
    assert cli(store, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ARTIFACT", "TAG", "ENGINE", "VALIDATION", "CREATED", "CHANNELS"]
    assert lines[1].startswith(f"tiny@1.0.0+1  {SM86}") and not lines[1].endswith("production")
    assert lines[2].startswith(f"tiny@1.0.0+1  {SM89}") and lines[2].endswith("  candidate, production")
    assert cli(store, "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["tag"], r["channels"]) for r in rows] == [(SM86, []), (SM89, ["candidate", "production"])]


def test_channel_and_history_views(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    cli(store, "promote", "tiny@1.0.0", "--from", SM89, "--reason", "first candidate")
    cli(store, "promote", "tiny@1.0.0", "--from", SM89, "--channel", "production", "--allow-unvalidated",
        "--reason", "hotfix")
    capsys.readouterr()

    assert cli(store, "channel", "tiny", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["tag"], r["channel"], r["artifact"]["ref"], r["artifact"]["waiver"]) for r in rows] == [
        (SM89, "candidate", "tiny@1.0.0+1", None), (SM89, "production", "tiny@1.0.0+1", "hotfix")]
    assert cli(store, "channel", "tiny") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TAG", "CHANNEL", "ARTIFACT", "ENGINE", "TAG", "SINCE", "BY", "DECISION"]
    since = rows[1]["artifact"]["since"]
    assert lines[2].split() == [SM89, "production", "tiny@1.0.0+1", SM89, since, "ana@ci", "reuse", "(waiver)"]

    assert cli(store, "history", "tiny", "--json") == 0
    events = json.loads(capsys.readouterr().out)
    assert [(e["channel"], e["by"], e["why"], e["waiver"] and e["waiver"]["reason"]) for e in events] == [
        ("candidate", "ana@ci", "first candidate", None), ("production", "ana@ci", "hotfix", "hotfix")]
    assert cli(store, "history", "tiny") == 0
    assert capsys.readouterr().out.splitlines() == [
        (f"{events[0]['at']} ana@ci candidate@{SM89} <- tiny@1.0.0+1 [{SM89}] (reuse from tiny@1.0.0+1 [{SM89}]) "
         "why: first candidate"),
        (f"{events[1]['at']} ana@ci production@{SM89} <- tiny@1.0.0+1 [{SM89}] (reuse from tiny@1.0.0+1 [{SM89}]) "
         "[WAIVER: unvalidated] why: hotfix")]


def test_export_triton(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for tag in (SM86, SM89):
        cli(store, "promote", "tiny@1.0.0", "--from", tag, "--channel", "production", "--allow-unvalidated",
            "--reason", "r")
    capsys.readouterr()
    repo = tmp_path / "repo"
    assert cli(store, "export", "triton", "tiny", "--repo", str(repo)) == 0
    assert capsys.readouterr().out == (f"{repo / 'tiny'}/1: written\n"
                                       f"  {SM86:<22} model.sm86.plan\n  {SM89:<22} model.sm89.plan\n")
    assert cli(store, "export", "triton", "tiny", "--repo", str(repo), "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "model_dir": str(repo / "tiny"), "config": str(repo / "tiny" / "config.pbtxt"), "version": 1,
        "files": {SM86: "model.sm86.plan", SM89: "model.sm89.plan"}, "changed": False, "config_changed": False}
    assert cli(store, "export", "triton", "tiny", "--repo", str(repo), "--max-batch-size", "8") == 0  # new options
    assert capsys.readouterr().out.splitlines()[0] == (f"{repo / 'tiny'}/1: config.pbtxt updated; version unchanged "
                                                       "(it already holds these engines): reload the model in Triton")
    assert "max_batch_size: 8" in (repo / "tiny" / "config.pbtxt").read_text()
    assert cli(store, "export", "triton", "tiny", "--repo", str(repo), "--max-batch-size", "8") == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"{repo / 'tiny'}/1: unchanged (the newest version already "
                                                       "holds these engines)")
    assert cli(store, "export", "triton", "tiny", "--channel", "candidate", "--repo", str(repo)) == 1
    assert capsys.readouterr().err.startswith("error: no GPU tag of 'tiny' has a 'candidate' channel")


def test_export_triton_settings_and_refusals(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli(store, "promote", "tiny@1.0.0", "--from", "sm89", "--channel", "production", "--allow-unvalidated",
        "--reason", "r")
    capsys.readouterr()
    repo = tmp_path / "repo"
    assert cli(store, "export", "triton", "tiny", "--repo", str(repo), "--max-batch-size", "16",
               "--max-queue-delay-us", "100", "--instances", "2", "-q") == 0
    text = (repo / "tiny" / "config.pbtxt").read_text()
    assert "max_batch_size: 16\n" in text and "dims: [ 4 ]" in text
    assert "dynamic_batching { max_queue_delay_microseconds: 100 }\n" in text
    assert "instance_group [ { count: 2 kind: KIND_GPU } ]\n" in text
    capsys.readouterr()
    assert cli(store, "export", "triton", "tiny", "--repo", str(store.root / "tiny")) == 1
    assert capsys.readouterr().err == (f"error: --repo {store.root / 'tiny'} is inside the artifact store "
                                       f"{store.root} (or holds it); the store's directories are written only by "
                                       "the store: export to a directory outside it\n")
    with pytest.raises(SystemExit) as usage:
        cli(store, "export", "triton", "tiny", "--repo", str(repo), "--instances", "0")
    assert usage.value.code == 1
    assert "argument --instances: expected a whole number >= 1, got '0'" in capsys.readouterr().err


def test_gc_dry_run_and_json(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = store.resolve("tiny@1.0.0", SM89).manifest().recipe.path
    build(recipe, store, ("sm89",), force=True)
    cli(store, "promote", "tiny@1.0.0+1", "--from", SM89)
    capsys.readouterr()
    assert cli(store, "gc", "--keep", "0", "--dry-run") == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"would remove tiny@1.0.0+1 [{SM86}] {store.root / 'tiny' / '1.0.0' / SM86}",
        f"would remove tiny@1.0.0+2 [{SM89}] {store.root / 'tiny' / '1.0.0+2' / SM89}",
        f"kept   tiny@1.0.0+1 [{SM89}]: on channel candidate of {SM89}"]
    assert err == "would remove 2 build(s); kept 0 newest and 1 promoted\n"
    assert len(store.artifacts()) == 3
    assert cli(store, "gc", "--keep", "1", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "dry_run": False, "removed": [], "protected": [{"ref": "tiny@1.0.0+1", "tag": SM89,
                                                        "why": f"on channel candidate of {SM89}"}], "kept": 2}


def test_gc_keeps_three_newest_by_default(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = store.resolve("tiny@1.0.0", SM89).manifest().recipe.path
    for _ in range(3):
        build(recipe, store, ("sm89",), force=True)
    assert cli(store, "gc", "--dry-run") == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"would remove tiny@1.0.0+1 [{SM89}] {store.root / 'tiny' / '1.0.0' / SM89}"]
    assert err == "would remove 1 build(s); kept 4 newest and 0 promoted\n"
    with pytest.raises(SystemExit):  # the help names the default
        main(["gc", "--help"])
    assert "(default 3)" in capsys.readouterr().out


def test_to_takes_the_short_forms_from_takes(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(store, "promote", "tiny@1.0.0", "--from", "sm89", "--to", "sm86") == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"candidate of {SM86} -> tiny@1.0.0+1 [{SM86}]")
    assert cli(store, "promote", "tiny@1.0.0", "--from", "sm89", "--to", "sm86.rtx") == 0
    assert cli(store, "promote", "tiny@1.0.0", "--from", "sm89") == 0  # --to defaults to --from, short too
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"candidate of {SM89} -> tiny@1.0.0+1 [{SM89}]")
    assert cli(store, "promote", "tiny@1.0.0", "--from", "sm89", "--to", "sm86.trt") == 1
    assert capsys.readouterr().err.startswith(f"error: 'sm86.trt' is not a GPU tag, nor a short form of one that "
                                              f"completes from {SM89} (the build's tag is {SM89})")


@pytest.mark.parametrize("command", ["promote", "channel", "history", "export", "gc"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: trt-pipeline {command}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [("history", "nope"), ("channel", "nope"), ("gc", "nope", "--keep", "1"),
                                  ("history", "tiny2")])
def test_an_unknown_recipe_name_is_an_error(store: Store, capsys: pytest.CaptureFixture[str],
                                            argv: tuple[str, ...]) -> None:
    (store.root / "other").mkdir()
    assert cli(store, *argv) == 1
    out, err = capsys.readouterr()
    hint = "; did you mean 'tiny'?" if argv[1] == "tiny2" else ""
    assert (out, err) == ("", f"error: no recipe '{argv[1]}' in store {store.root}; recipes: other, tiny{hint}\n")


def test_promoting_a_build_with_a_damaged_manifest_is_one_line(store: Store,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    manifest = store.root / "tiny" / "1.0.0" / SM89 / "manifest.json"
    record = json.loads(manifest.read_text())
    del record["engine"]
    manifest.write_text(json.dumps(record))
    assert cli(store, "promote", "tiny@1.0.0+1", "--from", SM89) == 1
    assert capsys.readouterr() == ("", f"error: damaged manifest {manifest}: no field 'engine'\n")
    manifest.write_text(json.dumps(record)[:40])  # truncated
    assert cli(store, "promote", "tiny@1.0.0+1", "--from", SM89) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {manifest}: ") and err.count("\n") == 1
