"""A model through the object store and back, with `put`/`get` standing in for ray.put/ray.get."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.nightly import parcel
from pipeline.stages.parse import digests


class ObjectStore:
    """ray.put / ray.get in one process: values kept by reference number, puts counted."""

    def __init__(self) -> None:
        self.values: dict[int, object] = {}

    def put(self, value: object) -> int:
        self.values[len(self.values)] = value
        return len(self.values) - 1

    def get(self, ref: int) -> object:
        return self.values[ref]


@pytest.fixture
def model_with_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A model whose weights sit in an external-data file; chunks of 1000 bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.setattr(parcel, "CHUNK_BYTES", 1000)
    weights = numpy_helper.from_array(np.arange(1000, dtype=np.float32).reshape(10, 100), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 100])], [weights])
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(helper.make_model(graph), str(folder / "m.onnx"), save_as_external_data=True,
              location="m.weights", size_threshold=0)
    return digests(folder / "m.onnx")


def test_a_model_travels_in_chunks_and_is_fetched_once_per_node(model_with_data: dict, tmp_path: Path) -> None:
    objects = ObjectStore()
    sent = parcel.put_model(model_with_data, objects.put)
    assert [f.name for f in sent.files] == ["m.onnx", "m.weights"]
    assert len(sent.files[1].chunks) == 4  # 4000 bytes of weights in chunks of 1000
    assert sent.size == model_with_data["bytes"]
    path, fetched = parcel.materialize(sent, tmp_path / "cache", objects.get)
    assert fetched and path == tmp_path / "cache" / model_with_data["sha256"] / "m.onnx"
    for item in sent.files:
        assert hashlib.sha256((path.parent / item.name).read_bytes()).hexdigest() == item.sha256
    assert digests(path)["external_data"][0]["sha256"] == model_with_data["external_data"][0]["sha256"]
    again, fetched = parcel.materialize(sent, tmp_path / "cache", lambda ref: pytest.fail("fetched twice"))
    assert again == path and not fetched


def test_a_damaged_transfer_is_refused_and_not_cached(model_with_data: dict, tmp_path: Path) -> None:
    objects = ObjectStore()
    sent = parcel.put_model(model_with_data, objects.put)
    objects.values[sent.files[1].chunks[2]] = np.zeros(1000, dtype=np.uint8)
    with pytest.raises(PipelineError, match=r"the file m.weights arrived damaged"):
        parcel.materialize(sent, tmp_path / "cache", objects.get)
    assert not (tmp_path / "cache" / sent.sha256 / parcel.OK).exists()  # the next task fetches it again


def test_staged_files_go_back_as_mapped_arrays(tmp_path: Path) -> None:
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    staged.mkdir()
    dest.mkdir()
    (staged / "engine.plan").write_bytes(b"\x00engine" * 1000)
    (staged / "empty.log").write_bytes(b"")
    files = parcel.files_of(staged, ["engine.plan", "empty.log"])
    parcel.write_files(files, dest)
    assert (dest / "engine.plan").read_bytes() == b"\x00engine" * 1000 and (dest / "empty.log").read_bytes() == b""
    parcel.link_files(["engine.plan"], dest, staged / "..")
    assert (tmp_path / "engine.plan").stat().st_ino == (dest / "engine.plan").stat().st_ino
