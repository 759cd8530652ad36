"""`xtl run` and `xtl quickstart`: a recipe's grid, resumably, then its tables."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import checks
from ..errors import XtlError
from ..tracking import check_tracker
from .common import console, json_output, print_json, progress, registry as open_registry, tracker_for


def run(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/<recipe name>)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and its cost, run nothing"),
    data_dir: Optional[Path] = typer.Option(None, help="override the recipe's data_dir"),
    registry: Optional[Path] = typer.Option(None),
    device: Optional[str] = typer.Option(None),
    executor: str = typer.Option("local", "--executor", help="local: one cell after another in this process; "
                                 "ray: Ray workers, one backbone each (docs/scale-out.md)"),
    address: Optional[str] = typer.Option(None, "--address", help="ray: auto, or HOST:PORT of a running cluster "
                                          "(`ray start --head`); default: start Ray on this machine for the run"),
    workers: Optional[int] = typer.Option(None, "--workers", help="ray: how many workers (default 1)"),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker",
                                                    help="ray: CPUs per worker, also its torch threads (default 1)"),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker",
                                                    help="ray: GPUs per worker; 0.5 puts two on one GPU (default 0)"),
    tracker: Optional[str] = typer.Option(None, "--tracker", help="tensorboard | trackio | mlflow | wandb (default: "
                                          "the recipe's `tracker:`, else none); see docs/tracking.md"),
    tracker_dir: Optional[Path] = typer.Option(None, "--tracker-dir", help="where the tracker writes "
                                               "(default <out>/tracking)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan (with --dry-run) or the outcome as one JSON "
                                 "object; tables and progress go to stderr"),
):
    """Run a recipe: train/reuse intermediate modules, run every cell, write results and a report."""
    from ..api import Recipe

    with json_output(as_json):
        checks.input_dir(data_dir, "--data-dir")
        ex = make_executor(executor, address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=gpus_per_worker, device=device)
        overrides = {"data_dir": str(data_dir.resolve())} if data_dir else None
        plan = Recipe.load(recipe, overrides).expand()  # the whole recipe is checked here (recipe.check_recipe)
        tracker = check_tracker(tracker if tracker is not None else getattr(plan.recipe, "tracker", None),
                                "--tracker" if tracker is not None else f"{plan.recipe.file or 'recipe'}: tracker")
        out = out or Path("runs") / plan.recipe.name
        checks.output_dir(tracker_dir, "--tracker-dir")
        run_plan_and_report(plan, out, dry_run=dry_run, registry=registry, device=device, executor=ex,
                            tracker=tracker, tracker_dir=tracker_dir or out / "tracking", as_json=as_json)


EXECUTORS = ("local", "ray")


def make_executor(name: str, *, address: Optional[str], workers: Optional[int], cpus_per_worker: Optional[float],
                  gpus_per_worker: Optional[float], device: Optional[str]):
    """`--executor` and its options -> None (the local executor) or a RayExecutor; Ray's options
    without `--executor ray` are refused rather than ignored."""
    from ..errors import did_you_mean

    if name not in EXECUTORS:
        raise XtlError(f"unknown executor {name!r}", where="--executor", fix=did_you_mean(name, EXECUTORS))
    ray_opts = {"--address": address, "--workers": workers, "--cpus-per-worker": cpus_per_worker,
                "--gpus-per-worker": gpus_per_worker}
    if name == "local":
        given = [k for k, v in ray_opts.items() if v is not None]
        if given:
            raise XtlError(f"{', '.join(given)} only apply to the ray executor", where=given[0],
                           fix="add --executor ray, or leave them out")
        return None
    from ..executors.ray import RayExecutor  # ray itself is imported (or its absence explained) when made

    return RayExecutor(1 if workers is None else workers, address=address,
                       cpus_per_worker=1.0 if cpus_per_worker is None else cpus_per_worker,
                       gpus_per_worker=0.0 if gpus_per_worker is None else gpus_per_worker, device=device,
                       console=console)


def check_run_options(plan, out: Path, *, registry: Optional[Path], device: Optional[str], dry_run: bool) -> None:
    """The options of `xtl run` / `quickstart` / the plan itself, before the run folder is made."""
    if not plan.cells:
        raise XtlError("the recipe expands to no cells (its compositions do not apply to its targets)",
                       where=plan.recipe.file or "recipe", fix="add a composition its targets take, e.g. single")
    checks.device(device)
    checks.registry_root(registry, "--registry", write=not dry_run)
    if not dry_run:
        checks.output_dir(out, "--out")
    elif out.exists() and not out.is_dir():
        checks.output_dir(out, "--out")


def run_plan_and_report(plan, out: Path, *, dry_run: bool, registry: Optional[Path], device: Optional[str],
                        executor=None, tracker: Optional[str] = None, tracker_dir: Optional[Path] = None,
                        as_json: bool = False):
    check_run_options(plan, out, registry=registry, device=device, dry_run=dry_run)
    with plan.recipe.catalog().active():  # the recipe's tasks_dir names its tasks for the plan table too
        _run_plan_and_report(plan, out, dry_run=dry_run, registry=registry, device=device, executor=executor,
                             tracker=tracker, tracker_dir=tracker_dir, as_json=as_json)


def _run_plan_and_report(plan, out: Path, *, dry_run: bool, registry: Optional[Path], device: Optional[str],
                         executor=None, tracker: Optional[str] = None, tracker_dir: Optional[Path] = None,
                         as_json: bool = False):
    from ..api import run as api_run
    from ..evaluation import read_results
    from ..reporting import load_predictions, rich_tables, score_table, write_report
    from ..runner import describe

    reg = open_registry(registry)
    info = describe(plan, reg, run_dir=out)
    cached = info["cells_cached"]
    t = Table(title=f"plan: {plan.recipe.name} ({plan.recipe.backbone}, {plan.recipe.method}, {plan.recipe.quantization})")
    for col in ("#", "target", "composition", "intermediate", "seed", "status"):
        t.add_column(col)
    cells = []
    for i, c in enumerate(plan.cells, 1):
        done = (out / "cells" / f"{c.key}.json").exists()
        t.add_row(str(i), c.target, c.composition, "+".join(c.intermediates) or "-", str(c.seed), "cached" if done else "to run")
        cells.append({"key": c.key, "target": c.target, "composition": c.composition,
                      "intermediates": list(c.intermediates), "seed": c.seed, "cached": done})
    console.print(t)
    console.print(f"{info['cells']} cells ({cached} cached); intermediate modules to train: {len(info['modules_to_train'])}, "
                  f"reused: {len(info['modules_reused'])}; training steps to run: {info['training_steps']:,}")
    summary = {"recipe": plan.recipe.name, "file": plan.recipe.file, "out": str(out), "plan": cells,
               **{k: v for k, v in info.items() if k != "cells"}, "cells": len(cells)}
    if dry_run:
        est = print_estimate(plan, info, device)
        if as_json:
            print_json({**summary, "estimate": est})
        return
    t0 = time.perf_counter()
    config = {"recipe": plan.recipe.name, "backbone": plan.recipe.backbone, "method": plan.recipe.method,
              "quantization": plan.recipe.quantization}
    with tracker_for(tracker, tracker_dir, project=plan.recipe.name, config=config) as track, progress() as report:
        api_run(plan, out, registry=reg, device=device, console=console, progress=report, executor=executor,
                tracker=track)
    path = write_report(out, f"Results: {plan.recipe.name}")
    rows = read_results(out / "results.jsonl")
    for tab in rich_tables(score_table(rows, load_predictions(out))):
        console.print(tab)
    seconds = time.perf_counter() - t0
    console.print(f"done in {seconds:.0f}s: {out / 'results.jsonl'}, {path}"
                  + (f"; {tracker} logs in {tracker_dir}" if tracker else ""))
    if as_json:
        print_json({**summary, "results": str(out / "results.jsonl"), "report": str(path), "rows": len(rows),
                    "seconds": round(seconds, 1), "tracker": tracker,
                    "tracker_dir": str(tracker_dir) if tracker else None})


def print_estimate(plan, info, device) -> dict:
    from ..runner import estimate_hours

    est = estimate_hours(plan, info, device=device)
    src = est["sources"]
    how = []
    if src["task"]:
        how.append(f"{src['task']} priced from runs of the same task measured here")
    if src["flops"]:
        how.append(f"{src['flops']} from the FLOP/s measured here on other tasks")
    if src["guess"]:
        how.append(f"{src['guess']} guessed from the {est['peak_tflops']:.2f} TFLOP/s matmul peak x "
                   f"{est['assumed_mfu']:.0%} assumed MFU (no run measured here yet)")
    console.print(f"estimated time on this machine ({est['device']}): {est['hours']:,.2f} h: "
                  f"{est['train_hours']:,.2f} h for {est['jobs']} trainings, {est['training_tokens'] / 1e6:,.1f}M "
                  f"training tokens (batch x half the max length per step), and {est['eval_hours']:,.2f} h for "
                  f"{est['evaluations']} evaluations; {'; '.join(how) or 'nothing to run'}.")
    return est


def quickstart(
    out: Path = typer.Option(Path("xtl-out/quickstart"), help="output folder"),
    registry: Optional[Path] = typer.Option(None, help="registry (default: <out>/registry)"),
    steps: Optional[int] = typer.Option(None, help="override training steps (for a faster look)"),
    device: Optional[str] = typer.Option(None),
):
    """The whole flow offline in minutes: xlmr-e5-small, bundled demo data, two intermediate
    modules, a target trained with and without them, zero-shot in 7 languages, a table."""
    from ..recipe import BUILTIN, expand, load_recipe

    checks.at_least(steps, 1, "--steps", fix="optimizer steps per module, e.g. 20 for a fast look; leave it out "
                                              "for the recipe's")
    checks.output_dir(out, "--out")
    overrides = {"train": {"steps": steps}} if steps is not None else None
    recipe = load_recipe(BUILTIN / "quickstart.yaml", overrides)
    if steps is not None:
        for part in recipe.intermediate + recipe.targets:
            part.steps = steps
    plan = expand(recipe)
    console.print(f"[bold]adapters_xtl quickstart[/] -> {out}  (demo data written for this project; see "
                  f"{BUILTIN / 'README.md'})")
    run_plan_and_report(plan, out, dry_run=False, registry=registry or out / "registry", device=device)
