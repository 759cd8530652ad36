"""`xtl`: the command line. Thin: parse, call the library, print with rich.

Every user-fixable problem is an `XtlError`; `main` prints it as one message (no traceback) and
exits with code 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import XtlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Which English intermediate task helps zero-shot transfer to which language?")
console = Console()


def _langs(s: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def _registry(path: Optional[Path]):
    from .registry import Registry

    return Registry(path)


def _scores_table(title: str, scores: dict[str, dict[str, float]]) -> Table:
    metrics = sorted({m for ms in scores.values() for m in ms})
    t = Table(title=title)
    t.add_column("language")
    for m in metrics:
        t.add_column(m, justify="right")
    for lang, ms in scores.items():
        t.add_row(lang, *(f"{ms[m]:.2f}" if m in ms else "" for m in metrics))
    if len(scores) > 1:
        t.add_row("[bold]mean", *(f"{sum(ms.get(m, 0) for ms in scores.values()) / len(scores):.2f}" for m in metrics))
    return t


# ------------------------------------------------------------------------------------ train / eval
@app.command()
def train(
    task: str = typer.Option(..., help="catalog task name or path to a task YAML"),
    method: str = typer.Option("lora", help="lora | bottleneck"),
    backbone: str = typer.Option("xlmr-e5-small", help="xlmr-e5-small, xlm-roberta-base/large, a Hub id or a folder"),
    quantization: str = typer.Option("none", help="none | 8bit | 4bit"),
    name: Optional[str] = typer.Option(None, help="registry name (default <task>-<method>)"),
    steps: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    seed: int = typer.Option(42),
    eval_every: Optional[int] = typer.Option(None),
    max_train_examples: Optional[int] = typer.Option(None),
    method_config: Optional[str] = typer.Option(None, help='JSON, e.g. \'{"r": 16}\''),
    init_from: Optional[str] = typer.Option(None, help="registry module to start from (STILTs continue)"),
    languages: Optional[str] = typer.Option(None, help="comma-separated evaluation languages (default: all)"),
    eval_limit: Optional[int] = typer.Option(None, help="evaluation examples per language"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with local data (default $XTL_DATA or ../shared/data)"),
    results: Path = typer.Option(Path("xtl-out/results.jsonl"), help="results file to append to"),
    registry: Optional[Path] = typer.Option(None, help="registry folder (default $XTL_REGISTRY or ./registry)"),
    device: Optional[str] = typer.Option(None),
):
    """Train a task module on English data, evaluate it zero-shot on every language, register it."""
    from .backbone import load_backbone
    from .pipeline import train_module
    from .runner import make_progress
    from .tasks import get_task
    from .train import TrainConfig

    spec = get_task(task)
    raw = dict(spec.defaults.get("train", {}))
    for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
                     max_train_examples=max_train_examples).items():
        if v is not None:
            raw[k] = v
    raw["seed"] = seed
    cfg = TrainConfig(**raw)
    try:
        mcfg = json.loads(method_config) if method_config else None
    except json.JSONDecodeError as e:
        raise XtlError(f"--method-config is not JSON: {e}", where="--method-config") from None
    for lang in _langs(languages) or []:
        spec.language_code(lang)
    t0 = time.perf_counter()
    bb = load_backbone(backbone, quantization, device)
    console.print(f"backbone {bb.fingerprint.short()} ({bb.total_params() / 1e6:.1f}M params) in {time.perf_counter() - t0:.1f}s")
    reg = _registry(registry)
    with make_progress(console) as progress:
        tm = train_module(bb, spec, name=name or f"{spec.name}-{method}", method=method, method_config=mcfg,
                          train_config=cfg, registry=reg, init_from=init_from, eval_languages=_langs(languages),
                          eval_limit=eval_limit, data_dir=data_dir, results_path=results, progress=progress)
    console.print(f"trainable parameters: {tm.trainable_params:,} ({100 * tm.trainable_params / tm.total_params:.2f}% of {tm.total_params:,})")
    console.print(f"trained {cfg.steps} steps in {tm.result.seconds:.1f}s ({tm.result.seconds / max(1, cfg.steps):.2f} s/step), "
                  f"best dev step {tm.result.best_step}, padding waste {100 * tm.result.padding_waste:.1f}%")
    console.print(_scores_table(f"{tm.manifest.name} v{tm.manifest.version} on {spec.name} (zero-shot)", tm.scores))
    console.print(f"registered {tm.manifest.name} v{tm.manifest.version} in {reg.root}; results appended to {results}")


@app.command("eval")
def eval_cmd(
    task: str = typer.Option(...),
    module: Optional[str] = typer.Option(None, help="registry module (omit for retrieval with the bare backbone)"),
    backbone: str = typer.Option("xlmr-e5-small"),
    quantization: str = typer.Option("none"),
    languages: Optional[str] = typer.Option(None),
    limit: Optional[int] = typer.Option(None, help="examples per language"),
    data_dir: Optional[Path] = typer.Option(None),
    results: Path = typer.Option(Path("xtl-out/results.jsonl")),
    registry: Optional[Path] = typer.Option(None),
    allow_backbone_mismatch: bool = typer.Option(False, help="load a module trained on another backbone/quantization"),
    device: Optional[str] = typer.Option(None),
):
    """Evaluate a registry module (or the bare backbone, for retrieval) zero-shot per language."""
    from .backbone import load_backbone
    from .pipeline import evaluate_module
    from .tasks import get_task

    spec = get_task(task)
    for lang in _langs(languages) or []:
        spec.language_code(lang)
    reg = _registry(registry)
    if module:
        reg.manifest(module)  # unknown module: fail before loading the backbone
    bb = load_backbone(backbone, quantization, device)
    t0 = time.perf_counter()
    scores = evaluate_module(bb, module, spec, registry=reg, languages=_langs(languages), data_dir=data_dir,
                             limit=limit, results_path=results, allow_backbone_mismatch=allow_backbone_mismatch)
    console.print(_scores_table(f"{module or 'backbone'} on {spec.name} ({time.perf_counter() - t0:.1f}s)", scores))
    console.print(f"results appended to {results}")


# ------------------------------------------------------------------------------------ recipes
@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/<recipe name>)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and its cost, run nothing"),
    data_dir: Optional[Path] = typer.Option(None, help="override the recipe's data_dir"),
    registry: Optional[Path] = typer.Option(None),
    device: Optional[str] = typer.Option(None),
):
    """Run a recipe: train/reuse intermediate modules, run every cell, write results and a report."""
    from .recipe import expand, load_recipe

    overrides = {"data_dir": str(data_dir.resolve())} if data_dir else None
    plan = expand(load_recipe(recipe, overrides))
    _run_plan(plan, out or Path("runs") / plan.recipe.name, dry_run=dry_run, registry=registry, device=device)


def _run_plan(plan, out: Path, *, dry_run: bool, registry: Optional[Path], device: Optional[str]):
    from .report import rich_tables, score_table, write_report
    from .runner import describe, run_plan
    from .evaluate import read_results

    reg = _registry(registry)
    info = describe(plan, reg, run_dir=out)
    cached = info["cells_cached"]
    t = Table(title=f"plan: {plan.recipe.name} ({plan.recipe.backbone}, {plan.recipe.method}, {plan.recipe.quantization})")
    for col in ("#", "target", "composition", "intermediate", "seed", "status"):
        t.add_column(col)
    for i, c in enumerate(plan.cells, 1):
        done = (out / "cells" / f"{c.key}.json").exists()
        t.add_row(str(i), c.target, c.composition, "+".join(c.intermediates) or "-", str(c.seed), "cached" if done else "to run")
    console.print(t)
    console.print(f"{info['cells']} cells ({cached} cached); intermediate modules to train: {len(info['modules_to_train'])}, "
                  f"reused: {len(info['modules_reused'])}; training steps to run: {info['training_steps']:,}")
    if dry_run:
        from .runner import estimate_hours

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
        console.print(f"estimated training time on this machine ({est['device']}): {est['hours']:,.2f} h for "
                      f"{est['jobs']} trainings, {est['training_tokens'] / 1e6:,.1f}M training tokens (batch x half the "
                      f"max length per step); {'; '.join(how) or 'nothing to train'}. Evaluation not included.")
        return
    t0 = time.perf_counter()
    run_plan(plan, out, registry=reg, console=console, device=device)
    report = write_report(out, f"Results: {plan.recipe.name}")
    for tab in rich_tables(score_table(read_results(out / "results.jsonl"))):
        console.print(tab)
    console.print(f"done in {time.perf_counter() - t0:.0f}s: {out / 'results.jsonl'}, {report}")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("xtl-out/quickstart"), help="output folder"),
    registry: Optional[Path] = typer.Option(None, help="registry (default: <out>/registry)"),
    steps: Optional[int] = typer.Option(None, help="override training steps (for a faster look)"),
    device: Optional[str] = typer.Option(None),
):
    """The whole flow offline in minutes: xlmr-e5-small, bundled demo data, two intermediate
    modules, a target trained with and without them, zero-shot in 7 languages, a table."""
    from .recipe import BUILTIN, expand, load_recipe

    overrides = {"train": {"steps": steps}} if steps else None
    recipe = load_recipe(BUILTIN / "quickstart.yaml", overrides)
    if steps:
        for part in recipe.intermediate + recipe.targets:
            part.steps = steps
    plan = expand(recipe)
    console.print(f"[bold]adapters_xtl quickstart[/] -> {out}  (demo data written for this project; see "
                  f"{BUILTIN / 'README.md'})")
    _run_plan(plan, out, dry_run=False, registry=registry or out / "registry", device=device)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run folder with results.jsonl")):
    """Tables (terminal, report.md, report.csv) of a run's results."""
    from .evaluate import read_results
    from .report import rich_tables, score_table, write_report

    if not (run_dir / "results.jsonl").exists():
        raise XtlError(f"no results.jsonl in {run_dir}", where="RUN_DIR", fix="pass the folder `xtl run` wrote")
    path = write_report(run_dir)
    for tab in rich_tables(score_table(read_results(run_dir / "results.jsonl"))):
        console.print(tab)
    console.print(f"wrote {path} and {path.with_suffix('.csv')}")


