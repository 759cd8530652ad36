"""What every study shares: its recipe, its grid, and the files it writes.

A study is a recipe (``recipes/studies/NAME.yaml``: an ordinary recipe plus a ``study:`` section
with the study's own settings, validated by the study's :class:`StudyConfig` subclass) and an
analysis (one ``*_study.py`` file per study, registered in :mod:`adapters_xtl.studies`).
:func:`run_study` hands the study a :class:`StudyContext`, through which it runs the grid its
question needs with :func:`adapters_xtl.runner.run_plan` (finished cells are cached in
``<out>/grid``, intermediate modules are reused from the registry), measures what the grid does
not (distances, morphology, alignment, similarities) and computes the statistics; then
:func:`run_study` writes

* ``<out>/study.json``: every number (strict JSON: NaN written as null),
* ``<out>/study.md``: a Markdown report with the headline sentences, tables and figures,
* ``<out>/figures/*.png``: scatter plots labelled by language with a fitted line, line plots,
* ``<out>/grid/``: the grid's results.jsonl, cells and the usual report (report.md, heatmap).

Keeping this here means a study file holds only its question: its config, a pure ``analyze_*``
(results rows and measurements in, numbers out, so the tests check it on tables with a known
answer), ``run_*`` (grid and measurements, then ``analyze_*``) and ``render_*`` (its Markdown).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console

from adapters_xtl.errors import XtlError
from adapters_xtl.io import atomic_write_json, atomic_write_text
from adapters_xtl.studies import get_study
from adapters_xtl.studies.tables import jsonable

__all__ = [
    "StudyConfig",
    "StudyContext",
    "StudyOutput",
    "default_recipe",
    "extra_task_folder",
    "load_study",
    "render_markdown",
    "run_study",
]


# =========================================================================== recipe


class StudyConfig(BaseModel):
    """Settings every study takes; a study subclasses it with its own `study:` fields."""

    model_config = ConfigDict(extra="forbid")

    kind: str | None = None  # optional guard: the study this recipe is for
    # English test examples an intermediate module is scored on when the study trains it (the
    # grid runner scores all of them; a study only records the number in the manifest)
    module_eval_limit: int | None = 200


def default_recipe(name: str) -> Path:
    """``recipes/studies/NAME.yaml`` of the source checkout (or under the working directory)."""
    file = get_study(name).recipe
    here = Path(__file__).resolve().parents[2] / "recipes" / "studies" / file
    if here.exists():
        return here
    return Path.cwd() / "recipes" / "studies" / file


def load_study(name: str, path: str | Path | None = None, data_dir: str | Path | None = None):
    """(Recipe, study config) from a study recipe: a recipe plus a ``study:`` section."""
    from adapters_xtl.recipe import Recipe, _read_yaml, check_recipe

    study = get_study(name)
    config_cls = study.config_cls
    path = Path(path) if path else default_recipe(name)
    if not path.exists():
        raise XtlError(f"study recipe not found: {path}", where="--recipe",
                       fix=f"pass --recipe PATH, or run from the repository (recipes/studies/{study.recipe})")
    doc = _read_yaml(path)
    section = doc.pop("study", None) or {}
    if not isinstance(section, dict):
        raise XtlError("`study:` must be a mapping of study settings", where=str(path))
    if data_dir:
        doc["data_dir"] = str(Path(data_dir).expanduser().resolve())
    elif doc.get("data_dir") and not str(doc["data_dir"]).startswith("{"):
        dd = Path(doc["data_dir"]).expanduser()
        doc["data_dir"] = str(dd if dd.is_absolute() else (path.parent / dd).resolve())
    try:
        recipe = Recipe(**doc, file=str(path))
    except ValidationError as e:
        first = e.errors()[0]
        raise XtlError(f"field {'.'.join(str(x) for x in first['loc'])!r}: {first['msg']}", where=str(path),
                       fix="a study recipe is a recipe (adapters_xtl/recipe.py) plus a `study:` section") from None
    try:
        cfg = config_cls(**section)
    except ValidationError as e:
        first = e.errors()[0]
        raise XtlError(f"study.{'.'.join(str(x) for x in first['loc'])}: {first['msg']}", where=str(path),
                       fix=f"settings of study {name!r}: {', '.join(f for f in config_cls.model_fields if f != 'kind')}"
                       ) from None
    if cfg.kind and cfg.kind != name:
        raise XtlError(f"this recipe is for study {cfg.kind!r}, not {name!r}", where=str(path),
                       fix=f"run `xtl study {cfg.kind}`, or pass a {name} recipe")
    # its tasks, backbone and training settings, as `xtl run` checks them, before any work
    check_recipe(recipe, need_targets=False)
    return recipe, cfg


# =========================================================================== context


@dataclass
class StudyContext:
    name: str
    recipe: Any
    cfg: Any
    out: Path
    registry: Any
    console: Console
    device: str | None = None
    _backbone: Any = None
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path | None:
        return Path(self.recipe.data_dir) if self.recipe.data_dir else None

    @property
    def data_root(self) -> Path:
        from adapters_xtl.tasks import default_data_dir

        return self.data_dir or default_data_dir()

    @property
    def grid_dir(self) -> Path:
        return self.out / "grid"

    @property
    def fig_dir(self) -> Path:
        return self.out / "figures"

    def backbone(self):
        if self._backbone is None:
            from adapters_xtl.backbone import load_backbone

            t0 = time.perf_counter()
            self._backbone = load_backbone(self.recipe.backbone, self.recipe.quantization, self.device)
            self.console.print(f"backbone {self._backbone.fingerprint.short()} loaded in {time.perf_counter() - t0:.1f}s")
        return self._backbone

    def figure(self, name: str) -> Path:
        """Path for a figure; recorded (relative to ``out``) for the report."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        p = self.fig_dir / safe
        rel = str(p.relative_to(self.out))
        if rel not in self.figures:
            self.figures.append(rel)
        return p

    # -- the grid ---------------------------------------------------------------------------
    def run_grid(self, plan) -> list[dict]:
        """Run (or reuse) the plan's cells; the rows of this plan's cells only."""
        from adapters_xtl.runner import read_run_rows, run_plan

        todo = [c for c in plan.cells if not (self.grid_dir / "cells" / f"{c.key}.json").exists()]
        if todo:
            run_plan(plan, self.grid_dir, registry=self.registry, backbone=self.backbone(), console=self.console)
        else:
            self.console.print(f"[green]all {len(plan.cells)} cells cached[/] in {self.grid_dir / 'cells'}")
        keys = {c.key for c in plan.cells}
        rows = [r for r in read_run_rows(self.grid_dir) if r.get("cell") in keys]
        try:  # the usual grid report, of this plan's cells only (the grid folder may hold older ones)
            from adapters_xtl.reporting import write_report

            rep = self.out / "grid-report"
            rep.mkdir(parents=True, exist_ok=True)
            atomic_write_text(rep / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            write_report(rep, f"Grid of study {self.name}")
        except Exception as e:  # a convenience; the study report is the product
            self.notes.append(f"grid report not written: {e}")
        return rows

    def ensure_modules(self, plan, *, for_cells: bool = False) -> dict[str, str]:
        """Train (or reuse from the registry) the plan's intermediate modules as the grid runner
        does, but scored on at most ``module_eval_limit`` English test examples;
        ``{job name: "name@version"}``.  ``for_cells``: only those the unfinished cells need (and
        nothing, without loading the backbone, when every cell is cached)."""
        from adapters_xtl.pipeline import train_module
        from adapters_xtl.runner import _find_module, _train_config, make_progress, run_id, run_lock
        from adapters_xtl.tasks import get_task

        recipe = self.recipe
        jobs = list(plan.modules)
        if for_cells and not recipe.reuse_registry:
            return {}  # the grid runner trains them itself
        if for_cells:
            todo = [c for c in plan.cells if not (self.grid_dir / "cells" / f"{c.key}.json").exists()]
            needed = {n for c in todo for n in c.intermediates}
            jobs = [j for j in jobs if j.name in needed]
            if not jobs:
                return {}
        refs: dict[str, str] = {}
        bb = self.backbone()
        # the grid folder's lock, as the grid runner holds it: one process trains into it at a time
        with run_lock(self.grid_dir), make_progress(self.console) as progress:
            rid = run_id(self.grid_dir)
            for job in jobs:
                # this folder's own version first (a kill after it was registered), any if reuse is on
                man = _find_module(self.registry, job, bb.fingerprint, None if recipe.reuse_registry else rid)
                if man is None:
                    common = dict(name=job.name, method=recipe.method, method_config=recipe.method_config,
                                  train_config=_train_config(job.train, f"{recipe.file}: intermediate {job.task}",
                                                             allow_untrained=True),  # steps study: step 0
                                  registry=self.registry, data_dir=self.data_dir, recipe_hash=plan.recipe_hash,
                                  progress=progress, checkpoint_dir=self.grid_dir / "checkpoints" / job.name,
                                  extra_manifest={"train_key": job.key, "run": rid})
                    if job.multitask:
                        from adapters_xtl.multitask import train_multitask_module

                        tm = train_multitask_module(bb, job.multitask, sampling=job.sampling, cap=job.cap, **common)
                    else:
                        spec = get_task(job.task)
                        tm = train_module(bb, spec, eval_languages=[spec.train_language],
                                          eval_limit=self.cfg.module_eval_limit, **common)
                    man = tm.manifest
                    self.console.print(f"  trained {man.name} in {tm.result.seconds:.0f}s")
                refs[job.name] = f"{man.name}@{man.version}"
        return refs

    def describe(self, plan, extra: str = "") -> None:
        """The dry run: the cells the study needs (cached or not) and the training it would do."""
        from adapters_xtl.runner import describe

        info = describe(plan, self.registry, run_dir=self.grid_dir)
        self.console.print(f"[bold]study {self.name}[/]: {info['cells']} cells ({info['cells_cached']} cached); "
                           f"intermediate modules to train: {len(info['modules_to_train'])}, reused: "
                           f"{len(info['modules_reused'])}; training steps to run: {info['training_steps']:,}" + extra)
        for c in plan.cells:
            done = (self.grid_dir / "cells" / f"{c.key}.json").exists()
            self.console.print(f"  {c.label}{'  (cached)' if done else ''}")


@contextlib.contextmanager
def extra_task_folder(folder: Path) -> Iterator[None]:
    """Make the task YAMLs in ``folder`` part of the active catalog for the block (no
    environment variables: the catalog is a context, see tasks.TaskCatalog)."""
    from adapters_xtl.tasks import TaskCatalog, active_catalog

    with TaskCatalog(include=[*active_catalog().folders, folder]).active():
        yield


# =========================================================================== driver


@dataclass
class StudyOutput:
    result: dict[str, Any]
    json_path: Path
    md_path: Path


def run_study(name: str, *, recipe: str | Path | None = None, out: str | Path | None = None,
              data_dir: str | Path | None = None, registry=None, backbone=None, console: Console | None = None,
              device: str | None = None, dry_run: bool = False) -> StudyOutput | None:
    """Run study ``name`` end to end; write ``study.json`` and ``study.md`` under ``out``."""
    from adapters_xtl.store.registry import Registry

    study = get_study(name)
    rec, cfg = load_study(name, recipe, data_dir)
    out = Path(out) if out else Path("runs") / f"study-{name}"
    if registry is None or isinstance(registry, (str, Path)):
        registry = Registry(registry)
    ctx = StudyContext(name=name, recipe=rec, cfg=cfg, out=out, registry=registry, console=console or Console(),
                       device=device, _backbone=backbone)
    t0 = time.perf_counter()
    res = study.run(ctx, dry_run)
    if dry_run or res is None:
        return None
    res = {"study": name, "question": study.question, "headline": res.pop("headline", []), **res,
           "figures": list(ctx.figures), "notes": ctx.notes,
           "meta": {"recipe": rec.file, "recipe_name": rec.name, "backbone": rec.backbone, "method": rec.method,
                    "seeds": rec.seeds, "data_dir": rec.data_dir, "config": cfg.model_dump(),
                    "registry": str(registry.root), "grid": str(ctx.grid_dir),
                    "wall_seconds": round(time.perf_counter() - t0, 1),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "study.json"
    atomic_write_json(json_path, jsonable(res), indent=1, ensure_ascii=False, allow_nan=False)
    md_path = out / "study.md"
    atomic_write_text(md_path, render_markdown(res))
    ctx.console.print(f"study {name}: {md_path} and {json_path} ({res['meta']['wall_seconds']:.0f}s)")
    return StudyOutput(res, json_path, md_path)


def render_markdown(res: Mapping[str, Any]) -> str:
    name = res["study"]
    meta = res.get("meta", {})
    lines = [f"# Study: {name}", "", f"**Question.** {res['question']}", "",
             f"Recipe `{meta.get('recipe')}` ({meta.get('backbone')}, {meta.get('method')}, seeds {meta.get('seeds')}); "
             f"wall time {meta.get('wall_seconds')} s; grid in `{meta.get('grid')}` (its score tables and "
             f"heatmap: `grid-report/report.md`).", "", "## Headline", ""]
    lines += [f"- {h}" for h in res.get("headline", [])] or ["- (no results)"]
    lines.append("")
    lines += get_study(name).render(res)
    figs = res.get("figures", [])
    if figs:
        lines += ["## Figures", ""]
        for f in figs:
            lines += [f"![{Path(f).stem}]({f})", ""]
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    lines += ["## Reading these numbers", "",
              "Correlations are over languages (or task pairs): n is small, the bootstrap CIs are wide, and a "
              "permutation p-value is given for each; the sentences say what the data can and cannot support. "
              "Scores come from one grid with the recipe's budgets and evaluation limits: at small budgets, "
              "per-language differences of a few points are within evaluation noise.", ""]
    return "\n".join(lines)
