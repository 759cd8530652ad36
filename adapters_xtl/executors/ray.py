"""The Ray executor: a plan's cells spread over Ray actors, each with its own loaded backbone.

Ray places the actors (CPUs and GPUs per worker, fractional GPUs to pack several on one card,
any number of machines) and reports a worker process that dies; this module only says which
piece of work goes next. Work items are the plan's intermediate modules and its cells; a cell
is sent out only once every intermediate module it stands on is in the registry (trained by a
worker before it, or reused), so a module is trained once however many workers there are.

The guarantees are the local executor's, because the driver runs runner.py's steps itself:
the run folder is locked (`runner.run_lock`), repaired on open (`runner.open_run`), and every
finished cell is committed by the driver alone (`runner.commit_cell`: the record, then the rows
appended to results.jsonl), so no row is written twice or torn whatever a worker does. Workers
write only to the registry (atomic, locked) and to their cell's checkpoint folder, so a cell
whose worker was killed resumes from its checkpoint on another worker (at most `max_retries`
times) and reaches the same weights. A cell that fails with an XtlError (bad data, a module
that does not fit) fails once, with its message; the others go on, and the run ends with one
XtlError listing the failures (finished cells stay committed: fix and run again).

`ray` is the optional `scale` extra: nothing here imports it until a RayExecutor is made.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from .. import runner
from ..errors import XtlError
from ..progress import emit
from ..recipe import Plan
from ..store.registry import Registry

INSTALL_FIX = 'pip install "adapters_xtl[scale]" (or pip install "ray[default]>=2.9"), then run again'
# the driver's settings a worker needs too (offline mode, caches, where speed is recorded); a
# worker's own value wins, so a machine can point its caches elsewhere
FORWARDED_ENV = ("XTL_", "HF_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM")
# a Ray started by the executor itself (no --address): small object store, no dashboard
LOCAL_OBJECT_STORE_BYTES = 512 * 1024 ** 2


def import_ray():
    """`ray`, or an XtlError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise XtlError("the ray executor needs Ray, which is not installed", where="--executor ray",
                       fix=INSTALL_FIX) from None
    return ray


