"""Fault injection: real `python -m pipeline` processes killed (SIGKILL at fault points, pipeline.faults), interrupted
(SIGINT, SIGTERM), out of disk (RLIMIT_FSIZE) or given an unwritable store. After each: the store holds only whole
artifacts, history and channels agree, `fsck` finds nothing but garbage, and the next run works and leaves `fsck`
clean (it reclaims what the dead process left)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.lifecycle import channel, fsck
from pipeline.store import STAGING, Store
from tests._lifecycle import SM86, SM89, SM120, TINY, TWO_INPUT, build, copy_store, write

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("faults") / "recipes"
    write(folder / "tiny.yaml", TINY, models_dir / "tiny.onnx")
    write(folder / "two_input.yaml", TWO_INPUT.replace("targets: [sm89]", "targets: [sm86, sm89]"),
          models_dir / "two_input.onnx")
    return folder


@pytest.fixture(scope="module")
def template(recipes: Path, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """tiny@1.0.0 built twice for sm89 (builds 1 and 2), really."""
    store = Store(tmp_path_factory.mktemp("faults-store") / "store")
    build(recipes / "tiny.yaml", store, ("sm89",))
    build(recipes / "tiny.yaml", store, ("sm89",), force=True)
    return store


@pytest.fixture
def store(template: Store, tmp_path: Path) -> Store:
    return copy_store(template, tmp_path / "store")


def pipeline(store: Store, *argv: str, fault: str | None = None,
             preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGV --store STORE`, optionally SIGKILLed at a fault point."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRT_PIPELINE_USER": "ana@ci"}
    env.pop("TRT_PIPELINE_FAULT", None)
    if fault:
        env["TRT_PIPELINE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "pipeline", *argv, "--store", str(store.root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=preexec)


def only_garbage(store: Store) -> None:
    """Whatever a fault left is garbage fsck may remove: no damaged artifact, no broken channel or history."""
    assert [str(p) for p in fsck.check(store) if not p.garbage] == []


def clean(store: Store) -> None:
    assert [str(p) for p in fsck.check(store)] == []


def agree(store: Store, name: str = "tiny") -> None:
    """The last history event of every (tag, channel) is what the channel file points at, and nothing else."""
    last = {(e["tag"], e["channel"]): e["artifact"] for e in channel.history(store, name)}
    current = {(tag, name_): entry for tag, name_, entry in channel.everything(store, name)}
    assert last == current


# ---------------------------------------------------------------- SIGKILL at fault points


@pytest.mark.parametrize("point", ["publish-rename", "publish-renamed", "replace .builds.json"])
def test_a_build_killed_at_each_point_leaves_whole_artifacts_and_the_next_build_reclaims(
        store: Store, recipes: Path, point: str) -> None:
    before = {a.ref for a in store.artifacts()}
    killed = pipeline(store, "build", str(recipes / "tiny.yaml"), "--target", "sm86", fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    only_garbage(store)
    assert any(left.garbage for left in store.leftovers())  # the staging (or counter's temp file) it left
    again = pipeline(store, "build", str(recipes / "tiny.yaml"), "--target", "sm86")
    assert again.returncode == 0, again.stderr
    clean(store)
    assert {a.ref for a in store.artifacts()} > before and list((store.root / STAGING).iterdir()) == []


@pytest.mark.parametrize("point", ["publish-rename", "channel-appended", f"replace {SM120}.json",
                                   "channel-replaced"])
def test_a_promotion_killed_at_each_point_keeps_history_and_channel_in_agreement(store: Store, point: str) -> None:
    """A rebuild promotion (sm89 -> sm120) killed while it publishes, after its history line, at the channel
    file's rename, and after the rename (before the commit line): `history` and `channel` say the same."""
    argv = ("promote", "tiny@1.0.0", "--from", SM89, "--to", SM120)
    killed = pipeline(store, *argv, fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    agree(store)
    applied = point == "channel-replaced"
    assert bool(channel.read(store, "tiny", SM120)) == applied
    assert [e["channel"] for e in channel.history(store, "tiny")] == (["candidate"] if applied else [])
    only_garbage(store)
    again = pipeline(store, *argv)
    assert again.returncode == 0, again.stderr
    agree(store)
    assert len(channel.history(store, "tiny")) == 1 + applied
    clean(store)


def test_a_gc_killed_while_removing_leaves_no_half_build_and_the_next_gc_finishes(store: Store) -> None:
    killed = pipeline(store, "gc", "--keep", "1", fault="discard-renamed")
    assert killed.returncode == -signal.SIGKILL
    assert [a.ref for a in store.artifacts()] == ["tiny@1.0.0+2"]  # build 1 was renamed out of view whole
    only_garbage(store)
    again = pipeline(store, "gc", "--keep", "1")
    assert again.returncode == 0, again.stderr
    clean(store)
    assert list((store.root / STAGING).iterdir()) == []


# ---------------------------------------------------------------- races


def test_gc_during_a_rebuild_promotion_keeps_its_source(store: Store) -> None:
    """gc --keep 1 while `promote tiny@1.0.0+1 --to sm120` rebuilds: build 1 is the promotion's source (leased),
    so it stays, and the history and the new manifest name a build that exists."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRT_PIPELINE_USER": "ana@ci"}
    promotion = subprocess.Popen([sys.executable, "-m", "pipeline", "promote", "tiny@1.0.0+1", "--from", SM89,
                                  "--to", SM120, "--store", str(store.root)], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = store.root / STAGING
    deadline = time.monotonic() + 60
    while promotion.poll() is None and time.monotonic() < deadline and not any(
            p.name.startswith(f"tiny-{promotion.pid}-") for p in staging.iterdir()):
        time.sleep(0.005)  # until the rebuild has started
    assert promotion.poll() is None, "the promotion ended before its rebuild was seen"
    assert main(["gc", "--keep", "1", "--store", str(store.root)]) == 0  # in this process: at once
    _, err = promotion.communicate(timeout=60)
    assert promotion.returncode == 0, err
    [event] = channel.history(store, "tiny")
    assert event["from"]["ref"] == "tiny@1.0.0+1"
    assert store.published("tiny", "1.0.0", 1, SM89) is not None
    rebuilt = store.resolve("tiny@1.0.0", SM120)
    assert rebuilt.manifest().to_dict()["promoted_from"]["ref"] == "tiny@1.0.0+1"
    clean(store)
    assert "kept   tiny@1.0.0+1 [" in pipeline(store, "gc", "--keep", "1").stdout  # now a promotion's source


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_sigkilled_nightly_takes_its_workers_with_it_and_nothing_is_published_after(
        recipes: Path, tmp_path: Path, jobs: str) -> None:
    store = Store(tmp_path / "store")
    recipes = write(tmp_path / "night" / "tiny.yaml", (recipes / "tiny.yaml").read_text(), Path()).parent
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    night = subprocess.Popen([sys.executable, "-m", "pipeline", "nightly", str(recipes), "--jobs", jobs,
                              "--store", str(store.root)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    staging = store.root / STAGING
    deadline = time.monotonic() + 60
    busy: list[Path] = []
    while night.poll() is None and time.monotonic() < deadline and not busy:
        busy = [p for p in staging.glob("*-*-*") if f"-{night.pid}-" not in p.name] if staging.is_dir() else []
        time.sleep(0.005)  # until a worker is building
    assert busy, "no worker started building"
    workers = children(night.pid)
    night.send_signal(signal.SIGKILL)
    night.wait()
    deadline = time.monotonic() + 5
    while not all(gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if not gone(pid)] == []  # the workers and the resource tracker
    published = {a.path for a in store.artifacts()}
    time.sleep(2)  # a worker left alive would have published by now (a build here takes well under a second)
    assert {a.path for a in store.artifacts()} == published
    only_garbage(store)
    again = pipeline(store, "nightly", str(recipes), "--jobs", jobs)
    assert again.returncode == 0, again.stderr
    clean(store)


# ---------------------------------------------------------------- SIGINT and SIGTERM


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_build_says_what_it_published_and_exits_128_plus_the_signal(
        recipes: Path, tmp_path: Path, signum: int) -> None:
    """Interrupted right after its first artifact appears: the one line names exactly what `list` has."""
    store = Store(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    building = subprocess.Popen([sys.executable, "-m", "pipeline", "build", str(recipes / "tiny.yaml"), "--store",
                                 str(store.root)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while building.poll() is None and time.monotonic() < deadline and not store.artifacts():
        time.sleep(0.002)
    building.send_signal(signum)
    _, err = building.communicate(timeout=60)
    assert building.returncode == 128 + signum, err
    published = [f"{a.ref} [{a.tag}]" for a in store.artifacts()]
    assert 1 <= len(published) < 3
    assert err.splitlines()[-1] == f"interrupted: published before the interrupt: {', '.join(published)}; " \
                                   "nothing after it"
    only_garbage(store)
    again = pipeline(store, "build", str(recipes / "tiny.yaml"))
    assert again.returncode == 0, again.stderr
    clean(store)


def test_ctrl_c_while_tensorrt_builds_cancels_the_build_without_printing_tensorrt_callback_errors(
        resnet50_path: Path, tmp_path: Path) -> None:
    """A signal that arrives inside TensorRT's build (its logger and progress callbacks run Python) is deferred: the
    progress monitor cancels the build and the run ends with the one `interrupted:` line, never TensorRT's
    'Exception caught in log()' report with a Python stack listing."""
    recipe = tmp_path / "resnet50.yaml"
    recipe.write_text((REPO / "recipes" / "resnet50.yaml").read_text()
                      .replace("../models/resnet50.onnx", str(resnet50_path))
                      .replace("targets: [sm86, sm89, sm120]", "targets: [sm89]"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    building = subprocess.Popen([sys.executable, "-m", "pipeline", "build", str(recipe), "--store",
                                 str(tmp_path / "store")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    lines = []
    for line in building.stderr:  # the stage lines come as each stage ends: serialize starts after memory-pool
        lines.append(line)
        if "memory-pool" in line:
            time.sleep(0.4)
            building.send_signal(signal.SIGINT)
            break
    _, rest = building.communicate(timeout=60)
    err = "".join(lines) + rest
    assert building.returncode == 130, err
    assert "Exception caught" not in err and "At:" not in err, err
    assert err.splitlines()[-1] == "interrupted: nothing was published by the interrupted step"
    assert not Store(tmp_path / "store").artifacts()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_exit_status_of_an_interrupt_is_128_plus_the_signal_from_start_to_exit(store: Store,
                                                                                   signum: int) -> None:
    """A signal at any moment of a run, from when its handlers are installed (the first thing `python -m pipeline`
    does) through the command and interpreter shutdown, ends it with 130 or 143, never a death by signal (-2, -15)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "pipeline", "list", "--store", str(store.root)]
    started = time.monotonic()
    subprocess.run(argv, cwd=REPO, env=env, capture_output=True, check=True, timeout=60)
    took = time.monotonic() - started
    codes = set()
    for step in range(8):
        run = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while run.poll() is None and not catches(run.pid, signal.SIGTERM):
            time.sleep(0.001)
        time.sleep(took * step / 6)
        run.send_signal(signum)
        run.communicate(timeout=60)
        codes.add(run.returncode)
    assert codes <= {0, 128 + signum} and 128 + signum in codes


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_shutdown_after_a_rebuild_never_kills_the_process(store: Store, signum: int) -> None:
    """A rebuild promotion starts native threads (TensorRT, ONNX Runtime); a signal arriving once it has printed
    its result, while the interpreter shuts down and may have reset the handlers, may be delivered to one of those
    threads: the process still ends by exit(), with its own status or 128 + the signal, never killed by it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRT_PIPELINE_USER": "ana@ci"}
    codes = []
    for step in range(5):
        target = store.root.parent / f"s{step}"
        shutil.copytree(store.root, target, symlinks=True)
        argv = [sys.executable, "-m", "pipeline", "promote", "tiny@1.0.0", "--from", SM89, "--to", SM86,
                "--store", str(target)]
        run = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert run.stdout is not None
        run.stdout.readline()  # its result: the command is done, shutdown follows
        time.sleep(0.004 * step)
        run.send_signal(signum)
        out, err = run.communicate(timeout=60)
        codes.append(run.returncode)
        assert run.returncode in (0, 128 + signum), (step, run.returncode, err[-800:])
    assert len(codes) == 5


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for the signal (/proc/PID/status SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (signum - 1) & 1)


# ---------------------------------------------------------------- a full disk, an unwritable store


def file_size_limit(size: int) -> Callable[[], None]:
    """A full disk as the process sees it: no file may grow past `size` bytes (writes fail with EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


@pytest.mark.parametrize("size", [0, 2_000, 60_000])
def test_a_build_on_a_full_disk_fails_in_one_line_and_leaves_nothing(store: Store, recipes: Path,
                                                                     size: int) -> None:
    before = sorted(a.ref + a.tag for a in store.artifacts())
    full = pipeline(store, "build", str(recipes / "two_input.yaml"), preexec=file_size_limit(size))
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr
    [line] = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert line.endswith(": File too large")
    assert sorted(a.ref + a.tag for a in store.artifacts()) == before
    clean(store)
    again = pipeline(store, "build", str(recipes / "two_input.yaml"))
    assert again.returncode == 0, again.stderr
    clean(store)


@pytest.mark.parametrize("size", [300, 1_200])
def test_a_promotion_on_a_full_disk_changes_nothing_and_history_agrees(store: Store, size: int) -> None:
    argv = ("promote", "tiny@1.0.0", "--from", SM89, "--to", SM86)  # a rebuild: an engine, history, channel
    pipeline(store, "promote", "tiny@1.0.0", "--from", SM89, "--channel", "a")  # some history already
    full = pipeline(store, *argv, preexec=file_size_limit(size))
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr and "File too large" in full.stderr
    agree(store)
    assert channel.read(store, "tiny", SM86) == {}
    only_garbage(store)
    again = pipeline(store, *argv)
    assert again.returncode == 0, again.stderr
    agree(store)
    clean(store)


def test_a_history_append_on_a_full_disk_leaves_no_half_line(store: Store) -> None:
    argv = ("promote", "tiny@1.0.0", "--from", SM89, "--channel", "b")  # no engine written: the history append fails
    assert pipeline(store, "promote", "tiny@1.0.0", "--from", SM89, "--channel", "a").returncode == 0
    history = store.channels_dir("tiny") / channel.HISTORY
    before = history.read_bytes()
    full = pipeline(store, *argv, preexec=file_size_limit(len(before) + 40))  # room for part of the event only
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr and f"cannot append to {history}: File too large" in full.stderr
    assert history.read_bytes() == before  # the part that was written is cut off again
    agree(store)
    clean(store)
    again = pipeline(store, *argv)
    assert again.returncode == 0, again.stderr
    assert [e["channel"] for e in channel.history(store, "tiny")] == ["a", "b"]
    clean(store)


def test_an_unwritable_store_is_one_line_and_changes_nothing(store: Store, recipes: Path) -> None:
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(store.root), str(store.root)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot make a read-only store as root here (mount: {mounted.stderr.strip()})")
    else:
        for path in [store.root, *store.root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o555)
    try:
        before = sorted(str(p) for p in store.root.rglob("*"))
        for argv in (("build", str(recipes / "tiny.yaml"), "--target", "sm86"),
                     ("promote", "tiny@1.0.0", "--from", SM89), ("gc", "--keep", "1")):
            done = pipeline(store, *argv)
            assert done.returncode == 1, done.stderr
            assert "Traceback" not in done.stderr and done.stderr.startswith("error: "), done.stderr
        assert sorted(str(p) for p in store.root.rglob("*")) == before
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(store.root)], check=True)
        else:
            for path in [store.root, *store.root.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o755)
    clean(store)
    assert pipeline(store, "build", str(recipes / "tiny.yaml"), "--target", "sm86").returncode == 0
    clean(store)


