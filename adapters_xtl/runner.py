"""Run a plan's cells resumably: the steps every executor shares, and the in-process run.

The driver opens the run folder (`open_run`, under `run_lock`) and commits each finished cell
(`commit_cell`: it alone writes the cell records and results.jsonl); a worker, this process or a
Ray actor with its own backbone (executors/), trains intermediate modules (`ensure_module`) and
runs cells (`run_cell`), writing only to the registry and the cell's checkpoint folder.
`run_plan` is the in-process sequence of these steps on one loaded backbone: intermediate
modules first, then every cell (the local executor, the reference).

A kill at any moment costs at most the cell in flight, and never duplicates or loses a row:

- One `xtl run` per run folder: `<run>/.lock` is held for the whole run (an OS lock, gone when
  its process dies, so a killed run never blocks the next); a second run is refused naming the PID.
- A finished cell commits in one atomic write, `cells/<key>.json`, which holds its rows; only
  then are the rows appended to `results.jsonl`. Every run starts by closing that window
  (`repair_results`): a half line a kill left at the end of `results.jsonl` is cut, and the file
  is made to hold exactly the rows of every cell record, once each (one row per cell, language
  and metric).
- A module registered before the kill is not trained again: the rerun reuses the version this run
  folder (`<run>/run.json` holds its id) registered for that cell (`cell` and `run` in its
  manifest) or for that intermediate (`train_key`; any run's, when the recipe has
  `reuse_registry`), and a training cut short resumes from its checkpoint (trainer.py) to the
  same weights.
- Every training setting of the plan is checked before any work starts.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from .cost import estimate_hours, measured_peak_flops  # noqa: F401
from .errors import XtlError
from .evaluation import append_results, interval_fields, read_results, write_predictions
from .formats.intervals import score_intervals
from .io import TMP_PREFIX, LockHeld, atomic_write_bytes, exclusive_lock, repair_jsonl_tail
from .recipe import Cell, ModuleJob, Plan
from .store.registry import Registry
from .tasks import get_task, training_task
from .trainer import TrainConfig


def make_progress(console: Console | None = None):
    """Live bars on a terminal, plain timestamped lines in a log (see progress.py)."""
    from .progress import reporter_for

    return reporter_for(console)


def _atomic_json(path: Path, obj) -> None:
    from .io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, indent=2, ensure_ascii=False)


RUN_LOCK = ".lock"
RUN_ID = "run.json"
ROW_KEY = ("cell", "language", "metric")  # one row per cell, language and metric
# labels a study puts into a job's `train` to tell otherwise equal jobs apart (steps study: the
# step a snapshot is taken at); part of the job's key, not a training setting
JOB_LABELS = frozenset({"snapshot_step"})


def _train_config(raw: dict, where: str, allow_untrained: bool = False) -> TrainConfig:
    """A job's resolved `train:` as a TrainConfig; a bad value is TrainConfig's one XtlError."""
    return TrainConfig.resolve(None, {k: v for k, v in raw.items() if k not in JOB_LABELS}, where=where,
                               allow_untrained=allow_untrained)


def train_configs(plan: Plan) -> dict[str, TrainConfig]:
    """Every training setting of the plan checked up front (module name / cell key -> config), so
    `steps: "abc"` in the last cell fails before the first module trains, not hours later. An
    intermediate may have 0 steps (an untrained-module baseline: the steps study's step 0); a
    target may not."""
    recipe = plan.recipe
    cfgs = {job.name: _train_config(job.train, f"{recipe.file}: intermediate {job.task}", allow_untrained=True)
            for job in plan.modules}
    cfgs.update({c.key: _train_config(c.train, f"{recipe.file}: target {c.target}") for c in plan.cells})
    return cfgs


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `<run_dir>/.lock` for the block; refuse at once (XtlError) while another process holds it.

    The lock is the kernel's (flock): it ends with its holder however that ends, so a run killed
    with SIGKILL leaves no stale lock behind, only the empty lock file."""
    run_dir = Path(run_dir)
    with ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(run_dir / RUN_LOCK))
        except LockHeld as e:
            who = f"PID {e.pid}" if e.pid else "another process"
            host = e.holder.split()[1] if len(e.holder.split()) > 1 else None
            raise XtlError(f"{who}{f' on {host}' if host else ''} is already running in this folder",
                           where=str(run_dir),
                           fix="wait for that run to finish (then run again: finished cells are reused), or give "
                           "this one another output folder (--out); the lock is released when that process ends")
        yield


