"""The checks behind handing files over by path (no Ray needed: the node's and the driver's halves run here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.digest import file_sha256
from pipeline.errors import PipelineError
from pipeline.nightly import handover
from pipeline.store import Store


@pytest.fixture
def box(tmp_path: Path) -> tuple[handover.Handover, Path]:
    with Store(tmp_path / "store").staging("handover") as folder:
        made = handover.make(folder)
        found = handover.box(made, "123-")
        assert found is not None and found.parent == folder
        yield made, found


def test_a_node_uses_the_handover_directory_only_with_the_drivers_token(box: tuple) -> None:
    made, _ = box
    assert handover.visible(made)
    assert not handover.visible(handover.Handover(made.path, "f" * 32))  # the path exists, another token
    assert not handover.visible(handover.Handover(made.path + "-gone", made.token))
    assert not handover.visible(None)


def test_a_model_is_used_in_place_only_while_it_is_the_drivers_file(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"weights" * 100)
    stamp = handover.stamp(model, file_sha256(model))
    assert handover.in_place((stamp,), seen=True) and handover.in_place((stamp,), seen=False)  # the latter: sha256
    assert not handover.in_place((), seen=True)
    # another file at the same path with the same size and mtime: only the sha256 tells, and it says no
    os.rename(model, tmp_path / "old")
    model.write_bytes(b"WEIGHTS" * 100)
    os.utime(model, ns=(stamp.mtime_ns, stamp.mtime_ns))
    assert not handover.in_place((stamp,), seen=True)
    # the same bytes in another file (another inode, as a copy on another machine has): its sha256 decides
    model.write_bytes(b"weights" * 100)
    os.utime(model, ns=(stamp.mtime_ns, stamp.mtime_ns))
    assert handover.in_place((stamp,), seen=True)
    os.utime(model, ns=(stamp.mtime_ns + 1, stamp.mtime_ns + 1))  # touched since the driver looked
    assert not handover.in_place((stamp,), seen=True)
    # the driver's own file rewritten in place with its size and mtime put back: the ctime tells, then the sha256
    os.rename(tmp_path / "old", model)
    stamp = handover.stamp(model, file_sha256(model))
    with open(model, "r+b") as handle:
        handle.write(b"W")
    os.utime(model, ns=(stamp.mtime_ns, stamp.mtime_ns))
    assert (model.stat().st_ino, model.stat().st_size) == (stamp.inode, stamp.size)
    assert not handover.in_place((stamp,), seen=True)
    model.unlink()
    assert not handover.in_place((stamp,), seen=True)


def test_files_are_handed_over_and_received_with_renames_and_checked(box: tuple, tmp_path: Path) -> None:
    made, found = box
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "engine.plan").write_bytes(b"e" * 1000)
    (staged / "build.log").write_bytes(b"log\n")
    inode = (staged / "engine.plan").stat().st_ino
    handed = handover.hand_over(staged, ["engine.plan", "build.log"], found / "sm89", {"engine.plan": "known"})
    assert handed == {"engine.plan": [1000, "known"], "build.log": [4, file_sha256(found / "sm89" / "build.log")]}
    assert not any(staged.iterdir())
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(PipelineError, match="has 1000 bytes; the node wrote 999"):
        handover.receive(made, str(found / "sm89"), {"engine.plan": [999, "known"]}, dest)
    with pytest.raises(PipelineError, match="a node handed over a file named '../x'"):
        handover.receive(made, str(found / "sm89"), {"../x": [1, "x"]}, dest)
    with pytest.raises(PipelineError, match="outside the handover directory"):
        handover.receive(made, str(tmp_path), {"engine.plan": [1000, "known"]}, dest)
    assert handover.receive(made, str(found / "sm89"), handed, dest) == 1004
    assert (dest / "engine.plan").stat().st_ino == inode  # renamed all the way: never copied
    handover.remove(made, str(found))
    assert not found.exists() and Path(made.path).is_dir()
