"""The one owner of artifacts/: staging, atomic publish, lookup by reference, manifest updates.

Layout: ROOT/<name>/<version>[+<build>]/<gpu-tag>/{engine.plan, manifest.json, model.cleaned.onnx, build.log}.
Beside the artifacts: ROOT/<name>/_channels/ (lifecycle.channel's files), ROOT/_nightly/<run>/ (one per night),
ROOT/_failed/ (logs of failed builds), ROOT/.memo/ (caches) and ROOT/.staging/ (private work, trash, leases and the
temp files of what is replaced inside published artifacts). Every path under ROOT is spelled here; other modules ask
the Store for theirs.
Whatever a process leaves behind when it dies without unwinding (staging, trash, leases, `.<name>.<pid>.tmp` files)
carries its pid; `reclaim` (run by build, nightly, promote and gc before they start) and `fsck --repair` remove it
once that process is gone.
Everything is written into ROOT/.staging first, fsynced, then renamed into place under a file lock, so a
reader sees a whole artifact or none. A published directory is never overwritten.
A build number belongs to one build run (all its GPU tags) and is never reused, not even after gc: the highest
number ever given per version is kept in ROOT/<name>/.builds.json. Build 1 lives in the plain <version>
directory; every printed reference is exact: NAME@VERSION+BUILD.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import clock, faults, interrupt
from pipeline import ref as refs
from pipeline.digest import file_sha256
from pipeline.errors import StoreError
from pipeline.files import fsync_dir, replace_json, sync, write_json
from pipeline.manifest import Manifest
from pipeline.ref import ref, version_dir

MANIFEST = "manifest.json"
STAGING = ".staging"
FAILED = "_failed"
MEMO = ".memo"  # hashes of unchanged files and plans already checked, so an unchanged rebuild costs little
MEMO_MIN_BYTES = 1 << 20
RACY_S = 2  # a file changed this recently is hashed again next time, on a file system with whole-second timestamps
RACY_FINE_S = 0.1  # the same where timestamps have sub-second parts (ext4, XFS, btrfs, tmpfs: they tick every few ms)
BUILDS = ".builds.json"  # version -> highest build number ever given (numbers are never reused)
CHANNELS = "_channels"  # ROOT/<name>/_channels/: channel files and their history
NIGHTLY = "_nightly"  # ROOT/_nightly/<run>/: one directory per nightly run
TRASH = "_trash"  # ROOT/.staging/_trash-<pid>-<name>-XXXXXXXX/: what process <pid> is removing
LEASE = "_lease"  # ROOT/.staging/_lease-<pid>-<name>-XXXXXXXX/: a build process <pid> needs kept (gc honours it)
LEASED = "artifact.json"  # in a lease: {"version", "build", "tag"} of the build it keeps
HASHES = "hashes"  # the memo of file hashes (file_sha256)
_OWNER = re.compile(r"^(?:_(?:trash|lease)-(\d+)-.*|.*-(\d+)-[^-]{8})$")  # the pid in a staging entry's name
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # pipeline.files.replace_bytes's .<name>.<pid>.tmp
_MKDTEMP = re.compile(r"^[a-z0-9_]{8}$")  # tempfile.mkdtemp's random part
_VERSION_DIR = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:\+(\d+))?$")


def alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists
        return True
    return True


def _hold(path: Path) -> int | None:
    """Take the owner's flock on a staging entry (the directory itself), held until the returned fd is closed;
    None where the filesystem has no flock (then only the pid in the entry's name tells its owner is alive)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        return None
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _held(path: Path) -> bool:
    """Whether a process holds the owner's flock on a staging entry: one in another pid namespace, or on another
    host sharing a local-filesystem store, included (a pid cannot tell those apart from a dead process)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no flock here: the pid decides
        return False
    finally:
        os.close(fd)
    return False


def gone(path: Path, pid: int) -> bool:
    """Whether the owner of staging entry `path`, process `pid`, is gone: no process holds the entry's flock, and
    no process with that pid runs here (an owner of an older version holds no flock; its pid still counts)."""
    return not _held(path) and not alive(pid)


@dataclass(frozen=True)
class Leftover:
    """Something under ROOT that no published artifact, channel or night is: `garbage` when provably so."""

    kind: str  # staging | temp | empty
    path: Path
    message: str
    garbage: bool


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


@dataclass
class Run:
    """One build run: its build number is allocated at its first publish and shared by all its GPU tags."""

    build: int | None = None


@dataclass(frozen=True)
class Artifact:
    path: Path
    name: str
    version: str
    build: int
    tag: str

    @property
    def ref(self) -> str:
        return ref(self.name, self.version, self.build)

    @property
    def sort_key(self) -> tuple:
        return (self.name, tuple(int(p) for p in self.version.split(".")), self.build, self.tag)

    def manifest(self) -> Manifest:
        """Its manifest, read and checked (a damaged one is a StoreError naming the file and the field)."""
        return Manifest.load(self.path / MANIFEST)

    def damaged(self, problem: str) -> StoreError:
        return StoreError(f"damaged artifact {self.ref} [{self.tag}]: {problem}",
                          hint="a build of its recipe replaces it (a damaged artifact is never reused); "
                               "`trt-pipeline fsck` checks the whole store")


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._memos: dict[str, dict] = {}

    # ------------------------------------------------------------ paths

    def artifact_dir(self, name: str, version: str, build: int, tag: str) -> Path:
        """Where build `build` of name@version for `tag` is (or would be) published:
        ROOT/<name>/<version>[+<build>]/<tag> (build 1 in the plain <version> directory)."""
        return self.root / name / version_dir(version, build) / tag

    def channels_dir(self, name: str) -> Path:
        """ROOT/<name>/_channels/: a recipe's channel files and history (their contents are lifecycle.channel's)."""
        return self.root / name / CHANNELS

    # ------------------------------------------------------------ memo

    def memo(self, kind: str) -> dict:
        """What the store remembers of `kind` (ROOT/.memo/<kind>.json), read once per Store; {} when nothing, or
        when unreadable."""
        if kind not in self._memos:
            try:
                found = json.loads((self.root / MEMO / f"{kind}.json").read_text())
            except (OSError, ValueError):
                found = {}
            self._memos[kind] = found if isinstance(found, dict) else {}
        return self._memos[kind]

    def remember(self, kind: str, key: str, value: Any) -> None:
        """Add one entry to a memo. It is a cache: no lock (two runs writing at once may lose an entry, which costs
        only its recomputation) and no fsync (a file damaged by a crash reads as empty), but replaced atomically.
        Best effort: a read-only store just remembers nothing."""
        self.memo(kind)[key] = value
        with contextlib.suppress(StoreError, OSError):
            (self.root / MEMO).mkdir(parents=True, exist_ok=True)
            replace_json(self.root / MEMO / f"{kind}.json", self._memos[kind], durable=False)

    def file_sha256(self, path: Path, remember: bool = True, read: Callable[[Path], str] | None = None) -> str:
        """sha256 of a file's bytes, remembered with the file's inode, size, mtime and ctime (as DVC does): a file
        none of these changed for is not read again. Any write changes the ctime, which no tool can set back.
        Files under MEMO_MIN_BYTES are hashed every time (quicker than remembering them). `remember=False`
        (a dry run) uses the memo but writes nothing. `read`: what hashes a file the memo could know but does not
        (default: read and hash it; a build's first look at its model keeps the bytes it hashed)."""
        stat = path.stat()
        if stat.st_size < MEMO_MIN_BYTES:
            return file_sha256(path)
        stamp = _stamp(stat)
        key = str(path.resolve())
        known = self.memo(HASHES).get(key)
        if isinstance(known, dict) and known.get("stamp") == stamp:
            return known["sha256"]
        sha256 = (read or file_sha256)(path)
        # Remembered only if the file did not change while it was read, and not within the racy window of its last
        # change: a same-size rewrite inside one timestamp tick would keep its stamp (as git). The tick is coarse
        # (seconds) where the file system keeps whole seconds, a few ms where it keeps nanoseconds.
        racy = RACY_S if stat.st_mtime_ns % 10**9 == 0 else min(RACY_S, RACY_FINE_S)
        if remember and _stamp(path.stat()) == stamp and time.time_ns() - stat.st_ctime_ns > racy * 10**9:
            self.remember(HASHES, key, {"stamp": stamp, "sha256": sha256})
        return sha256

    # ------------------------------------------------------------ checking

    def verified(self, artifact: Artifact) -> Artifact:
        """`artifact`, once its engine is checked against its manifest (size, then sha256); else a StoreError
        'damaged artifact REF [TAG]: ...'. An unchanged engine costs a stat (the hash memo, see file_sha256)."""
        problem = self.engine_problem(artifact)
        if problem:
            raise artifact.damaged(problem)
        return artifact

    def engine_problem(self, artifact: Artifact) -> str | None:
        """What is wrong with an artifact's engine file (missing, another size, another sha256), or None. A damaged
        manifest is a StoreError."""
        engine = artifact.manifest().engine
        path = artifact.path / engine.file
        try:
            size = path.stat().st_size
            if size != engine.bytes:
                return f"{engine.file} is {size} bytes, the manifest says {engine.bytes}"
            sha256 = self.file_sha256(path)
        except FileNotFoundError:
            return f"{engine.file} is missing"
        except OSError as error:
            return f"cannot read {engine.file}: {error.strerror}"
        if sha256 != engine.sha256:
            return f"{engine.file} has sha256 {sha256[:12]}, the manifest says {engine.sha256[:12]}"
        return None

    # ------------------------------------------------------------ what fsck looks at

    def staged(self) -> list[tuple[Path, int | None]]:
        """Every entry of ROOT/.staging (staging, trash and lease directories; temp files are `temp_files`') with
        the pid of the process that owns it (None when its name carries none)."""
        try:
            entries = sorted((self.root / STAGING).iterdir())
        except OSError:
            return []
        found = []
        for path in entries:
            if _TEMP.match(path.name):
                continue  # a temp file (temp_files)
            match = _OWNER.match(path.name)
            found.append((path, int(next(g for g in match.groups() if g)) if match else None))
        return found

    def temp_files(self) -> list[tuple[Path, int]]:
        """Every `.<name>.<pid>.tmp` file (pipeline.files.replace_bytes) in the places the store replaces files:
        the root, ROOT/.memo, each recipe, its channels, version and artifact directories; with the writer's pid."""
        places = [self.root, self.root / MEMO, self.root / STAGING]
        for name in self.recipes():
            places += [self.root / name, self.channels_dir(name)]
            for version in self.version_dirs(name):
                places += [version, *self._dirs(version)]
        found = []
        for place in places:
            with contextlib.suppress(OSError):
                for path in sorted(place.iterdir()):
                    match = _TEMP.match(path.name)
                    if match and path.is_file():
                        found.append((path, int(match.group(1))))
        return found

    def leftovers(self) -> list[Leftover]:
        """What processes left behind: staging, trash and lease entries (garbage once their owner is gone),
        temp files of dead writers, empty version directories. fsck reports them; `reclaim` removes the garbage."""
        found = []
        for path, pid in self.staged():
            if pid is None:
                found.append(Leftover("staging", path, "staging entry of unknown owner (remove it by hand when no "
                                                       "build runs)", False))
            elif gone(path, pid):
                found.append(Leftover("staging", path, f"left behind by process {pid}, which is gone", True))
        for path, pid in self.temp_files():
            if not alive(pid):
                found.append(Leftover("temp", path, f"temporary file of process {pid}, which is gone", True))
        for name in self.recipes():
            for path in self.version_dirs(name):
                with contextlib.suppress(OSError):
                    if not any(path.iterdir()):
                        found.append(Leftover("empty", path, "empty version directory", True))
        return found

    def remove_leftover(self, leftover: Leftover) -> bool:
        """Remove one garbage leftover; False when it is not garbage, or changed meanwhile (filled up, gone)."""
        if not leftover.garbage:
            return False
        if leftover.kind == "staging":
            shutil.rmtree(leftover.path, ignore_errors=True)
            return not leftover.path.exists()
        if leftover.kind == "temp":
            with contextlib.suppress(OSError):
                leftover.path.unlink(missing_ok=True)
            return not leftover.path.exists()
        return self.remove_empty_version(leftover.path)

    def reclaim(self) -> list[Leftover]:
        """Remove what dead processes left behind (see `leftovers`); best effort: a read-only store, or a missing
        one, reclaims nothing. Returns what was removed."""
        try:
            return [left for left in self.leftovers() if self.remove_leftover(left)]
        except (OSError, StoreError):
            return []

    def version_dirs(self, name: str) -> list[Path]:
        """ROOT/<name>/<version>[+<build>]/ directories of a recipe, whatever they hold."""
        return sorted(p for p in self._dirs(self.root / name) if _VERSION_DIR.match(p.name))

    def unpublished(self, name: str) -> list[Path]:
        """Directories inside a recipe's version directories that are not published artifacts (no manifest)."""
        return [tag for version in self.version_dirs(name) for tag in sorted(self._dirs(version))
                if not (tag / MANIFEST).is_file()]

    def remove_empty_version(self, path: Path) -> bool:
        """Remove an empty version directory of a recipe, under its lock (rmdir: never one that holds anything)."""
        if path.parent.parent != self.root or not _VERSION_DIR.match(path.name):
            raise StoreError(f"{path} is not a version directory of store {self.root}")
        with self.lock(path.parent.name), contextlib.suppress(OSError):
            path.rmdir()
            return True
        return False

    def dead_hashes(self) -> list[str]:
        """Entries of the hash memo that can never be used again: the file is gone or changed since."""
        dead = []
        for key, known in self.memo(HASHES).items():
            try:
                alive = isinstance(known, dict) and known.get("stamp") == _stamp(Path(key).stat())
            except OSError:
                alive = False
            if not alive:
                dead.append(key)
        return dead

    def forget(self, kind: str, keys: list[str]) -> None:
        """Drop entries from a memo (best effort, as `remember`)."""
        memo = self.memo(kind)
        for key in keys:
            memo.pop(key, None)
        with contextlib.suppress(StoreError, OSError):
            (self.root / MEMO).mkdir(parents=True, exist_ok=True)
            replace_json(self.root / MEMO / f"{kind}.json", memo, durable=False)

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def staging(self, label: str) -> Iterator[Path]:
        """A private directory inside the store, removed on exit whatever happens (Ctrl-C included). Its name
        carries the owner's pid (ROOT/.staging/<label>-<pid>-XXXXXXXX) and the owner holds its flock while it
        lives, so fsck can tell a killed process's leftovers from a live build's work (see `gone`)."""
        with self._held(f"{label}-{os.getpid()}-") as path:
            path.chmod(0o755)  # mkdtemp makes 0700; published artifacts are for everyone to read
            yield path

    @contextlib.contextmanager
    def _trash(self, label: str) -> Iterator[Path]:
        """A private directory to move things out of view into, deleted with its content on exit. Its name carries
        the owner's pid (ROOT/.staging/_trash-<pid>-<label>-XXXXXXXX; no recipe name starts with '_'), so what a
        killed process left behind can be told from what a live one is still removing."""
        with self._held(f"{TRASH}-{os.getpid()}-{label}-") as path:
            yield path

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """The recipe's lock (ROOT/<name>/.lock), held for the block; a store it cannot be taken in (read-only,
        full) is a StoreError."""
        from filelock import FileLock

        lock = FileLock(str(self.root / name / ".lock"))
        try:
            (self.root / name).mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as error:
            raise StoreError(f"cannot write to store {self.root}: {error.strerror}",
                             hint="pick a writable store with --store DIR or TRT_PIPELINE_STORE") from None
        try:
            yield
        finally:
            lock.release()

    def publish(self, name: str, version: str, tag: str, staged: Path, manifest: dict,
                run: Run | None = None) -> Artifact:
        """Number the build (once per `run`), write its manifest and rename the staged directory into place."""
        return self.publish_unless(name, version, tag, staged, manifest, run)[0]

    def publish_unless(self, name: str, version: str, tag: str, staged: Path, manifest: dict, run: Run | None = None,
                       existing: Callable[[], Artifact | None] = lambda: None) -> tuple[Artifact, bool]:
        """As `publish`, but first ask `existing()` under the lock: when it names an artifact (one with the same
        build key appeared meanwhile), nothing is published and (that artifact, True) is returned."""
        run = run or Run()
        with self.lock(name):
            found = existing()
            if found is not None:
                return found, True
            if run.build is None:
                run.build = self._allocate(name, version)
            build = run.build
            final = self.artifact_dir(name, version, build, tag)
            if final.exists():
                raise StoreError(f"refusing to overwrite published artifact {final}")
            manifest["build"]["number"] = build
            write_json(staged / MANIFEST, manifest)
            try:
                sync([item for item in staged.iterdir() if item.is_file()])
                fsync_dir(staged)
                final.parent.mkdir(parents=True, exist_ok=True)
                faults.point("publish-rename")
                with interrupt.deferred():  # renamed and noted, or neither: the interrupted line says which
                    os.rename(staged, final)
                    interrupt.published(f"{ref(name, version, build)} [{tag}]")
                faults.point("publish-renamed")
                fsync_dir(final.parent)
            except OSError as error:
                raise StoreError(f"cannot publish {final}: {error.strerror}") from None
        return Artifact(final, name, version, build, tag), False

    def new_run(self, name: str, version: str) -> Run:
        """A run whose number is allocated now: for a caller that spreads one run over several processes
        (pass it to publish; every process then publishes under that one number)."""
        with self.lock(name):
            return Run(self._allocate(name, version))

    def next_build(self, name: str, version: str) -> int:
        """The number the next build run of `version` would get (for --dry-run; allocates nothing)."""
        return self._counted(name, version)[1]

    def _allocate(self, name: str, version: str) -> int:
        """A new build number for `version`, recorded so it is never given again. Call under the lock."""
        given, build = self._counted(name, version)
        replace_json(self.root / name / BUILDS, {**given, version: build})
        return build

    def _counted(self, name: str, version: str) -> tuple[dict, int]:
        """(the counter file's content, 1 + the highest number ever given or on disk for `version`)."""
        path = self.root / name / BUILDS
        try:
            given = json.loads(path.read_text())
            if not isinstance(given, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            given = {}
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot read the build counter {path}: {error}",
                             hint="remove it to count from the builds on disk (numbers of removed builds may "
                                  "then be given again)") from None
        on_disk = max((a.build for a in self.artifacts(name) if a.version == version), default=0)
        return given, 1 + max(int(given.get(version) or 0), on_disk)

    def keep_failure_log(self, name: str, log: Path) -> Path:
        """Copy a failed build's log to ROOT/_failed/<name>-<time>.log (failed builds publish nothing else)."""
        stamp = f"{name}-{clock.compact()}-{os.getpid()}"
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

    def new_night(self, stamp: str) -> Path:
        """A fresh ROOT/_nightly/<stamp>[-N]/, claimed by mkdir so two nightlies never share one."""
        base = self.root / NIGHTLY
        for n in range(1, 1000):
            path = base / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                base.mkdir(parents=True, exist_ok=True)
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                raise StoreError(f"cannot create {path}: {error.strerror}",
                                 hint="pick a writable store with --store DIR or TRT_PIPELINE_STORE") from None
            return path
        raise StoreError(f"cannot find a free run directory under {base}")

    def discard(self, artifact: Artifact) -> None:
        """Remove a published artifact: rename it out of view first (atomic, so a reader sees all of it or none),
        then delete it; its version directory goes too once empty. Call under the recipe's lock (the caller decides
        inside it what to remove)."""
        try:
            with self._trash(artifact.name) as trash:
                os.rename(artifact.path, trash / artifact.tag)
                faults.point("discard-renamed")
        except OSError as error:
            raise StoreError(f"cannot remove {artifact.path}: {error.strerror}") from None
        with contextlib.suppress(OSError):
            artifact.path.parent.rmdir()  # fails while other GPU tags of this version remain

    def replace_json(self, path: Path, value: Any) -> None:
        """Atomically replace a file inside a published artifact, its temp file written in ROOT/.staging (same
        filesystem) and renamed across: a process killed meanwhile leaves nothing inside the artifact."""
        base = self.root / STAGING
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot write {path}: {error.strerror}") from None
        replace_json(path, value, scratch=base)

    @contextlib.contextmanager
    def lease(self, artifact: Artifact) -> Iterator[Artifact]:
        """Keep `artifact` from gc while the block runs (a promotion's source): a lease naming it is made under the
        recipe's lock, after checking it is still published, and removed on exit. The lease carries this process's
        pid and this process holds its flock, so one left by a killed process stops counting (and is reclaimed)
        once that process is gone (see `gone`)."""
        with self.lock(artifact.name):
            if self.published(artifact.name, artifact.version, artifact.build, artifact.tag) is None:
                raise StoreError(f"{artifact.ref} [{artifact.tag}] is no longer in store {self.root} (removed "
                                 "meanwhile, e.g. by gc)")
            with self._owned(f"{LEASE}-{os.getpid()}-{artifact.name}-") as path:
                held = _hold(path)
                try:
                    write_json(path / LEASED, {"version": artifact.version, "build": artifact.build,
                                               "tag": artifact.tag})
                except BaseException:
                    _release(held)
                    raise
        try:
            yield artifact
        finally:
            shutil.rmtree(path, ignore_errors=True)
            _release(held)

    def leased(self, name: str) -> dict[tuple[str, int, str], int]:
        """(version, build, tag) -> pid, for every build of `name` a live process holds a lease on (leases of
        `name` only: not those of a recipe whose name starts with it)."""
        found = {}
        for path, pid in self.staged():
            prefix = f"{LEASE}-{pid}-{name}-"
            if pid is None or not path.name.startswith(prefix) or not _MKDTEMP.match(path.name[len(prefix):]) \
                    or gone(path, pid):
                continue
            try:
                held = json.loads((path / LEASED).read_text())
                found[(held["version"], int(held["build"]), held["tag"])] = pid
            except (OSError, ValueError, KeyError, TypeError):
                continue  # still being written (it is made under the lock gc takes) or damaged
        return found

    def _new_private(self, prefix: str) -> Path:
        """A fresh ROOT/.staging/<prefix>XXXXXXXX/ (mkdtemp: 0700); a store it cannot be made in is a StoreError."""
        base = self.root / STAGING
        try:
            base.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        except OSError as error:
            raise StoreError(f"cannot create a staging directory in store {self.root}: {error.strerror}",
                             hint="pick a writable store with --store DIR or TRT_PIPELINE_STORE") from None

    @contextlib.contextmanager
    def _held(self, prefix: str) -> Iterator[Path]:
        """A fresh private directory (`_new_private`) whose flock this process holds for the block; removed with
        its content on exit, whatever happens (staging and trash)."""
        path = self._new_private(prefix)
        held = _hold(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            _release(held)

    @contextlib.contextmanager
    def _owned(self, prefix: str) -> Iterator[Path]:
        """A fresh private directory (`_new_private`), removed again if the block fails (a lease outlives it)."""
        path = self._new_private(prefix)
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def update_manifest(self, artifact: Artifact, change: Callable[[dict], None]) -> Manifest:
        """Apply `change` to (the JSON of) a published manifest atomically, under the recipe's lock; what it
        makes is checked before it is written, so an update never leaves a damaged manifest."""
        with self.lock(artifact.name):
            manifest = artifact.manifest().to_dict()
            change(manifest)
            changed = Manifest.from_dict(manifest, artifact.path / MANIFEST)
            self.replace_json(artifact.path / MANIFEST, manifest)
        return changed

    # ------------------------------------------------------------ reading

    def overlaps(self, path: Path) -> bool:
        """Whether `path` is the store's root, inside it, or holds it (an outside writer must not write there)."""
        root, where = self.root.resolve(), Path(path).resolve()
        return where == root or root in where.parents or where in root.parents

    def recipes(self) -> list[str]:
        """Names of the recipes in the store (a missing store holds none; a file is not a store)."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store {self.root} is not a directory",
                             hint="pick a store directory with --store DIR or TRT_PIPELINE_STORE")
        return sorted(p.name for p in self._dirs(self.root) if p.name[0] not in "._")

    def require(self, name: str) -> str:
        """`name` if the store has that recipe, else a StoreError listing those it has."""
        known = self.recipes()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise StoreError(f"no recipe '{name}' in store {self.root}; recipes: {', '.join(known) or 'none'}"
                             + (f"; did you mean '{close[0]}'?" if close else ""))
        return name

    def artifacts(self, name: str | None = None) -> list[Artifact]:
        """Every published artifact (optionally of one recipe), oldest version first."""
        found = []
        names = [name] if name else self.recipes()
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

    def published(self, name: str, version: str, build: int, tag: str) -> Artifact | None:
        """The artifact at `artifact_dir(...)` if it is published there (its manifest in place), else None."""
        path = self.artifact_dir(name, version, build, tag)
        return Artifact(path, name, version, build, tag) if (path / MANIFEST).is_file() else None

    def nights(self) -> list[Path]:
        """Every ROOT/_nightly/<run>/ directory, oldest first (run names sort by time)."""
        return sorted(p for p in self._dirs(self.root / NIGHTLY) if not p.name.startswith("."))

    @staticmethod
    def _dirs(path: Path) -> list[Path]:
        try:
            return [p for p in path.iterdir() if p.is_dir()]
        except OSError:
            return []

    def resolve(self, ref: str, tag: str | None = None) -> Artifact:
        """NAME, NAME@VERSION (newest build), NAME@VERSION+BUILD, or an artifact directory; --tag narrows
        (a unique short form such as 'sm89' for 'sm89.rtx-1.7.1' is accepted). One artifact: a build with several
        GPU tags needs --tag."""
        found = self.resolve_build(ref, tag)
        if len(found) > 1:
            tags = ", ".join(a.tag for a in found)
            if Path(ref).is_dir():
                raise StoreError(f"{Path(ref)} is a version directory with {len(found)} GPU tag(s) ({tags}); "
                                 f"pick one with --tag TAG or name the tag directory, e.g. {found[0].path}")
            raise StoreError(f"{found[0].ref} has {len(found)} GPU tags ({tags}); pick one with --tag TAG")
        return found[0]

    def resolve_build(self, ref: str, tag: str | None = None) -> list[Artifact]:
        """Like `resolve`, but every GPU tag of the build it names (one when --tag narrows), in tag order."""
        path = Path(ref)
        if (path / MANIFEST).is_file():
            return [self._from_directory(path)]
        if path.is_dir() and (tags := sorted(p.name for p in self._dirs(path) if (p / MANIFEST).is_file())):
            if tag is not None:
                chosen = [t for t in tags if t == tag] or [t for t in tags if _abbreviates(tag, t)]
                if len(chosen) == 1:
                    return [self._from_directory(path / chosen[0])]
                raise StoreError(f"{path} is a version directory with {len(tags)} GPU tag(s) ({', '.join(tags)}); "
                                 f"pick one with --tag TAG or name the tag directory, e.g. {path / tags[0]}")
            return [self._from_directory(path / name) for name in tags]
        wanted = refs.parse(ref)
        candidates = [a for a in self.artifacts(wanted.name) if wanted.version in (None, a.version)
                      and wanted.build in (None, a.build)]
        if tag is not None and candidates:
            candidates = self._with_tag(candidates, ref, tag)
        if not candidates:
            known = ", ".join(sorted({f"{a.name}@{a.version}" for a in self.artifacts()})) or "none"
            what = f"{ref}" + (f" with tag {tag}" if tag else "")
            raise StoreError(f"no artifact {what} in store {self.root}; built artifacts: {known}",
                             hint="see `trt-pipeline list`")
        newest = candidates[-1]
        return sorted((a for a in candidates if (a.version, a.build) == (newest.version, newest.build)),
                      key=lambda a: a.tag)

    def _with_tag(self, candidates: list[Artifact], ref: str, tag: str) -> list[Artifact]:
        """The candidates with this tag, or with the one tag it abbreviates; else say which tags there are."""
        exact = [a for a in candidates if a.tag == tag]
        if exact:
            return exact
        tags = sorted({a.tag for a in candidates})
        near = [t for t in tags if _abbreviates(tag, t)]
        if len(near) == 1:
            return [a for a in candidates if a.tag == near[0]]
        guess = f"did you mean {' or '.join(near)}? " if near else ""
        raise StoreError(f"no artifact {ref} with tag {tag} in store {self.root}; {guess}"
                         f"{ref} has tag(s) {', '.join(tags)}", hint="pick one with --tag TAG")

    @staticmethod
    def _from_directory(path: Path) -> Artifact:
        manifest = Artifact(path, "", "", 0, "").manifest()
        return Artifact(path, manifest.recipe.name, manifest.recipe.version, manifest.build.number,
                        manifest.target.tag)


def _abbreviates(short: str, full: str) -> bool:
    """A short form of a GPU tag: its leading part ('sm89', 'sm89.rtx') or its sm ('sm80' of a full-TensorRT tag)."""
    return full.startswith((f"{short}.", f"{short}-")) or (
        re.fullmatch(r"sm\d{2,3}", short) is not None and f".{short}." in f".{full}")