def run_id(run_dir: Path) -> str:
    """This run folder's identity, recorded in the modules it registers (made once, under the lock)."""
    from .io import atomic_write_json

    path = Path(run_dir) / RUN_ID
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        rid = secrets.token_hex(8)
        atomic_write_json(path, {"run_id": rid, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return rid


def _existing_run_id(run_dir: Path | None) -> str | None:
    """The run id, only when the folder already has one (a dry-run writes nothing)."""
    try:
        return str(json.loads((Path(run_dir) / RUN_ID).read_text(encoding="utf-8"))["run_id"]) if run_dir else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ROW_KEY)


def _drop_cells(results: Path, cells: set[str]) -> None:
    """Rewrite `results` (atomically) without the rows of `cells`; every other line is kept as is."""
    kept = []
    for line in results.read_bytes().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not (isinstance(row, dict) and row.get("cell") in cells):
            kept.append(line)
    atomic_write_bytes(results, b"".join(kept))


def repair_results(run_dir: Path) -> dict:
    """Make `results.jsonl` agree with the cell records (call under the run lock): a half-written
    last line is cut, and for every record the file holds exactly the record's rows (missing
    rows appended; rows that differ from it or repeat, from runs of older versions, replaced).
    Rows of cells without a record are left alone: their cell runs again and replaces them.
    Returns what was done and the cells that have rows now."""
    results = Path(run_dir) / "results.jsonl"
    cut = repair_jsonl_tail(results)
    expected: dict[str, list[dict]] = {}
    for rec_path in sorted((Path(run_dir) / "cells").glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
            key, rows = rec["cell"]["key"], rec.get("rows")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a cell record of ours (those are written atomically)
        if isinstance(rows, list):  # records of older versions hold no rows: their rows were appended first
            expected[key] = rows
    actual: dict[str, list[dict]] = {}
    for r in read_results(results):
        if isinstance(r, dict) and r.get("cell"):
            actual.setdefault(r["cell"], []).append(r)

    def part_of(have: list[dict], want: list[dict]) -> bool:
        return len({_row_key(r) for r in have}) == len(have) and all(r in want for r in have)

    replace = {c for c, want in expected.items() if c in actual and not part_of(actual[c], want)}
    if replace:
        _drop_cells(results, replace)
    missing = [r for c, want in expected.items() for r in want if c in replace or r not in actual.get(c, [])]
    if missing:
        append_results(results, missing)
    return {"cut": cut, "replaced": sorted(replace), "appended": len(missing),
            "cells": set(actual) | set(expected)}


def _clean_leftovers(run_dir: Path) -> None:
    """Temp files of this folder's atomic writes that a kill stranded (we hold the lock: no writer)."""
    for folder in (run_dir, run_dir / "cells"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith(TMP_PREFIX) and p.is_file():
                    p.unlink(missing_ok=True)


def read_run_rows(run_dir: Path) -> list[dict]:
    """The rows of a run folder, one per (cell, language, metric): the last one written wins, so
    a file that older versions filled twice reads as if written once."""
    rows: dict[tuple, dict] = {}
    for r in read_results(Path(run_dir) / "results.jsonl"):
        key = _row_key(r)
        rows.pop(key, None)
        rows[key] = r
    return list(rows.values())


def describe(plan: Plan, registry: Registry, backbone_fp=None, run_dir: Path | None = None) -> dict:
    """What a run would do: modules to train vs reuse, cells to run vs cached, training steps.
    Checks every training setting first (XtlError)."""
    cfgs = train_configs(plan)
    reuse = [m.name for m in plan.modules if _find_module(registry, m, backbone_fp) is not None]
    cached = {c.key for c in plan.cells if run_dir and (run_dir / "cells" / f"{c.key}.json").exists()}
    todo = [c for c in plan.cells if c.key not in cached]
    needed = {n for c in todo for n in c.intermediates}
    to_train = [m for m in plan.modules if m.name not in reuse and m.name in needed]
    rid = _existing_run_id(run_dir)
    trained = {c.key for c in todo if rid and _find_registered(registry, c.name, {"cell": c.key, "run": rid},
                                                                  backbone_fp) is not None}
    return {
        "cells_trained": trained,
        "cells": len(plan.cells),
        "cells_cached": len(cached),
        "cached_keys": cached,
        "modules_to_train": [m.name for m in to_train],
        "modules_reused": reuse,
        "training_steps": sum(cfgs[m.name].steps for m in to_train)
        + sum(cfgs[c.key].steps for c in todo if c.key not in trained and get_task(c.target).format != "retrieval"),
    }


def _find_module(registry: Registry, job: ModuleJob, backbone_fp=None, run: str | None = None):
    """The newest version of `job.name` trained for this job (`train_key`) on this backbone; with
    `run`, only one this run folder registered."""
    return _find_registered(registry, job.name, {"train_key": job.key, **({"run": run} if run else {})}, backbone_fp)


def _find_registered(registry: Registry, name: str, match: dict, backbone_fp=None):
    try:
        versions = registry.versions(name)
    except XtlError:
        return None
    for v in reversed(versions):
        man = registry.manifest(name, v)
        if all(getattr(man, k, None) == want for k, want in match.items()) and (
                backbone_fp is None or man.backbone == backbone_fp):
            return man
    return None


def run_plan(plan: Plan, run_dir: Path, *, registry: Registry | None = None, backbone=None,
             console: Console | None = None, device: str | None = None, progress=None) -> Path:
    """Run every cell of `plan` not yet finished in `run_dir`, one after another in this process
    on one loaded backbone (the local executor, the reference for the others); return the
    results file. `progress` is a callback for ProgressEvents (default: bars on a terminal,
    lines in a log). Refused (XtlError) while another process runs in `run_dir`."""
    run_dir = Path(run_dir)
    with plan.recipe.catalog().active():
        cfgs = train_configs(plan)
        with run_lock(run_dir):
            return _run_plan(plan, run_dir, cfgs, registry=registry, backbone=backbone, console=console,
                             device=device, progress=progress)


# -- the steps every executor shares: the driver opens the run folder and commits cells; a worker
# (this process, or a Ray actor with its own backbone) trains modules and runs cells --------------


@dataclass
class RunState:
    """A run folder opened by its one driver, under the run lock: what is left to do."""

    plan: Plan
    run_dir: Path
    rid: str
    with_rows: set[str]  # cells that have rows in results.jsonl
    todo: list[Cell]

    @property
    def results(self) -> Path:
        return self.run_dir / "results.jsonl"


def open_run(plan: Plan, run_dir: Path, console: Console) -> RunState:
    """Make the run folder whole again after whatever ended the last run (call under the run
    lock): plan.json, the run id, stranded temp files cleaned, results.jsonl repaired."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_json(run_dir / "plan.json", json.loads(plan.model_dump_json()))
    rid = run_id(run_dir)
    _clean_leftovers(run_dir)
    repaired = repair_results(run_dir)
    if repaired["cut"] or repaired["appended"]:
        console.print(f"results.jsonl repaired after an interrupted run: {len(repaired['cut'])} characters of a "
                      f"half-written line cut, {repaired['appended']} rows of finished cells written")
    todo = [c for c in plan.cells if not (run_dir / "cells" / f"{c.key}.json").exists()]
    return RunState(plan, run_dir, rid, repaired["cells"], todo)


def needed_modules(plan: Plan, todo: list[Cell]) -> list[ModuleJob]:
    """The intermediate modules the cells still to run stand on, in plan order."""
    needed = {n for c in todo for n in c.intermediates}
    return [job for job in plan.modules if job.name in needed]


@dataclass
class CellWork:
    """What a worker needs, besides its backbone, to train a plan's modules and run its cells."""

    plan: Plan
    run_dir: Path
    rid: str
    registry: Registry
    cfgs: dict[str, TrainConfig]

    @property
    def data_dir(self) -> Path | None:
        return Path(self.plan.recipe.data_dir) if self.plan.recipe.data_dir else None


def ensure_module(work: CellWork, job: ModuleJob, backbone, progress=None) -> str | None:
    """Train intermediate `job` unless the registry has it (this run's version, or any run's when
    the recipe has `reuse_registry`); a line saying what was trained, None when it was reused."""
    from .pipeline import train_module

    recipe = work.plan.recipe
    # this run's own version first (a kill after it was registered), any run's if allowed
    if _find_module(work.registry, job, backbone.fingerprint, None if recipe.reuse_registry else work.rid):
        return None
    common = dict(name=job.name, method=recipe.method, method_config=recipe.method_config,
                  train_config=work.cfgs[job.name], registry=work.registry, data_dir=work.data_dir,
                  recipe_hash=work.plan.recipe_hash, progress=progress,
                  checkpoint_dir=work.run_dir / "checkpoints" / job.name,
                  extra_manifest={"train_key": job.key, "run": work.rid})
    if job.multitask:
        from .multitask import train_multitask_module

        tm = train_multitask_module(backbone, job.multitask, sampling=job.sampling, cap=job.cap, **common)
    else:
        spec = get_task(job.task)
        tm = train_module(backbone, spec, eval_languages=[training_task(spec).train_language], **common)
    return f"trained {tm.manifest.name}: {_fmt_scores(tm.scores)} in {tm.result.seconds:.0f}s"


@dataclass
class CellOutcome:
    """A finished cell, not yet committed: its rows, scores and per-example predictions."""

    key: str
    module: str
    task: str
    scores: dict
    rows: list[dict]
    predictions: dict[str, list]
    seconds: float
    swap_seconds: float
    note: str | None = None  # e.g. that a module registered before an interruption was reused


def run_cell(work: CellWork, cell: Cell, backbone, progress=None) -> CellOutcome:
    """Train (or reuse) and evaluate one cell on `backbone`; writes only to the registry and the
    cell's checkpoint folder; the driver commits the outcome (`commit_cell`)."""
    from .pipeline import evaluate_module, swap_clock, train_module

    plan, registry, data_dir = work.plan, work.registry, work.data_dir
    recipe = plan.recipe
    t0 = time.perf_counter()
    swap_clock.take()
    spec = get_task(cell.target)
    inter_tasks = [next(m.task for m in plan.modules if m.name == n) for n in cell.intermediates]
    rows_extra = {"cell": cell.key, "target": cell.target, "format": spec.format, "composition": cell.composition,
                  "intermediate_task": "+".join(inter_tasks) or "none",
                  "backbone": backbone.fingerprint.short(), "method": recipe.method,
                  "intermediate": "+".join(cell.intermediates) or "none", "seed": cell.seed}
    preds: dict[str, list] = {}
    note = None
    if spec.format == "retrieval":
        module = cell.intermediates[0] if cell.intermediates else None
        scores = evaluate_module(backbone, module, spec, registry=registry, languages=cell.languages,
                                 data_dir=data_dir, limit=cell.eval_limit, update_registry=False,
                                 predictions=preds)
        module_name = module or "backbone"
    else:
        # registered before a kill cut this cell short: reuse it, never train a second version
        man = _find_registered(registry, cell.name, {"cell": cell.key, "run": work.rid}, backbone.fingerprint)
        if man is None:
            tm = _run_training_cell(cell, plan, backbone, registry, data_dir, progress, work.run_dir, train_module,
                                    work.cfgs[cell.key], work.rid)
            man, scores, preds = tm.manifest, tm.scores, tm.predictions
        else:
            # evaluated again: the per-example rows behind its intervals died with the kill
            note = f"reusing {man.name}@{man.version}, registered before an interruption"
            scores = evaluate_module(
                backbone, f"{man.name}@{man.version}", spec, registry=registry, languages=cell.languages,
                data_dir=data_dir, limit=cell.eval_limit, update_registry=False, predictions=preds)
        module_name = f"{man.name}@{man.version}"
    seconds = time.perf_counter() - t0
    swap = swap_clock.take()
    rows_extra["target"] = spec.name
    intervals = score_intervals(spec, scores, preds)
    rows = [{"module": module_name, "task": spec.name, "language": lang, "metric": metric,
             "score": round(float(v), 4), **interval_fields(intervals.get(lang, {}).get(metric)), **rows_extra}
            for lang, ms in scores.items() for metric, v in ms.items()]
    return CellOutcome(cell.key, module_name, spec.name, scores, rows, preds, seconds, swap, note)


def commit_cell(state: RunState, cell: Cell, outcome: CellOutcome) -> None:
    """The driver's commit of a finished cell (only the driver writes here): per-example rows
    first (reports test gains on them), then one atomic record with the rows; the append of the
    rows to results.jsonl after it is repeatable (`repair_results`)."""
    write_predictions(state.run_dir / "predictions" / f"{cell.key}.jsonl", outcome.module, outcome.task,
                      outcome.predictions)
    _atomic_json(state.run_dir / "cells" / f"{cell.key}.json",
                 {"cell": json.loads(cell.model_dump_json()), "scores": outcome.scores,
                  "seconds": round(outcome.seconds, 2), "swap_seconds": round(outcome.swap_seconds, 4),
                  "module": outcome.module, "rows": outcome.rows})
    results = state.results
    if cell.key in state.with_rows and results.exists():  # rows without a record: an older run's, replaced
        _drop_cells(results, {cell.key})
    append_results(results, outcome.rows)
    state.with_rows.add(cell.key)


def cell_line(cell: Cell, outcome: CellOutcome, where: str = "") -> str:
    return (f"  {cell.label}: {_fmt_scores(outcome.scores)} ({outcome.seconds:.0f}s, module swaps "
            f"{outcome.swap_seconds:.2f}s{where})")


def plan_backbone(plan: Plan, device: str | None = None):
    """The backbone a plan's cells share, with the recipe's quantization and embeddings; trimmed
    embeddings keep the pieces of every text the plan trains or evaluates on (read only then).
    Call it with the recipe's catalog active."""
    from .compress import load_compressed, task_texts
    from .tasks import get_task

    recipe = plan.recipe

    def texts():
        parts = [(get_task(t), None) for i in recipe.intermediate for t in (i.multitask or [i.task])]
        parts += [(get_task(t.task), t.languages) for t in recipe.targets]
        return task_texts(parts, Path(recipe.data_dir) if recipe.data_dir else None)

    return load_compressed(recipe.backbone, recipe.quantization, device, embeddings=recipe.embeddings, texts=texts)


def _run_plan(plan: Plan, run_dir: Path, cfgs: dict[str, TrainConfig], *, registry, backbone, console, device,
              progress) -> Path:
    from contextlib import nullcontext

    from .progress import emit

    console = console or Console()
    registry = registry or Registry()
    state = open_run(plan, run_dir, console)
    if not state.todo:
        console.print(f"[green]all {len(plan.cells)} cells already done[/] (cached in {run_dir / 'cells'})")
        return state.results

    t_load = time.perf_counter()
    if backbone is None:
        with plan.recipe.catalog().active():
            backbone = plan_backbone(plan, device)
    console.print(f"backbone {backbone.fingerprint.short()} loaded in {time.perf_counter() - t_load:.1f}s")
    work = CellWork(plan, run_dir, state.rid, registry, cfgs)

    with (nullcontext(progress) if progress is not None else make_progress(console)) as progress:
        grid = f"grid {plan.recipe.name}"
        done = len(plan.cells) - len(state.todo)
        emit(progress, "start", grid, done, len(plan.cells))
        for job in needed_modules(plan, state.todo):  # intermediate modules: reuse from the registry or train now
            line = ensure_module(work, job, backbone, progress)
            if line:
                console.print(f"  {line}")
        for cell in state.todo:
            outcome = run_cell(work, cell, backbone, progress)
            if outcome.note:
                console.print(f"  {cell.label}: {outcome.note}")
            commit_cell(state, cell, outcome)
            done += 1
            emit(progress, "advance", grid, done, len(plan.cells))
            console.print(cell_line(cell, outcome))
        emit(progress, "end", grid, done, len(plan.cells))
    return state.results


def _run_training_cell(cell: Cell, plan: Plan, backbone, registry, data_dir, progress, run_dir, train_module,
                       cfg: TrainConfig, rid: str):
    recipe = plan.recipe
    return train_module(
        backbone, cell.target, name=cell.name, method=recipe.method, method_config=recipe.method_config,
        train_config=cfg, registry=registry,
        composition=cell.composition_spec or {"kind": cell.composition, "modules": cell.intermediates},
        eval_languages=cell.languages, eval_limit=cell.eval_limit, data_dir=data_dir,
        recipe_hash=plan.recipe_hash, progress=progress, checkpoint_dir=run_dir / "checkpoints" / cell.key,
        extra_manifest={"cell": cell.key, "run": rid},
    )


def _fmt_scores(scores: dict) -> str:
    parts = []
    for lang, ms in list(scores.items())[:8]:
        v = ms.get("accuracy", ms.get("f1", next(iter(ms.values()))))
        parts.append(f"{lang} {v:.1f}")
    more = f" (+{len(scores) - 8} more)" if len(scores) > 8 else ""
    return ", ".join(parts) + more


def cached_rows(run_dir: Path) -> list[dict]:
    return read_run_rows(run_dir)