# ------------------------------------------------------------------------------------ catalog
@app.command()
def tasks(group: Optional[str] = typer.Option(None, help="intermediate | target | demo | local")):
    """List the task catalog."""
    from .tasks import get_task, task_names

    t = Table(title="tasks")
    for col in ("name", "format", "group", "languages", "description"):
        t.add_column(col)
    for n in task_names():
        s = get_task(n)
        if group and s.group != group:
            continue
        t.add_row(n, s.format, s.group, str(len(s.languages)), s.description[:70])
    console.print(t)


@app.command()
def backbone(
    name: str = typer.Argument("xlmr-e5-small"),
    quantization: str = typer.Option("none"),
    check: bool = typer.Option(True, help="run the translation-similarity sanity check"),
):
    """Load (building if needed) a backbone and show its fingerprint and size."""
    from .backbone import load_backbone
    from .embedded import sanity_check

    t0 = time.perf_counter()
    bb = load_backbone(name, quantization)
    console.print(f"{bb.fingerprint.short()} from {bb.source}: {bb.total_params() / 1e6:.2f}M params, "
                  f"{bb.num_layers} layers, hidden {bb.hidden_size}, loaded in {time.perf_counter() - t0:.1f}s")
    if check:
        console.print(sanity_check(bb.model, bb.tokenizer, device=str(bb.device)))


from .cli_bench import bench  # noqa: E402
from .cli_registry import registry_app  # noqa: E402
from .cli_study import study  # noqa: E402

app.add_typer(registry_app, name="registry")
app.command()(bench)
app.command()(study)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one clear message and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, standalone_mode=False)
        return 0
    except XtlError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finished cells and checkpoints are kept; run again to resume")
        return 130
    except Exception as e:  # typer's (vendored) click exceptions: usage errors, Exit, Abort
        kind = type(e).__name__
        if kind == "Exit":
            return int(getattr(e, "exit_code", 0))
        if kind == "Abort":
            return 130
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return int(e.exit_code)
        raise


def entry() -> None:
    sys.exit(main())
