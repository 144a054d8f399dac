"""A night's builds and validations on a Ray cluster (`trt-pipeline nightly DIR --cluster ADDRESS`).

Ray schedules; this module says what each task needs and keeps the store. A build task asks for a CPU and the
memory the recipe's model needs (TensorRT-RTX builds ahead of time on any node); a build that needs a GPU
(target 'local', or full TensorRT) asks for the GPU's resource; a validation asks for the resource of the
engine's GPU ('sm89', or the full tag of a full-TensorRT engine), which `trt-pipeline worker` advertises.

Only this process (the driver) publishes into the store: a node builds in its own scratch space and returns the
staged files through Ray's object store, or, when it proves it sees the driver's files (`handover`: the same
machine, a shared filesystem), builds in a box of the driver's handover directory and returns only names and
hashes (and uses the model where it is); the driver publishes them with the same `runner.publisher` the local
executor uses (lock, build-key re-check, atomic rename). A node that dies costs an attempt: the pair is retried
(at most `retries` times) on the nodes that are left, and the night records each attempt. A task no node can run
waits `unschedulable_after` seconds for one to join, then is recorded `unschedulable`. On Ctrl-C the driver
cancels its tasks (they unwind and remove their scratch directories) and publishes nothing more.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pipeline
from pipeline.build import plan as plans
from pipeline.build import runner
from pipeline.digest import file_sha256
from pipeline.errors import PipelineError
from pipeline.files import replace_bytes
from pipeline.nightly import handover as handovers
from pipeline.nightly import node as nodes
from pipeline.nightly import run as nights
from pipeline.nightly.handover import OBJECT_STORE, PATH, Handover
from pipeline.nightly.parcel import File, Parcel, files_of, link_files, put_file, put_model, write_files
from pipeline.nightly.pool import Observer, spread
from pipeline.nightly.regression import Config
from pipeline.nightly.resources import GPU
from pipeline.nightly.task import (
    Task,
    artifact_record,
    failure,
    identity,
    validation_record,
)
from pipeline.recipe import Recipe
from pipeline.stages.parse import digests
from pipeline.store import Artifact, Run, Store, StoreError
from pipeline.trt.backend import Backend
from pipeline.trt.gpu import Probe
from pipeline.trt.target import Target, parse_tag
from pipeline.validate import artifact as validation

RETRIED = ("NodeDiedError", "WorkerCrashedError", "ObjectLostError", "RaySystemError", "LocalRayletDiedError")
log = logging.getLogger("pipeline.nightly.farm")


def build_needs(backend: Backend, target: str) -> dict[str, float]:
    """The GPU resource a build needs besides CPU and memory: none for TensorRT-RTX ahead of time, the node's
    GPU for 'local', the compute capability for full TensorRT (it builds for the GPU it runs on)."""
    if target == "local":
        return {GPU: 1}
    return {} if backend.is_rtx else {target: 1}


def pair_needs(backend: Backend, target: str, memory: int) -> dict[str, float]:
    """What the build of one (recipe, target) pair asks Ray for: a CPU, the memory its model needs, and the GPU
    resource of `build_needs`."""
    return {"CPU": 1, "memory": memory, **build_needs(backend, target)}


def validation_needs(manifest: dict) -> dict[str, float]:
    """The engine's GPU: 'sm89' for TensorRT-RTX, the whole tag for full TensorRT (one GPU model)."""
    tag = parse_tag(manifest["target"]["tag"])
    return {tag.text if tag.gpu else tag.sm: 1}


@dataclass
class Flight:
    """One task of the night on its way through the cluster: a recipe's targets, or one validation."""

    task: Task
    recipe: Recipe | None  # None: a validation of a published artifact (`check`)
    needs: dict[str, float]
    model: dict  # the model record (parse.digests)
    text: bytes = b""  # the recipe's bytes, as loaded for this night (what the node builds from)
    attempts: list[dict] = field(default_factory=list)
    since: float | None = None  # when it was first found that no node can run it
    refs: list = field(default_factory=list)  # the running attempt's returns
    user: dict[str, str] = field(default_factory=dict)  # a build: node.user_files' names -> the files' sha256
    pair: dict | None = None  # a validation: the pair's record, finished when the validation is
    artifact: Any = None  # a validation: the published artifact
    files: Any = None  # a validation: the engine's files (the build's return; None: handed over by path)
    report: dict | None = None  # a validation: the report the node made
    error: str | None = None  # a validation: why it could not run