class CellWorker:
    """The body of one Ray actor: loads the backbone once, then trains modules and runs cells
    of one plan on it, returning outcomes (the driver commits them). Errors come back as
    values: an XtlError is the user's (its message), anything else a bug (its traceback)."""

    def __init__(self, plan: Plan, spec: dict):
        for k, v in spec["env"].items():
            os.environ.setdefault(k, v)
        self.error: str | None = None
        self.backbone = None
        self.load_seconds = 0.0
        try:
            import torch

            torch.set_num_threads(spec["threads"])  # as many as the CPUs Ray gave this worker
            from ..tasks import TaskCatalog

            self.catalog = TaskCatalog(include=spec["catalog"])
            self.jobs = {job.name: job for job in plan.modules}
            self.cells = {c.key: c for c in plan.cells}
            with self.catalog.active():
                cfgs = runner.train_configs(plan)
            self.work = runner.CellWork(plan, Path(spec["run_dir"]), spec["rid"], Registry(spec["registry"]), cfgs)
            t0 = time.perf_counter()
            with self.catalog.active():
                self.backbone = runner.plan_backbone(plan, spec["device"])
            self.load_seconds = time.perf_counter() - t0
        except XtlError as e:
            self.error = str(e)
        except Exception:  # noqa: BLE001 - reported by the driver, which stops the run
            self.error = traceback.format_exc()

    def info(self) -> dict:
        import torch

        return {"pid": os.getpid(), "host": socket.gethostname(), "error": self.error,
                "threads": torch.get_num_threads(), "load_seconds": round(self.load_seconds, 2),
                "backbone": self.backbone.fingerprint.short() if self.backbone else None,
                "device": str(self.backbone.device) if self.backbone else None}

    def module(self, name: str) -> dict:
        return self._do(lambda rec: {"line": runner.ensure_module(self.work, self.jobs[name], self.backbone, rec)})

    def cell(self, key: str) -> dict:
        return self._do(lambda rec: {"outcome": runner.run_cell(self.work, self.cells[key], self.backbone, rec)})

    def _do(self, fn) -> dict:
        rec = _Recorder()
        try:
            with self.catalog.active():
                return {**fn(rec), "records": rec.records}
        except XtlError as e:
            return {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - a bug in one cell must not stop the others
            return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


class _Recorder:
    """The worker's progress callback: keeps each training job's logged points (loss, lr, dev
    metrics) so that the driver can hand them to its tracker as "record" events."""

    def __init__(self):
        self.records: list[tuple[str, int, int | None, dict]] = []

    def __call__(self, ev) -> None:
        if ev.kind != "advance" or ev.job.startswith("grid "):
            return
        fields = {k: v for k, v in ev.fields.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and (k in ("loss", "lr") or
                                                                                  k.startswith("dev_"))}
        if fields:
            self.records.append((ev.job, ev.completed, ev.total, fields))


@dataclass
class _Item:
    kind: str  # "module" | "cell"
    key: str  # module name | cell key
    label: str
    needs: set[str] = field(default_factory=set)  # module names not yet in the registry
    attempts: int = 0  # how many workers died while running it


@dataclass
class _Worker:
    wid: int
    actor: object
    pid: int | None = None
    host: str | None = None
    current: _Item | None = None
    finished: int = 0  # work items it finished


class CellsFailed(XtlError):
    """Some cells failed (listed); the others are committed."""

    def __init__(self, failures: dict[str, str], total: int, run_dir: Path):
        self.failures = failures
        lines = "\n".join(f"  - {label}: {msg}" for label, msg in failures.items())
        super().__init__(f"{len(failures)} of {total} work items failed (the others finished and are kept):\n{lines}",
                         where=str(run_dir), fix="fix the cause and run again: finished cells are reused from the cache")


class RayExecutor:
    """Runs a plan on Ray: `workers` actors, each with `cpus_per_worker` CPUs (its torch
    threads) and `gpus_per_worker` GPUs (a fraction packs several workers on one GPU), each
    loading the backbone once. `address`: "auto" or "HOST:PORT" joins a running cluster
    (`ray start --head`); None starts a private one on this machine for the run (or uses the
    one `ray.init` already started in this process). A cell whose worker dies is retried on
    another at most `max_retries` times."""

    def __init__(self, workers: int = 1, *, address: str | None = None, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, device: str | None = None, max_retries: int = 2,
                 console: Console | None = None):
        def bad(what, value, fix):
            raise XtlError(f"{what} must be {fix.split(':')[0]}, got {value!r}", where=what, fix=fix)

        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            bad("--workers", workers, "a whole number >= 1: how many Ray actors (each loads the backbone)")
        for what, v, low in (("--cpus-per-worker", cpus_per_worker, 0.0), ("--gpus-per-worker", gpus_per_worker, 0.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low or (
                    what == "--cpus-per-worker" and v <= 0):
                bad(what, v, "a number > 0: e.g. 1, or 0.5 to share" if what == "--cpus-per-worker" else
                    "a number >= 0: e.g. 1, or 0.25 to pack four workers on one GPU")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            bad("max_retries", max_retries, "a whole number >= 0: tries after a worker dies")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            bad("--address", address, "auto or HOST:PORT: the head node `ray start --head` printed")
        if gpus_per_worker == 0 and device and device.startswith("cuda"):
            raise XtlError(f"--device {device} needs a GPU per worker", where="--gpus-per-worker",
                           fix="give each worker a share of a GPU, e.g. --gpus-per-worker 0.5")
        self.workers = workers
        self.address = address
        self.cpus_per_worker = float(cpus_per_worker)
        self.gpus_per_worker = float(gpus_per_worker)
        self.device = device or ("cuda" if gpus_per_worker > 0 else "cpu")
        self.max_retries = max_retries
        self.console = console
        self.stats: dict = {}  # the last run's: workers started, deaths, retries, failures, seconds
        import_ray()

    # -- the run --------------------------------------------------------------------------------
    def run(self, plan: Plan, run_dir: Path, *, registry: Registry, backbone=None, progress=None) -> Path:
        if backbone is not None:
            raise XtlError("the ray executor loads the backbone in each worker; it cannot use one loaded here",
                           where="backbone", fix="leave backbone out (the recipe names it)")
        run_dir = Path(run_dir).absolute()
        self.stats = {"workers_started": 0, "worker_deaths": 0, "retries": 0, "failed": {}}
        with plan.recipe.catalog().active():
            runner.train_configs(plan)  # every setting checked before any worker starts
            catalog = [str(Path(f).absolute()) for f in plan.recipe.catalog().folders]
            with runner.run_lock(run_dir):
                return self._run(plan, run_dir, registry, catalog, progress)

    def _run(self, plan: Plan, run_dir: Path, registry: Registry, catalog: list[str], progress) -> Path:
        from contextlib import nullcontext

        console = self.console or Console()
        state = runner.open_run(plan, run_dir, console)
        if not state.todo:
            console.print(f"[green]all {len(plan.cells)} cells already done[/] (cached in {run_dir / 'cells'})")
            return state.results
        ray = import_ray()
        started = self._connect(ray)
        actors: list = []
        try:
            self._check_room(ray, console)
            with (nullcontext(progress) if progress is not None else runner.make_progress(console)) as progress:
                self._schedule(ray, plan, state, registry, catalog, progress, console, actors)
        finally:
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            if started:
                ray.shutdown()
        return state.results

    def _connect(self, ray) -> bool:
        """Join the cluster; True when this call started Ray (and so stops it after the run)."""
        if ray.is_initialized():
            return False
        if self.address:
            try:
                ray.init(address=self.address, log_to_driver=True)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise XtlError(f"could not join the Ray cluster at {self.address}: {e}", where="--address",
                               fix="start one with `ray start --head` (it prints the address), or leave --address "
                               "out to run on this machine") from None
        else:
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=True)
        return True

    def _check_room(self, ray, console: Console) -> None:
        res = ray.cluster_resources()
        cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
        fit = min(math.floor(cpus / self.cpus_per_worker + 1e-9),
                  math.floor(gpus / self.gpus_per_worker + 1e-9) if self.gpus_per_worker else self.workers)
        if fit < 1:
            raise XtlError(f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs: not enough for one worker of "
                           f"{self.cpus_per_worker:g} CPUs and {self.gpus_per_worker:g} GPUs", where="--cpus-per-worker",
                           fix="ask for less per worker, or add machines (`ray start --address HEAD:PORT`)")
        if fit < self.workers:
            console.print(f"the Ray cluster has room for {fit} of {self.workers} workers now ({cpus:g} CPUs, "
                          f"{gpus:g} GPUs); the others start when it has room")

    def _spec(self, state: runner.RunState, registry: Registry, catalog: list[str]) -> dict:
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        return {"env": env, "threads": max(1, int(self.cpus_per_worker)), "device": self.device, "catalog": catalog,
                "run_dir": str(state.run_dir), "rid": state.rid, "registry": str(registry.root)}

    def _schedule(self, ray, plan: Plan, state: runner.RunState, registry: Registry, catalog: list[str], progress,
                  console: Console, actors: list) -> None:
        from ray.exceptions import RayError

        t_start = time.perf_counter()
        actor_cls = ray.remote(CellWorker).options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                                   max_restarts=0, max_task_retries=0)
        plan_ref = ray.put(plan)
        spec = self._spec(state, registry, catalog)
        workers: dict[int, _Worker] = {}
        inflight: dict = {}  # ObjectRef -> (worker id, item | None for its start)
        idle: deque[int] = deque()
        stats = self.stats
        spare = self.workers * (self.max_retries + 1)  # replacements for dead workers, at most

        def start_worker() -> None:
            wid = stats["workers_started"] = stats["workers_started"] + 1
            actor = actor_cls.remote(plan_ref, spec)
            actors.append(actor)
            workers[wid] = _Worker(wid, actor)
            inflight[actor.info.remote()] = (wid, None)

        modules = runner.needed_modules(plan, state.todo)
        pending = {m.name for m in modules}
        ready: deque[_Item] = deque(_Item("module", m.name, f"module {m.name}") for m in modules)
        blocked: list[_Item] = []
        cells = {c.key: c for c in state.todo}
        for c in state.todo:
            item = _Item("cell", c.key, c.label, set(c.intermediates) & pending)
            (blocked if item.needs else ready).append(item)
        failed: dict[str, str] = stats["failed"]
        grid, total = f"grid {plan.recipe.name}", len(plan.cells)
        done = total - len(state.todo)

        def report(w: _Worker, kind: str = "advance", **extra) -> None:
            """One line per worker in a log (a bar on a terminal): what it runs now."""
            emit(progress, kind, f"worker {w.wid}", w.finished, None, work=w.current.label if w.current else "idle",
                 pid=w.pid, **extra)

        def running() -> str:
            return ", ".join(f"w{w.wid} {w.current.label}" for w in workers.values() if w.current) or "-"

        def fail(item: _Item, msg: str) -> None:
            failed[item.label] = msg
            console.print(f"  [red]failed[/] {item.label}: {msg}")
            if item.kind == "module":  # the cells on top of it cannot run
                for other in [b for b in blocked if item.key in b.needs]:
                    blocked.remove(other)
                    fail(other, f"its intermediate module {item.key} failed")

        for _ in range(self.workers):
            start_worker()
        emit(progress, "start", grid, done, total, running="starting workers")
        while ready or inflight:
            while ready and idle:
                w, item = workers[idle.popleft()], ready.popleft()
                w.current = item
                call = w.actor.module if item.kind == "module" else w.actor.cell
                inflight[call.remote(item.key)] = (w.wid, item)
                report(w)
            if not inflight:  # work left, and no worker to do it
                for item in list(ready):
                    fail(item, "no worker left to run it (workers kept dying)")
                ready.clear()
                break
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            wid, item = inflight.pop(ref)
            w = workers[wid]
            try:
                res = ray.get(ref)
            except RayError as e:  # the worker process died (killed, out of memory, its machine gone)
                stats["worker_deaths"] += 1
                workers.pop(wid)
                try:
                    ray.kill(w.actor)  # gone already, or in a state we do not trust
                except Exception:  # noqa: BLE001
                    pass
                where = f"worker {wid}" + (f" (PID {w.pid} on {w.host})" if w.pid else "")
                if item is not None:
                    report(w, "end", died=True)
                    w.current = None
                    item.attempts += 1
                    if item.attempts > self.max_retries:
                        fail(item, f"its worker died {item.attempts} times (last: {where}: {type(e).__name__})")
                    else:
                        stats["retries"] += 1
                        console.print(f"  {where} died while running {item.label}; retrying it on another worker "
                                      f"(try {item.attempts + 1} of {self.max_retries + 1})")
                        ready.appendleft(item)
                else:
                    console.print(f"  {where} died while starting ({type(e).__name__})")
                if spare > 0 and (ready or blocked):
                    spare -= 1
                    start_worker()
                continue
            if item is None:  # a worker's start
                if res["error"]:
                    raise XtlError(f"worker {wid} could not start: {res['error']}", where="ray worker",
                                   fix="the same error stops a local run: fix it there first (`xtl run` without "
                                   "--executor)")
                w.pid, w.host = res["pid"], res["host"]
                console.print(f"  worker {wid}: PID {w.pid} on {w.host}, backbone {res['backbone']} on {res['device']} "
                              f"loaded in {res['load_seconds']:.1f}s, {res['threads']} torch threads")
                idle.append(wid)
                report(w, "start")
                continue
            w.current = None
            w.finished += 1
            idle.append(wid)
            report(w)
            for job, completed, of, fields in res.get("records", ()):  # the worker's curves, for trackers
                emit(progress, "record", job, completed, of, **fields)
            if "error" in res:
                if res.get("traceback"):
                    console.print(res["traceback"], markup=False, highlight=False)
                fail(item, res["error"])
                continue
            if item.kind == "module":
                if res["line"]:
                    console.print(f"  {res['line']} (worker {wid})")
                pending.discard(item.key)
                for other in [b for b in blocked if item.key in b.needs]:
                    other.needs.discard(item.key)
                    if not other.needs:
                        blocked.remove(other)
                        ready.append(other)
            else:
                outcome, cell = res["outcome"], cells[item.key]
                if outcome.note:
                    console.print(f"  {cell.label}: {outcome.note}")
                runner.commit_cell(state, cell, outcome)
                done += 1
                console.print(runner.cell_line(cell, outcome, f", worker {wid}"))
            emit(progress, "advance", grid, done, total, running=running())
        for w in workers.values():
            if w.pid is not None:
                report(w, "end")
        emit(progress, "end", grid, done, total)
        stats["seconds"] = round(time.perf_counter() - t_start, 2)
        if failed:
            raise CellsFailed(dict(failed), len(modules) + len(state.todo), state.run_dir)
