"""Calibration data for the precision stage: one array per model input, from an .npz file, a directory of
`INPUT.npy` files, or seeded random numbers. Checked against the model's inputs before any work (headers only),
then fed to ONNX Runtime in batches.

Axis 0 of every array is the input's first (batch) dimension and counts the samples. They are fed in batches of
that dimension's size when it is static, else one sample at a time. Every other dimension must fit the input: equal
to a static dimension, within the optimization profile's min..max for a dynamic one.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pipeline.digest import file_sha256, json_sha256

Header = tuple[tuple[int, ...], str]  # an array's shape and dtype name
Inputs = Mapping[str, dict]  # input name -> {"dtype": "float32", "shape": [dims, 'batch' for a symbolic one]}
Ranges = Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]  # input -> profile (min, opt, max)


class DataError(ValueError):
    """The calibration data cannot be read; the message says why."""


def headers(path: Path) -> dict[str, Header]:
    """name -> (shape, dtype) of every array, from the .npy headers only (no data is read)."""
    if path.is_dir():
        found = {}
        for file in sorted(path.glob("*.npy")):
            with open(file, "rb") as handle:
                found[file.stem] = _header(handle, file)
        if not found:
            raise DataError(f"{path} has no .npy files (one per model input, named after it)")
        return found
    if not path.exists():
        raise DataError(f"calibration data not found: {path} (paths are relative to the recipe)")
    if path.suffix != ".npz":
        raise DataError(f"expected an .npz file or a directory of .npy files, got {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            return {name[:-4]: _header(archive.open(name), path) for name in archive.namelist()
                    if name.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"cannot read {path}: {error}") from None


def _header(handle: IO[bytes], where: Path) -> Header:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(handle)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(handle)
    except ValueError as error:
        raise DataError(f"cannot read {where}: {error}") from None
    return tuple(shape), dtype.name


def data_sha256(path: Path) -> str | None:
    """The data's content hash: the file's sha256, or for a directory the sha256 of its .npy files' hashes by
    name. None when there is nothing there."""
    if path.is_file():
        return file_sha256(path)
    files = sorted(path.glob("*.npy")) if path.is_dir() else []
    return json_sha256({file.name: file_sha256(file) for file in files}) if files else None


def load(path: Path) -> dict[str, Any]:
    """Every array, read into memory."""
    import numpy as np

    if path.is_dir():
        return {file.stem: np.load(file) for file in sorted(path.glob("*.npy"))}
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def _static(dim: Any) -> bool:
    return isinstance(dim, int) and dim >= 0


def problems(found: Mapping[str, Header], inputs: Inputs, ranges: Ranges) -> list[str]:
    """Everything that keeps arrays with these headers from feeding a model with these inputs, one line each."""
    missing, extra = [n for n in inputs if n not in found], [n for n in found if n not in inputs]
    out = []
    if missing or extra:
        detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                             f"unexpected {', '.join(extra)}" if extra else "") if part)
        out.append(f"has arrays {', '.join(found) or '(none)'}, but the model's inputs are {', '.join(inputs)} "
                   f"({detail})")
    counts = {}
    for name, info in inputs.items():
        if name not in found:
            continue
        (shape, dtype), declared = found[name], list(info["shape"])
        if dtype != info["dtype"]:
            out.append(f"array '{name}' is {dtype}, but input '{name}' is {info['dtype']}")
        if len(shape) != len(declared):
            out.append(f"array '{name}' has shape {list(shape)}, but input '{name}' has rank {len(declared)} "
                       f"{declared} (axis 0 of the array is the input's batch dimension)")
            continue
        if not shape:
            continue  # a scalar input: the same value for every batch
        if shape[0] == 0 or (_static(declared[0]) and declared[0] and shape[0] % declared[0]):
            out.append(f"array '{name}' has {shape[0]} sample(s) along axis 0; input '{name}' {declared} takes "
                       f"batches of {declared[0] if _static(declared[0]) else 'any size'}")
        counts[name] = shape[0]
        for axis in range(1, len(shape)):
            got, dim = shape[axis], declared[axis]
            if _static(dim) and got != dim:
                out.append(f"array '{name}' has shape {list(shape)}: dimension {axis} is {got}, but input "
                           f"'{name}' {declared} has {dim}")
            elif not _static(dim) and name in ranges and not ranges[name][0][axis] <= got <= ranges[name][2][axis]:
                low, high = ranges[name][0][axis], ranges[name][2][axis]
                out.append(f"array '{name}' has shape {list(shape)}: dimension {axis} is {got}, outside the "
                           f"optimization profile's {low}..{high}")
    if len(set(counts.values())) > 1:
        out.append("arrays have different sample counts: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    return out


def samples(arrays: Mapping[str, Any]) -> int:
    """How many samples the arrays hold (axis 0 of the first array that has one)."""
    return next((len(array) for array in arrays.values() if getattr(array, "ndim", 0)), 1)


def random(inputs: Inputs, ranges: Ranges, count: int, seed: int) -> dict[str, Any]:
    """Seeded random arrays for `count` samples: floats uniform in [0, 1), integers and booleans 0 or 1; dynamic
    dimensions at the profile's opt (1 without a profile)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = {}
    for name, info in inputs.items():
        declared, dtype = list(info["shape"]), np.dtype(info["dtype"])
        opt = ranges[name][1] if name in ranges else [1] * len(declared)
        shape = [dim if _static(dim) else opt[axis] for axis, dim in enumerate(declared)]
        if shape:
            shape[0] = count * (declared[0] if _static(declared[0]) and declared[0] else 1)
        if dtype.kind == "f":
            arrays[name] = rng.random(shape).astype(dtype)
        else:
            arrays[name] = rng.integers(0, 2, shape).astype(dtype)
    return arrays