class Farm:
    """The Ray executor of `nightly.run`: `defer` (planning), `workers`, `run`, `describe` (the report)."""

    def __init__(self, address: str, retries: int = 2, unschedulable_after: float = 60.0,
                 cancel_grace_s: float = 5.0, transport: str = "auto") -> None:
        """`transport`: 'auto' hands files over by path to the nodes that prove they see this machine's files,
        through the object store to the others; 'object-store' sends everything through the object store."""
        if transport not in handovers.TRANSPORTS:
            raise PipelineError(f"transport: expected one of {', '.join(handovers.TRANSPORTS)}, got {transport!r}")
        self.address, self.retries, self.unschedulable_after = address, retries, unschedulable_after
        self.cancel_grace_s, self.transport = cancel_grace_s, transport
        self._names: dict[str, str] = {}
        self._parcels: dict[str, tuple[Parcel, int]] = {}
        self._handovers: dict[Path, Handover | None] = {}
        self._held = contextlib.ExitStack()  # the handover directories, removed by `close`

    @classmethod
    @contextlib.contextmanager
    def connect(cls, address: str, ship_code: bool = True, **options: Any) -> Iterator[Farm]:
        """Join the cluster as its driver (on one of its nodes, usually the head). `ship_code`: the nodes run
        this process's trt-pipeline (uploaded once per night by Ray), not whatever they have installed."""
        farm = cls(address, **options)  # bad options fail before anything connects
        ray = _ray()
        _reachable(address)
        env = {"py_modules": [str(Path(pipeline.__file__).parent)]} if ship_code else {}
        try:
            ray.init(address=address, runtime_env=env, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise PipelineError(f"cannot join the Ray cluster at {address}: {error}",
                                hint="run the nightly on a node of the cluster (usually the head)") from None
        try:
            yield farm
        finally:
            farm.close()
            ray.shutdown()

    def close(self) -> None:
        """Remove the handover directories, with whatever killed or cancelled tasks left in them."""
        self._held.close()
        self._handovers.clear()

    def handover(self, store: str | Path) -> Handover | None:
        """The handover directory in the staging of the store at `store` (made at first use, kept until `close`);
        None when the transport is the object store's, or no directory can be made there."""
        root = Path(store).resolve()
        if self.transport == OBJECT_STORE:
            return None
        if root not in self._handovers:
            try:
                self._handovers[root] = handovers.make(self._held.enter_context(Store(root).staging("handover")))
            except (StoreError, OSError) as error:
                log.warning("no handover directory in %s (%s): files go through the object store", root, error)
                self._handovers[root] = None
        return self._handovers[root]

    # ------------------------------------------------------------ what nightly.run asks

    def defer(self, backend: Backend, target: str) -> bool:
        """Targets the driver cannot resolve (they need the GPU of the node that builds them): planned there."""
        return bool(build_needs(backend, target))

    def workers(self, tasks: list[Task]) -> int:
        return max(1, int(sum(n["Resources"].get("CPU", 0) for n in self._alive())))

    def describe(self) -> dict:
        return {"address": self.address, "transport": self.transport, "nodes": [{"name": n["NodeName"], "id": n["NodeID"],
                                                    "resources": n["Resources"]} for n in self._alive()]}

    def run(self, tasks: list[Task], observer: Observer, checks: tuple[Flight, ...] = ()) -> list[dict]:
        """Build `tasks` and validate what they publish; `checks`: validations of published artifacts
        (`check`), sent at once."""
        ray = _ray()
        remote_build, remote_validate = ray.remote(nodes.build), ray.remote(nodes.validate)
        results: list[dict] = []
        queue, flying, checking = [], {}, {}
        for task in tasks:
            queue += self._flights(task, results, observer)
        for check in checks:
            self._send_validation(check, remote_validate, checking)
        # One task more than the cluster's CPUs in flight: Ray starts it the moment a CPU frees, while this
        # process is still receiving and publishing the task that freed it.
        capacity = self.workers(tasks) + 1
        try:
            while queue or flying or checking:
                alive = self._alive()
                for flight in list(queue):
                    if len(flying) >= capacity:
                        break
                    if self._waits(flight, alive, results, observer, queue) or _cache_busy(flight, flying):
                        continue
                    queue.remove(flight)
                    flying[self._submit(remote_build, flight)] = flight
                    observer.started(flight.task)
                self._check_waiting(flying, alive, results, observer)
                self._check_waiting(checking, alive, results, observer)
                for ref in _ready(list(flying) + list(checking)):
                    if ref in flying:
                        flight = flying.pop(ref)
                        queue += self._landed(flight, results, observer, checking, remote_validate)
                    else:
                        self._validated(checking.pop(ref), results, observer, checking, remote_validate)
                observer.tick()
        except BaseException:
            self._cancel([f.refs[0] for f in [*flying.values(), *checking.values()]])
            raise
        finally:
            self._parcels.clear()
        return results

    def check(self, store: Store, artifact: Artifact, model: Path | None, logs: Path) -> Flight:
        """A validation of a published artifact (`trt-pipeline validate --cluster`), for `run([], observer,
        (flight,))`: its engine goes into the object store, the node offering the engine's GPU validates it
        against the original model (the manifest's, or `model`; checked by sha256 here), and this process
        records the report (also in `flight.report`)."""
        manifest = artifact.manifest()
        record = digests(validation.original_model(manifest, model), manifest.model.sha256)
        engine = _ray().put(files_of(artifact.path, [manifest.engine.file]))
        task = Task(str(manifest.recipe.path), artifact.name, (artifact.tag,), str(store.root), False,
                    Probe(False, (), None), str(logs))
        pair = {**identity(task, artifact.tag), "status": "skipped", "artifact": artifact.ref, "tag": artifact.tag,
                "path": str(artifact.path)}
        return Flight(task, None, {"CPU": 1, **validation_needs(manifest.to_dict())}, record, pair=pair,
                      artifact=artifact, files=engine)

    # ------------------------------------------------------------ builds

    def _flights(self, task: Task, results: list[dict], observer: Observer) -> list[Flight]:
        """The task's targets that run anywhere stay together (shared stages once); each that needs a GPU
        resource travels alone. A recipe that cannot travel fails here."""
        try:
            text = Path(task.recipe_file).read_bytes()
            recipe, backend = plans.load_recipe(Path(task.recipe_file))
            if recipe.sha256 != hashlib.sha256(text).hexdigest():
                raise PipelineError(f"{task.recipe_file} changed while the night was being planned",
                                    hint="run the night again")
            model = digests(recipe.model_path, hasher=Store(Path(task.store)).file_sha256)
        except Exception as error:  # noqa: BLE001 - changed since planning, or cannot travel: its pairs fail
            for target in task.targets:
                self._finish(results, observer, {**failure(task, target, error, log), "wall_s": None})
            return []
        anywhere = tuple(t for t in task.targets if not build_needs(backend, t))
        flights = [Flight(replace(task, targets=anywhere), recipe, pair_needs(backend, anywhere[0], task.estimate_bytes),
                          model, text=text)] if anywhere else []
        return flights + [Flight(replace(task, targets=(t,)), recipe, pair_needs(backend, t, task.estimate_bytes),
                                 model, text=text) for t in task.targets if t not in anywhere]

    def _submit(self, remote: Any, flight: Flight) -> Any:
        task = flight.task
        handover = self.handover(task.store)
        job = nodes.BuildJob(task, str(Path(task.recipe_file).resolve()), flight.text, self._parcel(flight.model),
                             flight.model, self._user_files(flight), handover,
                             _stamps(flight.model) if handover else ())
        custom = {k: v for k, v in flight.needs.items() if k not in ("CPU", "memory")}
        flight.refs = remote.options(num_cpus=flight.needs["CPU"], memory=int(flight.needs["memory"]),
                                     resources=custom, num_returns=2 + len(task.targets), max_retries=0,
                                     scheduling_strategy="SPREAD").remote(job)
        return flight.refs[0]

    def _parcel(self, model: dict) -> Parcel:
        """The model in the object store, put once per night however many tasks and nodes use it."""
        ray = _ray()
        if model["sha256"] not in self._parcels:
            started = time.perf_counter()
            self._parcels[model["sha256"]] = (put_model(model, ray.put), 0)
            log.info("put %s (%d bytes) into the object store in %.2fs", model["path"], model["bytes"],
                     time.perf_counter() - started)
        parcel, users = self._parcels[model["sha256"]]
        self._parcels[model["sha256"]] = (parcel, users + 1)
        return parcel

    def _user_files(self, flight: Flight) -> tuple[File, ...]:
        """The recipe's plugin libraries and timing cache into the object store, for this submission (they are
        small next to a model, and a timing cache changes from one build to the next)."""
        store = Store(Path(flight.task.store))
        found = nodes.user_files(flight.recipe)
        flight.user = {name: store.file_sha256(path, remember=False) for name, path in found.items()}
        return tuple(put_file(path, name, flight.user[name], _ray().put) for name, path in found.items())

    def _landed(self, flight: Flight, results: list[dict], observer: Observer, checking: dict,
                remote_validate: Any) -> list[Flight]:
        """A build task ended: publish what it built, or retry it (its node died), or record why not."""
        ray = _ray()
        task = flight.task
        try:
            meta = ray.get(flight.refs[0])
        except Exception as error:  # noqa: BLE001 - Ray's own errors: a dead node, a crashed process, a bug
            return self._lost(flight, error, results, observer)
        node = self._name(meta["node"])
        shared_dir = None
        cache = self._timing_cache(flight, meta.get("timing_cache"))
        with contextlib.ExitStack() as stack:
            if meta.get("box"):  # whatever is left in the task's box goes when its pairs are published
                stack.callback(handovers.remove, self._handover_of(flight), meta["box"])
            logs = [meta["log"]] + ([cache.pop("line")] if cache else [])
            cached = {"timing_cache": cache} if cache else {}
            for index, result in enumerate(meta["results"]):
                record = {**result, "wall_s": round(meta["wall_s"] / len(meta["results"]), 3), "built_on": node}
                if result["status"] == "built":
                    try:
                        if shared_dir is None:
                            shared_dir = stack.enter_context(Store(Path(task.store)).staging(task.recipe))
                            logs.append(self._receive_shared(flight, meta, result, shared_dir))
                        record, outcome, line = self._publish(flight, meta, result, record, shared_dir, index)
                    except Exception as error:  # noqa: BLE001 - e.g. the store is full: this pair fails
                        record = {**failure(task, result["target"], error, log), "wall_s": None, "built_on": node}
                        line = f"driver: publishing {result['target']} failed: {error}"
                    logs.append(line)
                    if record["status"] != "failed" and self._validation_wanted(flight, outcome):
                        self._validate(flight, {**record, **cached}, outcome, index, checking, remote_validate)
                        continue
                self._finish(results, observer, self._attempted(flight, {**record, **cached}))
            Path(task.log).write_text("\n".join(logs) + "\n")
        self._release(flight)
        return []

    def _timing_cache(self, flight: Flight, grown: bytes | None) -> dict | None:
        """The recipe's timing cache as a night records it ({path, before, after}), with the node's additions
        written back here (atomically) unless the file changed on this machine since it was sent."""
        cache = flight.recipe.spec("serialize").timing_cache
        if cache is None:
            return None
        sent = next((sha for name, sha in flight.user.items() if name.startswith("timing_cache/")), None)
        before = file_sha256(cache.path) if cache.path.is_file() else None
        line = f"driver: timing cache {cache.path} unchanged by the build"
        if grown is not None and before == sent:
            replace_bytes(cache.path, grown)
            line = f"driver: timing cache {cache.path} updated by the build ({len(grown)} bytes)"
        elif grown is not None:
            line = (f"driver: timing cache {cache.path} changed here while the build ran; the build's additions "
                    "are dropped")
            log.warning("%s %s: %s", flight.task.recipe, "+".join(flight.task.targets), line[len("driver: "):])
        after = file_sha256(cache.path) if cache.path.is_file() else None
        return {"path": str(cache.path), "before": sent, "after": after, "line": line}

    def _receive_shared(self, flight: Flight, meta: dict, result: dict, folder: Path) -> str:
        """The files every target of the task shares (the cleaned model), received once."""
        started = time.perf_counter()
        if "handed" in result:
            received = handovers.receive(self._handover_of(flight), str(Path(meta["box"]) / nodes.SHARED),
                                         result["handed"]["shared"], folder)
        else:
            files = _ray().get(flight.refs[1])
            write_files(files, folder)
            received = sum(d.nbytes for d in files.values())
        return (f"driver: received the shared files ({received} bytes, by {meta['transport']}) in "
                f"{time.perf_counter() - started:.2f}s")

    def _receive(self, flight: Flight, meta: dict, result: dict, index: int, staged: Path) -> int:
        """A target's own files into `staged`: renamed from the task's box (its sizes checked, the engine's
        sha256 the one the manifest records), or written from the object store."""
        if "handed" not in result:
            files = _ray().get(flight.refs[2 + index])
            write_files(files, staged)
            return sum(data.nbytes for data in files.values())
        handed, engine = result["handed"]["own"], result["manifest"]["engine"]
        sent = (handed.get(engine["file"]) or [None, ""])[1]
        if sent != engine["sha256"]:
            raise PipelineError(f"the node handed over {engine['file']} with sha256 {str(sent)[:12]}, its manifest "
                                f"says {engine['sha256'][:12]}", hint="run the night again; report it if it repeats")
        return handovers.receive(self._handover_of(flight), str(Path(meta["box"]) / result["target"]), handed, staged)

    def _publish(self, flight: Flight, meta: dict, result: dict, record: dict, shared: Path,
                 index: int) -> tuple[dict, Any, str]:
        """The driver's half of a build: the node's staged files into the store's staging, then published."""
        task, recipe = flight.task, flight.recipe
        manifest = result["manifest"]
        manifest["build"]["node"] = record["built_on"]
        manifest["build"]["transport"] = meta["transport"]
        _driver_paths(manifest, recipe)
        store = Store(Path(task.store))
        target = _target(manifest)
        started = time.perf_counter()
        with store.staging(f"{recipe.name}-{target.sm}") as staged:
            received = self._receive(flight, meta, result, index, staged)
            link_files(result["shared"], shared, staged)
            finish = runner.publisher(store, recipe, Run(task.run), task.force, log, log.info)
            outcome = finish(target, staged, manifest, manifest["build"]["key"])
        reason = "build key unchanged" if outcome.reused else None
        record = {**identity(task, result["target"]), **artifact_record(outcome.artifact, recipe, reason, store),
                  "wall_s": record["wall_s"], "built_on": record["built_on"], "transport": meta["transport"],
                  "model_from": meta["model"]}
        what = f"reused {outcome.artifact.ref} (same build key)" if outcome.reused else \
            f"published {outcome.artifact.path}"
        return record, outcome, (f"driver: {result['target']} built on {record['built_on']}; received {received} "
                                 f"bytes by {meta['transport']} and {what} in {time.perf_counter() - started:.2f}s")

    def _lost(self, flight: Flight, error: Exception, results: list[dict], observer: Observer) -> list[Flight]:
        """No result: retry on the nodes that are left when the node or its process died, else fail."""
        self._release(flight)
        name = type(error).__name__
        node = re.search(r"node ID: ([0-9a-f]+)", str(error))
        flight.attempts.append({"node": self._name(node.group(1)) if node else None, "error": _first(error)})
        if name in RETRIED and len(flight.attempts) <= self.retries:
            log.warning("%s %s: %s; retrying (attempt %d)", flight.task.recipe, "+".join(flight.task.targets),
                        _first(error), len(flight.attempts) + 1)
            flight.refs, flight.since = [], None
            return [flight]
        what = "its node died or its process crashed" if name in RETRIED else "the task failed inside Ray"
        for target in flight.task.targets:
            self._finish(results, observer, self._attempted(flight, {
                **identity(flight.task, target), "status": "failed", "wall_s": None,
                "error": f"{what} {len(flight.attempts)} time(s): {_first(error)}",
                "hint": f"reproduce with `trt-pipeline build {flight.task.recipe_file} --target {target}`"}))
        return []

    # ------------------------------------------------------------ validations

    def _validation_wanted(self, flight: Flight, outcome: Any) -> bool:
        """As the local executor: a new artifact of a recipe with a validate: block, not validated yet."""
        status = outcome.artifact.manifest().validation.status
        return flight.recipe.validate is not None and not outcome.reused and status == "not-run"

    def _validate(self, flight: Flight, record: dict, outcome: Any, index: int, checking: dict,
                  remote: Any) -> None:
        manifest = outcome.artifact.manifest().to_dict()
        # A CPU as well as the GPU: ONNX Runtime's reference run is CPU work (and a validation then reuses a
        # build's worker process: measured, asking for no CPU started a process per validation and was slower).
        by_path = record.get("transport") == PATH  # then the node reads the published engine, or asks for it
        check = Flight(replace(flight.task, targets=(record["target"],)), flight.recipe,
                       {"CPU": 1, **validation_needs(manifest)}, flight.model, pair=record,
                       artifact=outcome.artifact, files=None if by_path else flight.refs[2 + index])
        self._send_validation(check, remote, checking)

    def _send_validation(self, check: Flight, remote: Any, checking: dict) -> None:
        """Submitted at once: Ray queues it until a node with the resource is free (the wait is bounded below
        only when no node offers the resource at all)."""
        manifest = check.artifact.manifest()
        handover = self.handover(check.task.store)
        engine = None
        if check.files is None:
            engine = handovers.stamp(check.artifact.path / manifest.engine.file, manifest.engine.sha256)
        job = nodes.ValidationJob(manifest.to_dict(), self._parcel(check.model), handover,
                                  _stamps(check.model) if handover else (), engine)
        custom = {k: v for k, v in check.needs.items() if k != "CPU"}
        check.refs = [remote.options(num_cpus=check.needs["CPU"], resources=custom, max_retries=0).remote(
            job, [] if check.files is None else [check.files])]  # nested: fetched only if the node can run it
        checking[check.refs[0]] = check

    def _validated(self, check: Flight, results: list[dict], observer: Observer, checking: dict,
                   remote: Any) -> None:
        ray = _ray()
        record = check.pair
        self._release(check)
        try:
            result = ray.get(check.refs[0])
        except Exception as error:  # noqa: BLE001 - a dead node: retried like a build
            node = re.search(r"node ID: ([0-9a-f]+)", str(error))
            check.attempts.append({"node": self._name(node.group(1)) if node else None, "error": _first(error)})
            if type(error).__name__ in RETRIED and len(check.attempts) <= self.retries:
                self._send_validation(check, remote, checking)
                return
            result = {"error": f"validation could not run: {_first(error)}", "node": None, "log": ""}
        if result.get("resend"):  # the node can run the engine but cannot see it: it goes by object store
            check.files = ray.put(files_of(check.artifact.path, [check.artifact.manifest().engine.file]))
            self._send_validation(check, remote, checking)
            return
        node = self._name(result["node"]) if result.get("node") else None
        with open(record["log"], "a") as handle:  # the build task's log (or the validation's own)
            handle.write(result.get("log", "") + f"driver: {record['target']} validated on {node}\n")
        report = check.report = result.get("report")
        if report is not None and report.get("recorded", True):
            validation.record(Store(Path(check.task.store)), check.artifact, {**report, "node": node})
        elif report is None:
            check.error = result.get("error")
            log.error("validation of %s could not run: %s", check.artifact.ref, check.error)
        manifest = check.artifact.manifest()
        record = {**record, "validation": validation_record(manifest.validation, check.recipe, manifest.precision),
                  "validated_on": node}
        self._finish(results, observer, self._attempted(check, record))

    # ------------------------------------------------------------ waiting, cancelling

    def _waits(self, flight: Flight, alive: list[dict], results: list[dict], observer: Observer,
               queue: list[Flight]) -> bool:
        """True while no node can run the flight; after `unschedulable_after` it is recorded and dropped."""
        if _feasible(flight.needs, alive):
            flight.since = None
            return False
        flight.since = flight.since or time.monotonic()
        if time.monotonic() - flight.since >= self.unschedulable_after:
            queue.remove(flight)
            self._unschedulable(flight, results, observer)
        return True

    def _check_waiting(self, flying: dict, alive: list[dict], results: list[dict], observer: Observer) -> None:
        """A submitted task whose only fitting node left before it started waits in Ray forever: bounded here."""
        for ref, flight in list(flying.items()):
            if _feasible(flight.needs, alive):
                flight.since = None
                continue
            flight.since = flight.since or time.monotonic()
            if time.monotonic() - flight.since >= self.unschedulable_after:
                _ray().cancel(ref, force=True)
                del flying[ref]
                self._release(flight)
                self._unschedulable(flight, results, observer)

    def _unschedulable(self, flight: Flight, results: list[dict], observer: Observer) -> None:
        needs = ", ".join(f"{k}={_amount(k, v)}" for k, v in sorted(flight.needs.items()))
        reason = (f"no node of the cluster offers {needs} (waited {self.unschedulable_after:g}s)")
        hint = ("add a node that does: `trt-pipeline worker --address HEAD` on a machine with that GPU, or "
                "`ray start --address HEAD --resources '{...}'`")
        if flight.pair is not None:
            record = {**flight.pair, "validation": {"status": "unschedulable", "reason": reason, "hint": hint,
                                                    "max_errors": {}, "tolerances": {}}}
            self._finish(results, observer, self._attempted(flight, record))
            return
        for target in flight.task.targets:
            self._finish(results, observer, self._attempted(flight, {
                **identity(flight.task, target), "status": "unschedulable", "error": reason, "hint": hint,
                "wall_s": None}))

    def _cancel(self, refs: list) -> None:
        """Ctrl-C: every task is asked to stop (it unwinds and removes its scratch directory); what has not
        stopped after the grace period is killed."""
        ray = _ray()
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        with contextlib.suppress(Exception):
            _, stuck = ray.wait(refs, num_returns=len(refs), timeout=self.cancel_grace_s) if refs else ([], [])
            for ref in stuck:
                ray.cancel(ref, force=True)

    # ------------------------------------------------------------ bookkeeping

    def _finish(self, results: list[dict], observer: Observer, record: dict) -> None:
        results.append(record)
        observer.finished(record)

    def _attempted(self, flight: Flight, record: dict) -> dict:
        if not flight.attempts:
            return record
        return {**record, "retried": True, "attempts": list(flight.attempts)}

    def _release(self, flight: Flight) -> None:
        """One submission of `flight` ended: a model no task of the night needs any more leaves the object
        store (the driver drops its references; Ray frees the objects)."""
        sha256 = flight.model["sha256"]
        parcel, users = self._parcels.get(sha256) or (None, 0)
        if users > 1:
            self._parcels[sha256] = (parcel, users - 1)
        else:
            self._parcels.pop(sha256, None)

    def _handover_of(self, flight: Flight) -> Handover:
        found = self._handovers.get(Path(flight.task.store).resolve())
        if found is None:
            raise PipelineError("a node handed files over by path, but this night has no handover directory",
                                hint="this is a bug: report it")
        return found

    def _alive(self) -> list[dict]:
        alive = [n for n in _ray().nodes() if n.get("Alive")]
        self._names.update({n["NodeID"]: n.get("NodeName") or n["NodeManagerAddress"] for n in alive})
        return alive

    def _name(self, node_id: str) -> str:
        if node_id not in self._names:
            self._names.update({n["NodeID"]: n.get("NodeName") or n["NodeManagerAddress"] for n in _ray().nodes()})
        return self._names.get(node_id, node_id[:12])


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PipelineError("--cluster needs Ray, which is not installed",
                            hint="pip install 'trt-pipeline[cluster]'") from None
    return ray


def _reachable(address: str) -> None:
    """Fail in a second, with one line, when nothing listens at ADDRESS (Ray itself retries for minutes)."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as error:
        raise PipelineError(f"cannot reach the Ray head at {address}: {getattr(error, 'strerror', None) or error}",
                            hint="start one with `ray start --head --port PORT` and pass --cluster HOST:PORT") from None


def build(farm: Farm, recipe_file: Path, store: Store, targets: tuple[str, ...], force: bool, probe: Probe,
          folder: Path, observer: Observer) -> list[dict]:
    """`trt-pipeline build RECIPE --cluster`: a night of one recipe, planned as the nightly plans its pairs
    (unchanged source keys are reused here, targets that need a node's GPU are planned there) and built, published
    and validated by `farm` as the nightly's are; one record per target, in the recipe's order. A recipe with a
    problem raises here, before anything is sent. `folder`: where the tasks' logs are written."""
    recipe, backend = plans.load_recipe(recipe_file)
    here = tuple(t for t in targets or recipe.targets if not farm.defer(backend, t))
    if here:
        plans.make_plan(recipe, backend, probe, here)  # every problem at once (the nightly's planning records them)
    (folder / "logs").mkdir(exist_ok=True)
    tasks, known, order = nights.plan_pairs([recipe_file], store, folder, probe, targets, force,
                                            Config().memory_per_job, farm.defer)
    tasks = spread(tasks, farm.workers(tasks)) if tasks else []
    observer.planned(len(order), len(order) - len(known), farm.workers(tasks) if tasks else 0)
    for record in known:
        observer.finished(record)
    rank = {target: index for index, (_, target) in enumerate(order)}
    return sorted(known + (farm.run(tasks, observer) if tasks else []), key=lambda r: rank.get(r["target"], 0))


def _stamps(model: dict) -> tuple[handovers.Stamp, ...]:
    """The model's files as this machine sees them now; none when one is gone (the object store's copy then)."""
    try:
        return handovers.model_stamps(model)
    except OSError:
        return ()


def _driver_paths(manifest: dict, recipe: Recipe) -> None:
    """A node built with its copies of the plugin libraries and timing cache: the manifest names the driver's
    files, as a local build's does (the hashes are the same: the copies were checked)."""
    serialize = recipe.spec("serialize")
    for plugin, path in zip((manifest.get("network") or {}).get("plugins") or [], serialize.plugins):
        plugin["path"] = str(path)
    cache = (manifest.get("config") or {}).get("timing_cache")
    if cache and serialize.timing_cache is not None:
        cache["path"] = str(serialize.timing_cache.path)


def _cache_busy(flight: Flight, flying: dict) -> bool:
    """Builds sharing a timing cache run one at a time, as in the local executor: each starts from the last's."""
    cache = flight.task.timing_cache
    return bool(cache) and any(other.task.timing_cache == cache for other in flying.values())


def _target(manifest: dict) -> Target:
    block = manifest["target"]
    return Target(block["name"], block["tag"], block["compute_capability"], block["gpu"], parse_tag(block["tag"]).sm)


def _feasible(needs: dict[str, float], alive: list[dict]) -> bool:
    return any(all(n["Resources"].get(k, 0) >= v for k, v in needs.items()) for n in alive)


def _ready(refs: list) -> list:
    if not refs:
        return []
    ray = _ray()
    ready, rest = ray.wait(refs, num_returns=1, timeout=1.0)
    if ready and rest:
        ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
    return ready


def _amount(key: str, value: float) -> str:
    return f"{value / (1 << 30):.1f}GiB" if key == "memory" else f"{value:g}"


def _first(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
