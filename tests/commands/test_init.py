"""The command table: every command's module and help, modules loaded only for the command that runs."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import cli, commands

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", commands.MODULES)
def test_each_module_registers_exactly_its_table_rows_in_order(name: str) -> None:
    registered: list[str] = []

    def command(listed: str, func: Callable, description: str) -> argparse.ArgumentParser:
        registered.append(listed)
        assert callable(func) and description.strip()
        return argparse.ArgumentParser()

    commands.module(name).register(command)
    assert registered == [c for c, (owner, _) in commands.COMMANDS.items() if owner == name]


def test_modules_for_a_command_line() -> None:
    assert commands.modules_for(["--store", "s", "list", "--json"]) == ["core"]
    assert commands.modules_for(["export", "triton", "r"]) == ["lifecycle"]
    everything = ["core", "model", "lifecycle", "nightly", "validation", "farm"]
    assert list(commands.MODULES) == everything
    assert commands.modules_for(["--help"]) == everything
    assert commands.modules_for(["biuld"]) == everything  # a typo: argparse lists every command


def _imported_after(argv: list[str], tmp_path: Path) -> set[str]:
    code = ("import sys\nfrom pipeline import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.splitlines()[-1].split())


def test_a_command_imports_only_its_own_module(tmp_path: Path) -> None:
    loaded = _imported_after(["--store", str(tmp_path / "store"), "list"], tmp_path)
    assert "pipeline.commands.core" in loaded
    # the nightly's and the farm's modules (only their tiny handover vocabulary is shared, for --transport)
    assert not {m for m in loaded if m.startswith(("pipeline.nightly.", "pipeline.commands.farm", "ray"))} - {
        "pipeline.nightly.handover"}
    assert "pipeline.commands.lifecycle" not in loaded and "pipeline.lifecycle.triton" not in loaded


def test_top_level_help_lists_every_command_without_importing_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name, (_, help_) in commands.COMMANDS.items():
        assert f"    {name} " in out and help_.split()[0] in out


def test_a_command_s_help_lists_the_others_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["biuld"])
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert "invalid choice: 'biuld'" in err and "'worker'" in err and "'nightly'" in err


def test_completion_knows_every_command_s_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--print-completion", "bash"])
    script = capsys.readouterr().out
    for option in ("--max-batch-size", "--unschedulable-after", "--repair", "--num-cpus"):
        assert option in script
