"""cache: the model record's hashes, and the weights copied while they are hashed (WeightCopies)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from models.make_models import write_matmul_chain
from pipeline import recipe as recipes
from pipeline.build import cache
from pipeline.build.cache import WeightCopies, model_record
from pipeline.digest import file_sha256
from pipeline.store import RACY_FINE_S, Store

LOG = logging.getLogger("x")
STAGES = {
    "with": "  - parse: {}\n  - graph-cleanup: {}\n",
    "without": "  - parse: {}\n",
}


def chain(folder: Path) -> tuple[Path, Path]:
    """A matmul chain with 4 MiB of weights in external data: (model, its data file)."""
    model = folder / "chain.onnx"
    folder.mkdir()
    write_matmul_chain(model, 512, 4)
    time.sleep(RACY_FINE_S)  # out of the hash memo's racy window: a second look finds the file remembered
    return model, model.with_name("chain.onnx.data")


def recipe(write_recipe: Callable[..., Path], model: Path, cleanup: str = "with") -> recipes.Recipe:
    return recipes.load(write_recipe(
        f"name: c\nversion: 1.0.0\nmodel: {{path: {model}}}\ntargets: [sm89]\nstages:\n{STAGES[cleanup]}"
        "  - network-flag: {}\n  - memory-pool: {}\n  - serialize: {profiles: [{x: {min: [1, 512], opt: [1, 512], "
        "max: [1, 512]}}]}\n"))


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights of more than 1 MiB are left on disk by parse, as above 2 GiB (protobuf's limit)."""
    monkeypatch.setattr(cache, "PROTO_LIMIT", 1 << 20)


def test_weights_left_on_disk_are_copied_while_they_are_hashed(write_recipe: Callable[..., Path], store: Store,
                                                                tmp_path: Path, small_limit: None) -> None:
    model, data = chain(tmp_path / "m")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    copies = WeightCopies(scratch)
    record = model_record(recipe(write_recipe, model), store, LOG, copies=copies)
    assert record["external_data"] == [{"path": str(data), "sha256": file_sha256(data)}]
    assert copies.found == {str(data): scratch / "weights-copy.0"}
    assert copies.found[str(data)].read_bytes() == data.read_bytes()

    again = WeightCopies(scratch / "again")  # the memo knows the file now: nothing is read, nothing copied
    assert model_record(recipe(write_recipe, model), store, LOG, copies=again) == record
    assert again.found == {}


@pytest.mark.parametrize("case", ["small", "no cleanup"])
def test_weights_parse_loads_are_only_hashed(write_recipe: Callable[..., Path], store: Store, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """No copy when parse reads the weights into memory (less than protobuf's limit) or no graph-cleanup would
    put them beside the cleaned model."""
    if case == "no cleanup":
        monkeypatch.setattr(cache, "PROTO_LIMIT", 1 << 20)
    model, data = chain(tmp_path / "m")
    copies = WeightCopies(tmp_path)
    record = model_record(recipe(write_recipe, model, "without" if case == "no cleanup" else "with"), store, LOG,
                          copies=copies)
    assert record["external_data"] == [{"path": str(data), "sha256": file_sha256(data)}]
    assert copies.found == {} and not list(tmp_path.glob("weights-copy.*"))


def test_a_file_that_changes_while_it_is_hashed_is_not_kept(write_recipe: Callable[..., Path], store: Store,
                                                             tmp_path: Path, small_limit: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy and the hash read the file side by side: if it changed meanwhile, they may not describe the same
    bytes, so the copy is dropped (graph-cleanup copies the file itself)."""
    model, data = chain(tmp_path / "m")

    def rewritten(path: Path) -> str:
        with open(path, "r+b") as handle:
            handle.write(b"\x01\x02\x03\x04")  # another writer, in the middle of the read
        return file_sha256(path)

    monkeypatch.setattr(cache, "file_sha256", rewritten)
    copies = WeightCopies(tmp_path)
    model_record(recipe(write_recipe, model), store, LOG, copies=copies)
    assert copies.found == {} and not list(tmp_path.glob("weights-copy.*"))


def test_a_file_hashed_again_keeps_its_copy_while_it_is_unchanged(write_recipe: Callable[..., Path], store: Store,
                                                                  tmp_path: Path, small_limit: None) -> None:
    """A file the memo does not remember yet (changed moments ago) is hashed once per look: it is copied once,
    the copy kept while the file is as it was, dropped when it changed; other files' copies get names of their own."""
    model, data = chain(tmp_path / "m")
    other = data.with_name("other.data")
    other.write_bytes(b"\x07" * 4096)
    recipe_ = recipe(write_recipe, model)
    copies = WeightCopies(tmp_path)
    sha = copies.hash(recipe_, data)
    assert copies.hash(recipe_, data) == sha and list(copies.found) == [str(data)]
    first = copies.found[str(data)]
    with open(data, "r+b") as handle:
        handle.write(b"\x01")
    assert copies.hash(recipe_, data) == file_sha256(data) != sha
    assert copies.found == {} and not first.exists()
    copies.hash(recipe_, other)
    copies.hash(recipe_, data)
    assert len(set(copies.found.values())) == 2
    assert copies.found[str(data)].read_bytes() == data.read_bytes()
    assert copies.found[str(other)].read_bytes() == other.read_bytes()
