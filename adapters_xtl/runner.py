"""Run a plan on one loaded backbone: intermediate modules first, then every cell, resumably.

Each finished cell writes `cells/<key>.json` atomically and appends its rows to `results.jsonl`;
a re-run skips finished cells (cache by resolved-config hash) and reuses registry modules, so a
crash or Ctrl-C costs at most the cell in flight.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from .cost import estimate_hours, measured_peak_flops  # noqa: F401
from .errors import XtlError
from .evaluation import append_results, read_results
from .recipe import Cell, ModuleJob, Plan
from .store.registry import Registry
from .tasks import get_task
from .trainer import TrainConfig


def make_progress(console: Console | None = None):
    """Live bars on a terminal, plain timestamped lines in a log (see progress.py)."""
    from .progress import reporter_for

    return reporter_for(console)


def _atomic_json(path: Path, obj) -> None:
    from .io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, indent=2, ensure_ascii=False)


def _train_config(raw: dict, where: str) -> TrainConfig:
    try:
        return TrainConfig(**raw)
    except Exception as e:
        raise XtlError(f"invalid train settings: {e}", where=where, fix=f"fields: {', '.join(TrainConfig.model_fields)}") from None


def describe(plan: Plan, registry: Registry, backbone_fp=None, run_dir: Path | None = None) -> dict:
    """What a run would do: modules to train vs reuse, cells to run vs cached, training steps."""
    reuse = [m.name for m in plan.modules if _find_module(registry, m, backbone_fp) is not None]
    cached = {c.key for c in plan.cells if run_dir and (run_dir / "cells" / f"{c.key}.json").exists()}
    todo = [c for c in plan.cells if c.key not in cached]
    needed = {n for c in todo for n in c.intermediates}
    to_train = [m for m in plan.modules if m.name not in reuse and m.name in needed]
    return {
        "cells": len(plan.cells),
        "cells_cached": len(cached),
        "cached_keys": cached,
        "modules_to_train": [m.name for m in to_train],
        "modules_reused": reuse,
        "training_steps": sum(m.train.get("steps", TrainConfig().steps) for m in to_train)
        + sum(c.train.get("steps", TrainConfig().steps) for c in todo if get_task(c.target).format != "retrieval"),
    }


def _find_module(registry: Registry, job: ModuleJob, backbone_fp=None):
    try:
        versions = registry.versions(job.name)
    except XtlError:
        return None
    for v in reversed(versions):
        man = registry.manifest(job.name, v)
        if getattr(man, "train_key", None) == job.key and (backbone_fp is None or man.backbone == backbone_fp):
            return man
    return None


def run_plan(plan: Plan, run_dir: Path, *, registry: Registry | None = None, backbone=None,
             console: Console | None = None, device: str | None = None, progress=None) -> Path:
    """Run every cell of `plan` not yet finished in `run_dir`; return the results file.
    `progress` is a callback for ProgressEvents (default: bars on a terminal, lines in a log)."""
    with plan.recipe.catalog().active():
        return _run_plan(plan, run_dir, registry=registry, backbone=backbone, console=console, device=device,
                         progress=progress)


def _run_plan(plan: Plan, run_dir: Path, *, registry, backbone, console, device, progress) -> Path:
    from .backbone import load_backbone
    from .pipeline import evaluate_module, train_module

    console = console or Console()
    registry = registry or Registry()
    recipe = plan.recipe
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_json(run_dir / "plan.json", json.loads(plan.model_dump_json()))
    results = run_dir / "results.jsonl"
    data_dir = Path(recipe.data_dir) if recipe.data_dir else None
    todo = [c for c in plan.cells if not (run_dir / "cells" / f"{c.key}.json").exists()]
    if not todo:
        console.print(f"[green]all {len(plan.cells)} cells already done[/] (cached in {run_dir / 'cells'})")
        return results

    t_load = time.perf_counter()
    if backbone is None:
        backbone = load_backbone(recipe.backbone, recipe.quantization, device)
    console.print(f"backbone {backbone.fingerprint.short()} loaded in {time.perf_counter() - t_load:.1f}s")

    from contextlib import nullcontext

    from .progress import emit

    with (nullcontext(progress) if progress is not None else make_progress(console)) as progress:
        grid = f"grid {recipe.name}"
        done = len(plan.cells) - len(todo)
        emit(progress, "start", grid, done, len(plan.cells))
        # intermediate modules: reuse from the registry or train now
        needed = {n for c in todo for n in c.intermediates}
        for job in plan.modules:
            if job.name not in needed:
                continue
            if recipe.reuse_registry and _find_module(registry, job, backbone.fingerprint):
                continue
            common = dict(name=job.name, method=recipe.method, method_config=recipe.method_config,
                          train_config=_train_config(job.train, f"{recipe.file}: intermediate {job.task}"),
                          registry=registry, data_dir=data_dir, recipe_hash=plan.recipe_hash, progress=progress,
                          checkpoint_dir=run_dir / "checkpoints" / job.name, extra_manifest={"train_key": job.key})
            if job.multitask:
                from .multitask import train_multitask_module

                tm = train_multitask_module(backbone, job.multitask, sampling=job.sampling, cap=job.cap, **common)
            else:
                spec = get_task(job.task)
                tm = train_module(backbone, spec, eval_languages=[spec.train_language], **common)
            console.print(f"  trained {tm.manifest.name}: {_fmt_scores(tm.scores)} in {tm.result.seconds:.0f}s")

        from .pipeline import swap_clock

        for cell in todo:
            t0 = time.perf_counter()
            swap_clock.take()
            spec = get_task(cell.target)
            inter_tasks = [next(m.task for m in plan.modules if m.name == n) for n in cell.intermediates]
            rows_extra = {"cell": cell.key, "target": cell.target, "composition": cell.composition,
                          "intermediate_task": "+".join(inter_tasks) or "none",
                          "backbone": backbone.fingerprint.short(), "method": recipe.method,
                          "intermediate": "+".join(cell.intermediates) or "none", "seed": cell.seed}
            if spec.format == "retrieval":
                module = cell.intermediates[0] if cell.intermediates else None
                scores = evaluate_module(backbone, module, spec, registry=registry, languages=cell.languages,
                                         data_dir=data_dir, limit=cell.eval_limit, update_registry=False)
                module_name = module or "backbone"
            else:
                tm = _run_training_cell(cell, plan, backbone, registry, data_dir, progress, run_dir, train_module)
                scores, module_name = tm.scores, f"{tm.manifest.name}@{tm.manifest.version}"
            seconds = time.perf_counter() - t0
            swap = swap_clock.take()
            rows_extra["target"] = spec.name
            rows = [{"module": module_name, "task": spec.name, "language": lang, "metric": metric,
                     "score": round(float(v), 4), **rows_extra}
                    for lang, ms in scores.items() for metric, v in ms.items()]
            append_results(results, rows)
            _atomic_json(run_dir / "cells" / f"{cell.key}.json",
                         {"cell": json.loads(cell.model_dump_json()), "scores": scores, "seconds": round(seconds, 2),
                          "swap_seconds": round(swap, 4), "module": module_name})
            done += 1
            emit(progress, "advance", grid, done, len(plan.cells))
            console.print(f"  {cell.label}: {_fmt_scores(scores)} ({seconds:.0f}s, module swaps {swap:.2f}s)")
        emit(progress, "end", grid, done, len(plan.cells))
    return results


def _run_training_cell(cell: Cell, plan: Plan, backbone, registry, data_dir, progress, run_dir, train_module):
    recipe = plan.recipe
    return train_module(
        backbone, cell.target, name=cell.name, method=recipe.method, method_config=recipe.method_config,
        train_config=_train_config(cell.train, f"{recipe.file}: target {cell.target}"), registry=registry,
        composition=cell.composition_spec or {"kind": cell.composition, "modules": cell.intermediates},
        eval_languages=cell.languages, eval_limit=cell.eval_limit, data_dir=data_dir,
        recipe_hash=plan.recipe_hash, progress=progress, checkpoint_dir=run_dir / "checkpoints" / cell.key,
        extra_manifest={"cell": cell.key},
    )


def _fmt_scores(scores: dict) -> str:
    parts = []
    for lang, ms in list(scores.items())[:8]:
        v = ms.get("accuracy", ms.get("f1", next(iter(ms.values()))))
        parts.append(f"{lang} {v:.1f}")
    more = f" (+{len(scores) - 8} more)" if len(scores) > 8 else ""
    return ", ".join(parts) + more


def cached_rows(run_dir: Path) -> list[dict]:
    return read_results(run_dir / "results.jsonl")


class LocalExecutor:
    """Runs a plan's cells one after another in this process, on one loaded backbone: the
    reference executor. An executor is any object with this `run` method (issue: Ray actors)."""

    def __init__(self, device: str | None = None, console: Console | None = None):
        self.device = device
        self.console = console

    def run(self, plan: Plan, run_dir: Path, *, registry: Registry, backbone=None, progress=None) -> Path:
        return run_plan(plan, run_dir, registry=registry, backbone=backbone, console=self.console,
                        device=self.device, progress=progress)
