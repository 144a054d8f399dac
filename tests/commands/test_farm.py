"""The farm's command-line options that need no cluster to check."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main


def test_a_bad_transport_in_the_environment_is_one_line_before_anything_connects(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "recipes").mkdir()
    code = main(["--store", str(tmp_path / "store"), "nightly", str(tmp_path / "recipes"), "--cluster",
                 "127.0.0.1:1"], environ={"TRT_PIPELINE_TRANSPORT": "nfs"})
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: $TRT_PIPELINE_TRANSPORT: expected one of auto, object-store, got 'nfs'",
        "hint: unset it, or pass --transport"]