def batches(arrays: Mapping[str, Any], inputs: Inputs, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Feed dicts along axis 0: batches of the input's static batch size, else of one sample; at most `limit`
    samples in all."""
    sizes = {name: info["shape"][0] if info["shape"] and _static(info["shape"][0]) and info["shape"][0] else 1
             for name, info in inputs.items()}
    sized = [name for name in inputs if getattr(arrays[name], "ndim", 0)]
    total = min((len(arrays[name]) // sizes[name] for name in sized), default=1)
    for index in range(total):
        if limit is not None and index * max(sizes.values(), default=1) >= limit:
            return
        yield {name: arrays[name][index * sizes[name]:(index + 1) * sizes[name]] if name in sized else arrays[name]
               for name in inputs}


def model_inputs(declared: Inputs, frozen: Mapping[str, Any], overridden: Mapping[str, Sequence[int]]) -> dict:
    """The inputs the precision stage sees, from the original model's: graph-cleanup's frozen inputs are gone and
    overridden shapes are static."""
    return {name: {**info, "shape": list(overridden.get(name, info["shape"]))}
            for name, info in declared.items() if name not in frozen}


def recipe_problems(recipe: Any, declared: Inputs, outputs: Sequence[str] = ()) -> list[str]:
    """What the recipe's precision stage says about the model that the model contradicts: the calibration data
    against the declared inputs (names, ranks, shapes, dtypes, sample counts; located at calibration.data; from the
    .npy headers only) and check limits for outputs the model does not have. Every problem at once."""
    spec = recipe.spec("precision") if "precision" in recipe.stages else None
    if spec is None:
        return []
    found = [recipe.problem(recipe.stage_path("precision", "check", "outputs", name),
                            f"model has no output '{name}'; its outputs are {', '.join(outputs)}")
             for name in spec.check.outputs if outputs and name not in outputs]
    return found + _data_problems(recipe, spec, declared)


def _data_problems(recipe: Any, spec: Any, declared: Inputs) -> list[str]:
    if spec.calibration is None or spec.calibration.data is None:
        return []
    at, path = recipe.stage_path("precision", "calibration", "data"), spec.calibration.data
    cleanup = recipe.spec("graph-cleanup")
    try:
        found = headers(path)
    except DataError as error:
        return [recipe.problem(at, str(error))]
    inputs = model_inputs(declared, cleanup.freeze_inputs, cleanup.override_shapes)
    return [recipe.problem(at, described(path, problem)) for problem in problems(found, inputs, profile_ranges(recipe))]


def described(path: Path, problem: str) -> str:
    """'calibration data x.npz has arrays ...' / 'calibration data x.npz: array ...'."""
    return f"calibration data {path.name}{'' if problem.startswith('has ') else ':'} {problem}"


def profile_ranges(recipe: Any) -> dict[str, tuple[tuple[int, ...], ...]]:
    """input -> (min, opt, max) of the first optimization profile that names it."""
    ranges: dict[str, tuple[tuple[int, ...], ...]] = {}
    for profile in recipe.spec("serialize").profiles:
        for item in profile:
            ranges.setdefault(item.name, (item.min, item.opt, item.max))
    return ranges