def test_a_leftover_temp_file_is_never_inside_an_artifact(store: Store) -> None:
    """A manifest update (validation, waivers) writes its temp file in the store's staging area, not beside the
    manifest: a process killed there leaves nothing inside a published artifact."""
    artifact = store.resolve("tiny@1.0.0+1")
    store.update_manifest(artifact, lambda manifest: manifest["validation"].update(reason="checked"))
    assert sorted(p.name for p in artifact.path.iterdir() if p.name.startswith(".")) == []
    killed = subprocess.run([sys.executable, "-c", "import sys\nfrom pathlib import Path\n"
                             "from pipeline.store import Store\ns = Store(Path(sys.argv[1]))\n"
                             "s.update_manifest(s.resolve('tiny@1.0.0+1'), lambda m: None)\n", str(store.root)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                                           "TRT_PIPELINE_FAULT": "replace manifest.json"})
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in artifact.path.iterdir() if p.name.startswith(".")] == []
    [left] = [p for p in fsck.check(store) if p.kind == "temp"]
    assert Path(left.where).parent == store.root / STAGING and left.garbage
    assert json.loads((artifact.path / "manifest.json").read_text())["validation"]["reason"] == "checked"
    assert [p.kind for p in store.reclaim()] == ["temp"]
    clean(store)
