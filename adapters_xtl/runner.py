"""Run a plan on one loaded backbone: intermediate modules first, then every cell, resumably.

Each finished cell writes `cells/<key>.json` atomically and appends its rows to `results.jsonl`;
a re-run skips finished cells (cache by resolved-config hash) and reuses registry modules, so a
crash or Ctrl-C costs at most the cell in flight.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import XtlError
from .evaluate import append_results, read_results
from .recipe import Cell, ModuleJob, Plan
from .registry import Registry
from .tasks import get_task
from .train import TrainConfig


def make_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


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


# non-embedding parameters: what a training step's FLOPs scale with (embeddings are lookups)
NON_EMBEDDING_PARAMS = {"xlmr-e5-small": 21.3e6, "xlm-roberta-base": 85.1e6, "xlm-roberta-large": 302.6e6}


def measured_peak_flops(seconds: float = 0.3) -> float:
    """A quick fp32 (CPU) / bf16 (GPU) matmul peak of this machine, in FLOP/s."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    n = 2048 if dev == "cuda" else 512
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if dev == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def estimate_hours(plan: Plan, info: dict, *, mfu: float = 0.3, peak: float | None = None,
                   device: str | None = None, cache_dir: Path | None = None) -> dict:
    """Training time of the steps still to run, priced from this machine's measured runs.

    Each job (a module to train, a cell to run) is priced by `throughput.step_cost`: seconds per
    step measured on the same backbone/quantization/method/device and task (scaled by batch
    size), else the FLOP/s measured on any task, else tokens x 4N FLOPs / (matmul peak x `mfu`)
    (a frozen backbone costs ~4 N FLOPs per token: forward 2N, backward through activations 2N,
    no weight gradients; tokens per step = batch x half the task's max length). Evaluation is
    not included. `sources` counts how each job was priced, so the user sees how much is guessed.
    """
    import torch

    from . import throughput

    n = NON_EMBEDDING_PARAMS.get(plan.recipe.backbone, 85.1e6)
    dev = (device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
    rows = throughput.read(cache_dir)
    todo = set(info["modules_to_train"])
    jobs = [(m.train, m.task.split(":")[-1].split("+")[0]) for m in plan.modules if m.name in todo]
    jobs += [(c.train, c.target) for c in plan.cells if not c.key in info.get("cached_keys", set())
             and get_task(c.target).format != "retrieval"]
    tokens, seconds = 0.0, 0.0
    sources = {"task": 0, "flops": 0, "guess": 0}
    for train, task in jobs:
        spec = get_task(task)
        batch = train.get("batch_size", 16)
        steps = train.get("steps", TrainConfig().steps)
        step_tokens = batch * spec.max_length / 2
        key = dict(backbone=plan.recipe.backbone, quantization=plan.recipe.quantization, method=plan.recipe.method,
                   device=dev, task=spec.train_task or spec.name, batch_size=batch, flops_per_step=4 * n * step_tokens)
        cost = throughput.step_cost(rows, **key, guess_flops_per_s=None)
        if cost.source == "guess":
            peak = peak or measured_peak_flops()  # timed only when something must be guessed
            cost = throughput.step_cost(rows, **key, guess_flops_per_s=peak * mfu)
        sources[cost.source] += 1
        tokens += steps * step_tokens
        seconds += steps * cost.seconds
    return {"training_tokens": tokens, "peak_tflops": (peak or 0) / 1e12, "assumed_mfu": mfu,
            "hours": seconds / 3600, "sources": sources, "jobs": len(jobs), "device": dev}


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
             console: Console | None = None, device: str | None = None) -> Path:
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

    with make_progress(console) as progress:
        grid = progress.add_task(f"grid {recipe.name}", total=len(plan.cells),
                                 completed=len(plan.cells) - len(todo), loss=float("nan"))
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
            progress.update(grid, advance=1)
            console.print(f"  {cell.label}: {_fmt_scores(scores)} ({seconds:.0f}s, module swaps {swap:.2f}s)")
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
