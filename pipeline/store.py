"""The one owner of artifacts/: staging, atomic publish, lookup by reference, manifest updates.

Layout: ROOT/<name>/<version>[+<build>]/<gpu-tag>/{engine.plan, manifest.json, model.cleaned.onnx, build.log}.
Everything is written into ROOT/.staging first, fsynced, then renamed into place under a file lock, so a
reader sees a whole artifact or none. A published directory is never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.errors import StoreError

MANIFEST = "manifest.json"
STAGING = ".staging"
FAILED = "_failed"
_VERSION_DIR = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:\+(\d+))?$")


def write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write and fsync; a full disk or other OS error becomes a StoreError naming the file."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise StoreError(f"cannot write {path}: {error.strerror}") from None


def write_json(path: Path, value: Any) -> None:
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def replace_json(path: Path, value: Any) -> None:
    """Atomically replace a JSON file: temp file beside it, fsync, os.replace."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_json(tmp, value)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def version_dir(version: str, build: int) -> str:
    return version if build == 1 else f"{version}+{build}"


@dataclass(frozen=True)
class Artifact:
    path: Path
    name: str
    version: str
    build: int
    tag: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{version_dir(self.version, self.build)}"

    @property
    def sort_key(self) -> tuple:
        return (self.name, tuple(int(p) for p in self.version.split(".")), self.build, self.tag)

    def manifest(self) -> dict:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot read {self.path / MANIFEST}: {error}") from None


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def staging(self, label: str) -> Iterator[Path]:
        """A private directory inside the store, removed on exit whatever happens (Ctrl-C included)."""
        base = self.root / STAGING
        try:
            base.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=base))
            path.chmod(0o755)  # mkdtemp makes 0700; published artifacts are for everyone to read
        except OSError as error:
            raise StoreError(f"cannot create a staging directory in store {self.root}: {error.strerror}",
                             hint="pick a writable store with --store DIR or TRT_PIPELINE_STORE") from None
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def lock(self, name: str) -> Any:
        from filelock import FileLock

        try:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot write to store {self.root}: {error.strerror}",
                             hint="pick a writable store with --store DIR or TRT_PIPELINE_STORE") from None
        return FileLock(str(self.root / name / ".lock"))

    def publish(self, name: str, version: str, tag: str, staged: Path, manifest: dict) -> Artifact:
        """Number the build, write its manifest and rename the staged directory into place, under the lock."""
        with self.lock(name):
            build = 1 + max((a.build for a in self.artifacts(name) if a.version == version and a.tag == tag),
                            default=0)
            final = self.root / name / version_dir(version, build) / tag
            if final.exists():
                raise StoreError(f"refusing to overwrite published artifact {final}")
            manifest["build"]["number"] = build
            write_json(staged / MANIFEST, manifest)
            try:
                for item in staged.iterdir():
                    if item.is_file():
                        with open(item, "rb") as handle:
                            os.fsync(handle.fileno())
                _fsync_dir(staged)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staged, final)
                _fsync_dir(final.parent)
            except OSError as error:
                raise StoreError(f"cannot publish {final}: {error.strerror}") from None
        return Artifact(final, name, version, build, tag)

    def keep_failure_log(self, name: str, log: Path) -> Path:
        """Copy a failed build's log to ROOT/_failed/<name>-<time>.log (failed builds publish nothing else)."""
        stamp = f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        (self.root / FAILED).mkdir(parents=True, exist_ok=True)
        for number in range(1, 10_000):  # two failures in one second and process (threads) keep both logs
            kept = self.root / FAILED / (f"{stamp}.log" if number == 1 else f"{stamp}.{number}.log")
            try:
                with open(kept, "xb") as out, open(log, "rb") as source:
                    shutil.copyfileobj(source, out)
                return kept
            except FileExistsError:
                continue
        raise StoreError(f"cannot keep the failure log: too many in {self.root / FAILED}")

    def update_manifest(self, artifact: Artifact, change: Callable[[dict], None]) -> dict:
        """Apply `change` to a published manifest atomically, under the recipe's lock."""
        with self.lock(artifact.name):
            manifest = artifact.manifest()
            change(manifest)
            replace_json(artifact.path / MANIFEST, manifest)
        return manifest

    # ------------------------------------------------------------ reading

    def artifacts(self, name: str | None = None) -> list[Artifact]:
        """Every published artifact (optionally of one recipe), oldest version first."""
        found = []
        names = [name] if name else [p.name for p in self._dirs(self.root) if p.name[0] not in "._"]
        for recipe in names:
            for version in self._dirs(self.root / recipe):
                match = _VERSION_DIR.match(version.name)
                if not match:
                    continue
                semver, build = version.name.split("+")[0], int(match.group(4) or 1)
                for tag in self._dirs(version):
                    if (tag / MANIFEST).is_file():
                        found.append(Artifact(tag, recipe, semver, build, tag.name))
        return sorted(found, key=lambda a: a.sort_key)

    @staticmethod
    def _dirs(path: Path) -> list[Path]:
        try:
            return [p for p in path.iterdir() if p.is_dir()]
        except OSError:
            return []

    def resolve(self, ref: str, tag: str | None = None) -> Artifact:
        """NAME, NAME@VERSION (newest build), NAME@VERSION+BUILD, or an artifact directory; --tag narrows."""
        path = Path(ref)
        if (path / MANIFEST).is_file():
            manifest = Artifact(path, "", "", 0, "").manifest()
            try:
                return Artifact(path, manifest["recipe"]["name"], manifest["recipe"]["version"],
                                manifest["build"]["number"], manifest["target"]["tag"])
            except (KeyError, TypeError) as error:
                raise StoreError(f"{path / MANIFEST} is not a trt-pipeline manifest (no {error})") from None
        name, _, version = ref.partition("@")
        version, _, build = version.partition("+")
        candidates = [a for a in self.artifacts(name) if (not version or a.version == version)
                      and (not build or str(a.build) == build) and (tag is None or a.tag == tag)]
        if not candidates:
            known = ", ".join(sorted({f"{a.name}@{a.version}" for a in self.artifacts()})) or "none"
            what = f"{ref}" + (f" with tag {tag}" if tag else "")
            raise StoreError(f"no artifact {what} in store {self.root}; built artifacts: {known}",
                             hint="see `trt-pipeline list`")
        newest = candidates[-1]
        same = [a for a in candidates if (a.version, a.build) == (newest.version, newest.build)]
        if len({a.tag for a in same}) > 1:
            raise StoreError(f"{newest.ref} has {len(same)} GPU tags ({', '.join(a.tag for a in same)}); "
                             "pick one with --tag TAG")
        return newest
