"""files: durable writes; the staged file, hashed as written, and O_DIRECT writes past the page cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.files import BLOCK, Direct, staged_file

# Pieces as TensorRT's stream writer might hand them over: empty, smaller than a block, across block edges, big.
PIECES = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3, 5 * BLOCK + 7, 1 << 20, (8 << 20) + 3]


def pieces() -> list[bytes]:
    return [os.urandom(size) for size in PIECES]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page cache"])
def test_a_staged_file_holds_every_piece_and_their_hash(tmp_path: Path, direct: bool) -> None:
    data = pieces()
    path = tmp_path / "engine.plan"
    with staged_file(path, direct=direct) as staged:
        for piece in data:
            staged.write(piece)
        assert not path.exists()  # only once the block ends
    whole = b"".join(data)
    assert path.read_bytes() == whole
    assert (staged.size, staged.pieces, staged.sha256) == (len(whole), len(data), hashlib.sha256(whole).hexdigest())
    assert [p.name for p in tmp_path.iterdir()] == ["engine.plan"]


@pytest.mark.parametrize("tail", [0, 1, BLOCK - 1])
def test_direct_writes_whole_blocks_and_truncates_the_last(tmp_path: Path, tail: int) -> None:
    """Through a file really opened with O_DIRECT (which refuses unaligned writes with EINVAL): the last partial
    block is padded, then cut back to the file's size."""
    path = tmp_path / "direct"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        direct = Direct(fd)
        data = os.urandom(3 * BLOCK + tail)
        direct.write(data[:10])
        direct.write(data[10:])
        direct.finish()
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_a_file_system_without_o_direct_gets_ordinary_writes(tmp_path: Path) -> None:
    """Direct on a descriptor the kernel refuses O_DIRECT writes for (here: an unaligned one, the same EINVAL a
    file system without O_DIRECT gives): the flag is dropped and the bytes written as usual."""
    path = tmp_path / "plain"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        os.lseek(fd, 1, os.SEEK_SET)  # an unaligned offset: every O_DIRECT write fails with EINVAL
        direct = Direct(fd)
        direct.write(b"x" * (BLOCK + 5))
        direct.finish()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0" + b"x" * (BLOCK + 5)
