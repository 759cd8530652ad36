"""`xtl study NAME`: five research questions, one command each.

A study is a recipe (``recipes/studies/NAME.yaml``: an ordinary recipe plus a ``study:`` section
with the study's own settings) and an analysis.  :func:`run_study` runs the grid the question
needs through :func:`adapters_xtl.runner.run_plan` (finished cells are cached in ``<out>/grid``,
intermediate modules are reused from the registry), measures what the grid does not (distances,
morphology, alignment, similarities), computes the statistics and writes

* ``<out>/study.json``: every number (strict JSON: NaN written as null),
* ``<out>/study.md``: a Markdown report with the headline sentences, tables and figures,
* ``<out>/figures/*.png``: scatter plots labelled by language with a fitted line, line plots,
* ``<out>/grid/``: the grid's results.jsonl, cells and the usual report (report.md, heatmap).

The studies (each ``analyze_*`` function is pure: results rows and measurements in, numbers
out, so the tests check it on tables with a known answer):

``steps``
    intermediate training steps vs zero-shot score per language group.  The intermediate module
    is trained *once* per seed for the full budget B and snapshotted into the registry at the
    schedule's steps (default 0, B/8, B/4, B/2, B) as ``<label>-<hash>-step<k>`` (``mode:
    snapshots``: the weights at step k of one run, learning-rate schedule of B, no dev-based
    checkpoint selection), or trained separately for k steps each (``mode: separate``: each with
    its own complete schedule and best-dev selection, costs about 1.9 B).  Step 0 is the
    untrained module (LoRA: B = 0, exactly the bare backbone), so gains are measured against it
    through the same composition.  Reports per group where the gains saturate or reverse.
``typology``
    URIEL distance from English (syntactic, phonological, inventory, featural, genetic,
    geographic) vs the zero-shot gap (English score minus the language's score, of the
    no-intermediate `single` cells) and vs the gain from intermediate training.
``morphology``
    morphological complexity (UD FEATS per word where a treebank exists, MATTR and sub-word
    fertility on parallel text) vs how much cross-lingual alignment degrades when an English
    intermediate module is active: retrieval accuracy and CKA of translations' mean-pooled
    representations, backbone alone minus with the module (positive = degraded).
``similarity``
    task similarity between intermediate and target (backbone representations of the two tasks'
    English data: centroid cosine and covariance similarity; cosine of the trained modules'
    weight deltas) vs the gain, per language and averaged over languages.
``intermediate-language``
    the same intermediate task trained in different languages (UD POS: English vs the
    languages with a UD train split in the data folder), same budget, same targets: gains
    compared with the English intermediate (paired over target languages), the gain in the
    intermediate's own language, and gain vs the distance between the two languages.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console

from adapters_xtl.errors import XtlError, did_you_mean
from adapters_xtl.studies import stats
from adapters_xtl.studies.tables import (
    bar_plot,
    finite,
    fmt,
    gains,
    jsonable,
    main_metric_of,
    md_table,
    mean_ci,
    scores,
    seed_mean,
    sign_flip_p,
    strip_seed_suffix,
)

__all__ = [
    "STUDIES",
    "analyze_intermediate_language",
    "analyze_morphology",
    "analyze_similarity",
    "analyze_steps",
    "analyze_typology",
    "default_recipe",
    "load_study",
    "run_study",
]

STUDIES = ("steps", "typology", "morphology", "similarity", "intermediate-language")
QUESTIONS = {
    "steps": "How does the number of intermediate training steps change zero-shot scores, "
             "per language group, and where do gains saturate or reverse?",
    "typology": "Does the zero-shot gap, and the gain from intermediate training, grow with a "
                "language's typological distance from English?",
    "morphology": "Does English intermediate training degrade cross-lingual alignment more for "
                  "morphologically complex languages?",
    "similarity": "Do intermediate tasks that are more similar to the target task help more?",
    "intermediate-language": "Does the language the intermediate task is trained in matter, at the "
                             "same task and budget?",
}
SPLIT_ORDER = ("test", "validation", "train")


# =========================================================================== configuration


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str | None = None  # optional guard: the study this recipe is for
    # English test examples an intermediate module is scored on when the study trains it (the
    # grid runner scores all of them; a study only records the number in the manifest)
    module_eval_limit: int | None = 200


class StepsConfig(_Cfg):
    schedule: list[float] = Field(default_factory=lambda: [0.0, 0.125, 0.25, 0.5, 1.0])
    mode: Literal["snapshots", "separate"] = "snapshots"
    groups: dict[str, list[str]] = Field(default_factory=dict)  # e.g. high: [...], low: [...]
    reversal_tol: float = 1.0  # points below the peak at the last step that count as a reversal
    saturation: float = 0.9  # share of the peak gain that counts as saturated

    @field_validator("schedule")
    @classmethod
    def _fractions(cls, v):
        if not v or any(not 0 <= f <= 1 for f in v):
            raise ValueError("schedule lists fractions of the budget in [0, 1], e.g. [0, 0.125, 0.25, 0.5, 1]")
        return sorted(set(v))


class TypologyConfig(_Cfg):
    pivot: str = "en"
    kinds: list[str] = Field(default_factory=lambda: ["syntactic", "phonological", "inventory", "featural",
                                                      "genetic", "geographic"])


class MorphologyConfig(_Cfg):
    languages: list[str]
    pivot: str = "en"
    parallel_task: str = "sib200"  # a retrieval task (line-aligned pairs) or one with an id column
    splits: list[str] = Field(default_factory=lambda: ["test", "validation", "train"])
    limit: int = 500  # parallel sentences per language
    layers: list[int | str] = Field(default_factory=lambda: ["mid", "last"])
    ud_dir: str | None = None  # default <data_dir>/ud
    ud_max_sentences: int = 1000
    mattr_window: int = 100
    batch_size: int = 32


class SimilarityConfig(_Cfg):
    n_texts: int = 200  # English training texts per task for the representation measures
    layer: int | str = "last"
    batch_size: int = 32


class IntermediateLanguageConfig(_Cfg):
    base_task: str | None = None  # default: the recipe's one intermediate task
    train_languages: list[str] = Field(default_factory=lambda: ["en", "tr", "vi"])
    reference: str = "en"
    treebanks: dict[str, str] = Field(default_factory=dict)  # lang -> "UD_X/xx_tb" under <data_dir>/ud
    kinds: list[str] = Field(default_factory=lambda: ["syntactic", "genetic"])


CONFIGS: dict[str, type[_Cfg]] = {
    "steps": StepsConfig,
    "typology": TypologyConfig,
    "morphology": MorphologyConfig,
    "similarity": SimilarityConfig,
    "intermediate-language": IntermediateLanguageConfig,
}


def _check_name(name: str) -> str:
    if name not in STUDIES:
        raise XtlError(f"unknown study {name!r}", where="xtl study NAME", fix=did_you_mean(name, STUDIES))
    return name


def default_recipe(name: str) -> Path:
    """``recipes/studies/NAME.yaml`` of the source checkout (or under the working directory)."""
    _check_name(name)
    here = Path(__file__).resolve().parents[2] / "recipes" / "studies" / f"{name}.yaml"
    if here.exists():
        return here
    return Path.cwd() / "recipes" / "studies" / f"{name}.yaml"


def load_study(name: str, path: str | Path | None = None, data_dir: str | Path | None = None):
    """(Recipe, study config) from a study recipe: a recipe plus a ``study:`` section."""
    from adapters_xtl.recipe import Recipe, _read_yaml

    _check_name(name)
    path = Path(path) if path else default_recipe(name)
    if not path.exists():
        raise XtlError(f"study recipe not found: {path}", where="--recipe",
                       fix=f"pass --recipe PATH, or run from the repository (recipes/studies/{name}.yaml)")
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
        cfg = CONFIGS[name](**section)
    except ValidationError as e:
        first = e.errors()[0]
        raise XtlError(f"study.{'.'.join(str(x) for x in first['loc'])}: {first['msg']}", where=str(path),
                       fix=f"settings of study {name!r}: {', '.join(f for f in CONFIGS[name].model_fields if f != 'kind')}"
                       ) from None
    if cfg.kind and cfg.kind != name:
        raise XtlError(f"this recipe is for study {cfg.kind!r}, not {name!r}", where=str(path),
                       fix=f"run `xtl study {cfg.kind}`, or pass a {name} recipe")
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
        from adapters_xtl.evaluate import read_results
        from adapters_xtl.runner import run_plan

        todo = [c for c in plan.cells if not (self.grid_dir / "cells" / f"{c.key}.json").exists()]
        if todo:
            run_plan(plan, self.grid_dir, registry=self.registry, backbone=self.backbone(), console=self.console)
        else:
            self.console.print(f"[green]all {len(plan.cells)} cells cached[/] in {self.grid_dir / 'cells'}")
        keys = {c.key for c in plan.cells}
        rows = [r for r in read_results(self.grid_dir / "results.jsonl") if r.get("cell") in keys]
        try:  # the usual grid report, of this plan's cells only (the grid folder may hold older ones)
            from adapters_xtl.report import write_report

            rep = self.out / "grid-report"
            rep.mkdir(parents=True, exist_ok=True)
            (rep / "results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
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
        from adapters_xtl.runner import _find_module, _train_config, make_progress
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
        with make_progress(self.console) as progress:
            for job in jobs:
                man = _find_module(self.registry, job, bb.fingerprint) if recipe.reuse_registry else None
                if man is None:
                    common = dict(name=job.name, method=recipe.method, method_config=recipe.method_config,
                                  train_config=_train_config(job.train, f"{recipe.file}: intermediate {job.task}"),
                                  registry=self.registry, data_dir=self.data_dir, recipe_hash=plan.recipe_hash,
                                  progress=progress, checkpoint_dir=self.grid_dir / "checkpoints" / job.name,
                                  extra_manifest={"train_key": job.key})
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


def _describe(ctx: StudyContext, plan, extra: str = "") -> None:
    from adapters_xtl.runner import describe

    info = describe(plan, ctx.registry, run_dir=ctx.grid_dir)
    ctx.console.print(f"[bold]study {ctx.name}[/]: {info['cells']} cells ({info['cells_cached']} cached); "
                      f"intermediate modules to train: {len(info['modules_to_train'])}, reused: "
                      f"{len(info['modules_reused'])}; training steps to run: {info['training_steps']:,}" + extra)
    for c in plan.cells:
        done = (ctx.grid_dir / "cells" / f"{c.key}.json").exists()
        ctx.console.print(f"  {c.label}{'  (cached)' if done else ''}")


# =========================================================================== shared analysis bits


def _corr_pair(x: Sequence[Any], y: Sequence[Any], unit: str = "languages") -> dict[str, Any]:
    """Spearman and Pearson (bootstrap CI, permutation p, sentence) of paired values."""
    out: dict[str, Any] = {}
    for method in stats.METHODS:
        try:
            c = stats.correlate(list(x), list(y), method=method)
        except XtlError as e:
            out[method] = {"error": str(e), "n": len(finite(x)), "sentence": f"no {method} correlation: {e}"}
            continue
        d = c.as_dict()
        d["sentence"] = c.sentence(unit)
        out[method] = d
    return out


def _corr_obj(d: Mapping[str, Any], method: str = "spearman"):
    """Back from as_dict to a Correlation (for plot titles), or None."""
    m = d.get(method) or {}
    if "r" not in m:
        return None
    keys = stats.Correlation.__dataclass_fields__
    return stats.Correlation(**{k: m[k] for k in keys if k in m})


def _strongest(corrs: Sequence[Mapping[str, Any]], method: str = "spearman") -> Mapping[str, Any] | None:
    best, best_abs = None, -1.0
    for c in corrs:
        r = (c.get(method) or {}).get("r")
        if r is not None and isinstance(r, float) and math.isfinite(r) and abs(r) > best_abs:
            best, best_abs = c, abs(r)
    return best if best is not None else (corrs[0] if corrs else None)


def _scatter(ctx: StudyContext | None, name: str, xs, ys, labels, *, xlabel, ylabel, title,
             corr: Mapping[str, Any] | None) -> str | None:
    """One labelled scatter with its fit; returns the figure path relative to the study folder."""
    if ctx is None:
        return None
    pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None
           and math.isfinite(float(x)) and math.isfinite(float(y))]
    if len(pts) < 2:
        return None
    path = ctx.figure(name)
    stats.scatter_plot(xs, ys, labels, path, xlabel=xlabel, ylabel=ylabel, title=title,
                       corr=_corr_obj(corr) if corr else None)
    return str(path.relative_to(ctx.out))


def _corr_rows(corrs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for c in corrs:
        s, p = c.get("spearman") or {}, c.get("pearson") or {}
        rows.append([c["x"], c["y"], _ci(s), fmt(s.get("p_perm"), "{:.3f}"), _ci(p), fmt(p.get("p_perm"), "{:.3f}"),
                     str(s.get("n", ""))])
    return rows


CORR_HEADER = ["x", "y", "Spearman r [95% CI]", "p", "Pearson r [95% CI]", "p", "n"]


def _ci(d: Mapping[str, Any]) -> str:
    if not d or d.get("r") is None or (isinstance(d.get("r"), float) and not math.isfinite(d["r"])):
        return "n/a"
    return f"{d['r']:+.2f} [{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]"


# =========================================================================== 1. steps

STEP_RE = re.compile(r"-step(\d+)(?:-seed\d+)?$")


def step_of(name: str) -> int | None:
    m = STEP_RE.search(name or "")
    return int(m.group(1)) if m else None


def analyze_steps(rows: Sequence[Mapping[str, Any]], *, groups: Mapping[str, Sequence[str]] | None = None,
                  reversal_tol: float = 1.0, saturation: float = 0.9, budget: int | None = None) -> dict[str, Any]:
    """Score vs intermediate steps per language and group, from the rows of a steps grid.

    Intermediate modules are recognised by their ``-step<k>`` names.  Gains are against step 0
    (or, when no step-0 cell exists, against the ``single`` cells).  Per group: the mean score at
    each step, the mean gain over the group's languages with a bootstrap CI, the step of the peak,
    the first step reaching ``saturation`` of the peak gain, and whether the last step fell more
    than ``reversal_tol`` points below the peak (a reversal).
    """
    targets = sorted({r.get("target", r.get("task")) for r in rows if "composition" in r})
    out: dict[str, Any] = {"targets": {}, "budget": budget}
    for target in targets:
        metric = main_metric_of(rows, target)
        table = scores(rows, target, metric)
        single = {lang: seed_mean(s) for lang, s in table.get(("single", "none"), {}).items()}
        comps: dict[str, Any] = {}
        kinds = sorted({c for c, i in table if c != "single"})
        for comp in kinds:
            # per step: language -> seed -> score (several seeds' modules pool by step)
            by_step: dict[int, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
            for (c, inter), per_lang in table.items():
                k = step_of(inter)
                if c != comp or k is None:
                    continue
                for lang, seeds in per_lang.items():
                    by_step[k][lang].update(seeds)
            if not by_step:
                continue
            steps = sorted(by_step)
            langs = sorted({lang for d in by_step.values() for lang in d}, key=lambda x: (x != "en", x))
            per_lang = {lang: {k: seed_mean(by_step[k][lang]) for k in steps if lang in by_step[k]} for lang in langs}
            ref_name = "step 0" if 0 in by_step else "single"
            ref = ({lang: by_step[0][lang] for lang in by_step[0]} if 0 in by_step
                   else {lang: table.get(("single", "none"), {}).get(lang, {}) for lang in langs})
            gain_lang: dict[str, dict[int, float]] = {}
            for lang in langs:
                gain_lang[lang] = {}
                for k in steps:
                    seeds = by_step[k].get(lang, {})
                    diffs = [v - ref[lang][s] for s, v in seeds.items() if s in ref.get(lang, {})]
                    if diffs:
                        gain_lang[lang][k] = statistics.fmean(diffs)
            gdefs = {g: list(v) for g, v in (groups or {}).items()} or {"all": [l for l in langs if l != "en"] or langs}
            gres = {}
            for g, members in gdefs.items():
                present = [l for l in members if l in per_lang]
                if not present:
                    gres[g] = {"languages": [], "missing": list(members), "verdict": f"{g}: no results for its languages"}
                    continue
                mean_score = {k: statistics.fmean([per_lang[l][k] for l in present if k in per_lang[l]])
                              for k in steps if any(k in per_lang[l] for l in present)}
                gain_ci = {k: mean_ci([gain_lang[l].get(k) for l in present]) for k in steps}
                gres[g] = {"languages": present, "missing": [l for l in members if l not in per_lang],
                           "mean_score": mean_score, "gain": {k: v.as_dict() for k, v in gain_ci.items()},
                           **_saturation(mean_score, reversal_tol, saturation), "group": g}
                gres[g]["verdict"] = _steps_verdict(g, gres[g], gain_ci, metric)
            comps[comp] = {"steps": steps, "reference": ref_name, "per_language": per_lang, "gain_per_language": gain_lang,
                           "groups": gres}
        out["targets"][target] = {"metric": metric, "compositions": comps, "single": single}
    return out


def _saturation(mean_score: Mapping[int, float], tol: float, share: float) -> dict[str, Any]:
    steps = sorted(mean_score)
    first, last = steps[0], steps[-1]
    peak = max(steps, key=lambda k: (mean_score[k], -k))
    peak_gain = mean_score[peak] - mean_score[first]
    sat = None
    if peak_gain > 0:
        sat = next(k for k in steps if mean_score[k] - mean_score[first] >= share * peak_gain)
    drop = mean_score[peak] - mean_score[last]
    return {"peak_step": peak, "peak_gain": peak_gain, "saturation_step": sat, "final_gain": mean_score[last] - mean_score[first],
            "drop_from_peak": drop, "reversal": bool(drop > tol), "reversal_tol": tol, "saturation_share": share}


def _steps_verdict(g: str, r: Mapping[str, Any], gain_ci: Mapping[int, Any], metric: str) -> str:
    steps = sorted(r["mean_score"])
    first, last = steps[0], steps[-1]
    peak = r["peak_step"]
    ci = gain_ci.get(peak)
    parts = [f"{g} ({len(r['languages'])} languages): mean {metric} {r['mean_score'][first]:.1f} at step {first}, "
             f"peak {r['mean_score'][peak]:.1f} at step {peak} (gain {ci.text() if ci else fmt(r['peak_gain'])})"]
    if r["peak_gain"] <= 0:
        parts.append("no step beat the start")
    else:
        sat = r["saturation_step"]
        parts.append(f"{r['saturation_share']:.0%} of the peak gain is reached by step {sat}"
                     + (" (saturates early)" if sat < peak else ""))
    if r["reversal"]:
        parts.append(f"the last step ({last}) is {r['drop_from_peak']:.1f} points below the peak: a reversal "
                     f"(tolerance {r['reversal_tol']:.1f})")
    elif peak != last:
        parts.append(f"the last step is {r['drop_from_peak']:.1f} points below the peak, within the "
                     f"{r['reversal_tol']:.1f}-point tolerance")
    return "; ".join(parts) + "."


def _derive_steps_recipe(recipe, cfg: StepsConfig):
    from adapters_xtl.manifest import config_hash
    from adapters_xtl.methods import get_method
    from adapters_xtl.recipe import CompositionSpec, IntermediateSpec
    from adapters_xtl.tasks import get_task
    from adapters_xtl.train import TrainConfig

    if len(recipe.intermediate) != 1 or not recipe.intermediate[0].task:
        raise XtlError("the steps study takes exactly one (single-task) intermediate", where=recipe.file,
                       fix="list one `intermediate:` entry with `task:`")
    inter = recipe.intermediate[0]
    budget = inter.steps or inter.train.get("steps") or recipe.train.get("steps") or TrainConfig().steps
    ks = sorted({int(round(f * budget)) for f in cfg.schedule})
    mcfg = get_method(recipe.method).make_config(recipe.method_config).model_dump()
    base_key = config_hash({"task": inter.task, "method": recipe.method, "method_config": mcfg,
                            "backbone": recipe.backbone, "quantization": recipe.quantization,
                            "train": {**recipe.train, **inter.train, "steps": budget}, "mode": cfg.mode})
    label = re.sub(r"[^A-Za-z0-9._-]", "-", inter.name or get_task(inter.task).name)
    inters = []
    for k in ks:
        name = f"{label}-{base_key[:8]}-step{k}"
        if cfg.mode == "snapshots":
            inters.append(IntermediateSpec(task=inter.task, name=name, steps=budget,
                                           train={**inter.train, "snapshot_step": k}))
        else:
            inters.append(IntermediateSpec(task=inter.task, name=name, train={**inter.train, "steps": k}))
    comps = []
    for c in recipe.compositions:
        if c.kind in ("fuse", "merge"):
            raise XtlError(f"the steps study compares one intermediate at several steps; `{c.kind}` mixes "
                           "modules", where=recipe.file, fix="use stack and/or continue (and single)")
        comps.append(c if c.kind == "single" else CompositionSpec(kind=c.kind))
    if not any(c.kind != "single" for c in comps):
        raise XtlError("the steps study needs a composition that uses the intermediate", where=recipe.file,
                       fix="add `continue` or `stack` to compositions")
    derived = recipe.model_copy(update={"intermediate": inters, "compositions": comps, "reuse_registry": True})
    return derived, budget, ks


class _SnapshotsDone(Exception):
    pass


def train_snapshots(backbone, jobs: Sequence[Any], *, method: str, method_config: Mapping[str, Any] | None,
                    registry, data_dir: Path | None, recipe_hash: str | None = None, progress=None) -> list[Any]:
    """Train one intermediate module once and save it at several steps (one registry module per
    job; every job has the same task, seed and train config except ``snapshot_step``).

    The snapshot at step k holds the module and head weights after k optimizer steps of the full
    schedule (no dev-based selection).  Training stops after the last snapshot needed.
    """
    from adapters_xtl.compose import Composition
    from adapters_xtl.data import load_examples
    from adapters_xtl.manifest import Manifest, library_versions
    from adapters_xtl.methods import get_method
    from adapters_xtl.methods.base import count_parameters
    from adapters_xtl.model import TaskModel, attach_new, slot_name
    from adapters_xtl.pipeline import compose_into, default_main_metric
    from adapters_xtl.tasks import get_task
    from adapters_xtl.train import TrainConfig, set_seed, train

    jobs = sorted(jobs, key=lambda j: j.train["snapshot_step"])
    first = jobs[0]
    cfg = TrainConfig(**{k: v for k, v in first.train.items() if k != "snapshot_step"})
    spec = get_task(first.task)
    train_task = get_task(spec.train_task) if spec.train_task else spec
    train_ex = load_examples(train_task, "train", train_task.train_language, data_dir)
    method_obj = get_method(method)
    mcfg = method_obj.make_config(method_config)
    want = {j.train["snapshot_step"]: j for j in jobs}
    if max(want) > cfg.steps:
        raise XtlError(f"snapshot step {max(want)} is beyond the budget of {cfg.steps} steps")
    slot = slot_name(f"{first.name}_snapshots")
    method_obj.remove(backbone, slot)
    set_seed(cfg.seed)
    attach_new(backbone, method, mcfg, slot)
    saved: list[Any] = []
    state = None
    t0 = time.perf_counter()
    try:
        state, _ = compose_into(backbone, registry, Composition(), method, slot, mcfg.model_dump())
        state.activate(backbone, train=True)
        model = TaskModel(backbone, spec)
        fmt_ = model.format
        feats = fmt_.encode(train_ex, spec, backbone.tokenizer, train=True)
        trainable = {f"module.{n}": p for n, p in method_obj.named_parameters(backbone, slot).items()}
        trainable.update({f"head.{n}": p for n, p in model.head.named_parameters()})
        for p in trainable.values():
            p.requires_grad_(True)
        n_train = count_parameters(trainable.values())

        def save(k: int) -> None:
            job = want[k]
            weights = {n: p.detach().cpu().clone() for n, p in trainable.items() if n.startswith("head.")}
            weights.update({f"module.{n}": v for n, v in method_obj.state_dict(backbone, slot).items()})
            man = Manifest(
                name=job.name, task=spec.name, format=spec.format, method=method, method_config=mcfg.model_dump(),
                head=fmt_.head_config(spec), composition={"kind": "single"}, backbone=backbone.fingerprint,
                recipe_hash=recipe_hash, steps=k, seed=cfg.seed, train_examples=len(feats), scores={},
                trainable_params=n_train, library_versions=library_versions(),
                training={"config": cfg.model_dump(), "snapshot_step": k, "budget": cfg.steps,
                          "seconds": round(time.perf_counter() - t0, 2)},
                train_key=job.key, snapshot_of=f"{first.task} ({cfg.steps} steps)",
            )
            saved.append(registry.save(man, weights))
            if len(saved) == len(want):
                raise _SnapshotsDone

        def on_step(done: int) -> None:
            if done in want:
                save(done)

        try:
            if 0 in want:
                save(0)
            train(model, trainable, feats, None, None, cfg, main_metric=default_main_metric(spec), progress=progress,
                  description=f"{first.task} snapshots", on_step=on_step)
        except _SnapshotsDone:
            pass
    finally:
        if state is not None:
            state.teardown(backbone)
        method_obj.remove(backbone, slot)
    return saved


def run_steps(ctx: StudyContext, dry_run: bool = False) -> dict[str, Any] | None:
    from adapters_xtl.recipe import expand
    from adapters_xtl.runner import _find_module, make_progress

    cfg: StepsConfig = ctx.cfg
    derived, budget, ks = _derive_steps_recipe(ctx.recipe, cfg)
    plan = expand(derived)
    if dry_run:
        _describe(ctx, plan, f"\n  intermediate: {cfg.mode} at steps {ks} of a {budget}-step budget"
                  + (" (one training run per seed; the count above lists each snapshot)" if cfg.mode == "snapshots" else ""))
        return None
    todo = [c for c in plan.cells if not (ctx.grid_dir / "cells" / f"{c.key}.json").exists()]
    if todo and cfg.mode == "snapshots":
        bb = ctx.backbone()
        for seed in derived.seeds:
            jobs = [j for j in plan.modules if j.seed == seed]
            missing = [j for j in jobs if _find_module(ctx.registry, j, bb.fingerprint) is None]
            if missing:
                ctx.console.print(f"training {jobs[0].task} once ({budget} steps, seed {seed}), snapshots at "
                                  f"{[j.train['snapshot_step'] for j in missing]}")
                with make_progress(ctx.console) as progress:
                    train_snapshots(bb, missing, method=derived.method, method_config=derived.method_config,
                                    registry=ctx.registry, data_dir=ctx.data_dir, recipe_hash=plan.recipe_hash,
                                    progress=progress)
    if cfg.mode == "separate":
        ctx.ensure_modules(plan, for_cells=True)
    rows = ctx.run_grid(plan)
    res = analyze_steps(rows, groups=cfg.groups, reversal_tol=cfg.reversal_tol, saturation=cfg.saturation,
                        budget=budget)
    res["schedule"] = {"fractions": cfg.schedule, "steps": ks, "mode": cfg.mode}
    headline = []
    for target, t in res["targets"].items():
        for comp, c in t["compositions"].items():
            series = {g: [(k, v) for k, v in r["mean_score"].items()] for g, r in c["groups"].items() if r.get("languages")}
            if series:
                p = ctx.figure(f"steps_{target}_{comp}.png")
                stats.line_plot(series, p, xlabel="intermediate training steps", ylabel=f"{target} {t['metric']}",
                                title=f"{target} ({comp}) vs intermediate steps, mean per group")
            per = {lang: list(v.items()) for lang, v in c["per_language"].items()}
            p = ctx.figure(f"steps_{target}_{comp}_languages.png")
            stats.line_plot(per, p, xlabel="intermediate training steps", ylabel=f"{target} {t['metric']}",
                            title=f"{target} ({comp}) vs intermediate steps, per language")
            headline += [f"{target}, {comp}: {r['verdict']}" for r in c["groups"].values()]
    res["headline"] = headline
    return res


def render_steps(res: Mapping[str, Any]) -> list[str]:
    lines = [f"Budget: {res.get('budget')} intermediate steps; schedule {res.get('schedule', {}).get('steps')} "
             f"({res.get('schedule', {}).get('mode')}).", ""]
    for target, t in res["targets"].items():
        for comp, c in t["compositions"].items():
            steps = c["steps"]
            lines += [f"## {target} ({t['metric']}), {comp}: score per step", "",
                      f"Gains are against {c['reference']}.", ""]
            single = t.get("single") or {}
            hdr = ["language"] + (["single"] if single else []) + [f"step {k}" for k in steps]
            body = [[lang] + ([fmt(single.get(lang), "{:.1f}")] if single else []) + [fmt(v.get(k), "{:.1f}") for k in steps]
                    for lang, v in c["per_language"].items()]
            lines += [md_table(hdr, body), ""]
            lines += [f"### Groups: mean gain over step {steps[0]} [95% bootstrap CI over languages]", ""]
            body = []
            for g, r in c["groups"].items():
                if not r.get("languages"):
                    continue
                body.append([f"{g} ({', '.join(r['languages'])})"]
                            + [(r["gain"].get(k) or r["gain"].get(str(k)) or {}).get("text", "") for k in steps])
            lines += [md_table(["group"] + [f"step {k}" for k in steps], body), ""]
            for r in c["groups"].values():
                lines.append(f"- {r['verdict']}")
            lines.append("")
    return lines


# =========================================================================== 2. typology


def analyze_typology(rows: Sequence[Mapping[str, Any]], distances: Mapping[str, Mapping[str, float]], *,
                     pivot: str = "en", kinds: Sequence[str] | None = None) -> dict[str, Any]:
    """Distance from ``pivot`` vs the zero-shot gap (pivot score minus language score, of the
    ``single`` cells) and vs the gain of each (composition, intermediate task), per target.

    ``distances``: ``{lang: {kind: distance}}`` (NaN where URIEL lacks a language).
    """
    out: dict[str, Any] = {"pivot": pivot, "targets": {}}
    targets = sorted({r.get("target", r.get("task")) for r in rows if "composition" in r})
    for target in targets:
        metric = main_metric_of(rows, target)
        table = scores(rows, target, metric, key="intermediate_task")
        base = {lang: seed_mean(s) for lang, s in table.get(("single", "none"), {}).items()}
        if pivot not in base:
            raise XtlError(f"target {target!r} has no {pivot!r} score to measure the gap from",
                           fix=f"add {pivot!r} to the target's languages")
        langs = [l for l in sorted(base) if l != pivot]
        gap = {l: base[pivot] - base[l] for l in langs}
        g = gains(table)
        gain_series = {f"gain {c}/{i}": {l: v.get(l) for l in langs} for (c, i), v in sorted(g.items())}
        if len(gain_series) > 1:
            gain_series["gain (mean over intermediates)"] = {
                l: statistics.fmean(finite([v.get(l) for v in gain_series.values()])) if finite(
                    [v.get(l) for v in gain_series.values()]) else math.nan for l in langs}
        kinds_ = list(kinds or sorted({k for d in distances.values() for k in d}))
        corrs = []
        for kind in kinds_:
            xs = [distances.get(l, {}).get(kind, math.nan) for l in langs]
            for yname, ys in [("gap", gap), *gain_series.items()]:
                corrs.append({"x": f"{kind} distance", "kind": kind, "y": yname,
                              **_corr_pair(xs, [ys.get(l, math.nan) for l in langs])})
        out["targets"][target] = {"metric": metric, "languages": langs, "baseline": base, "gap": gap,
                                  "gains": gain_series, "distances": {l: dict(distances.get(l, {})) for l in langs},
                                  "correlations": corrs}
    return out


def run_typology(ctx: StudyContext, dry_run: bool = False) -> dict[str, Any] | None:
    from adapters_xtl.recipe import expand
    from adapters_xtl.studies import typology

    cfg: TypologyConfig = ctx.cfg
    if not any(c.kind == "single" for c in ctx.recipe.compositions):
        raise XtlError("the typology study needs `single` cells (the gap and the gains are measured from them)",
                       where=ctx.recipe.file, fix="add single to compositions")
    plan = expand(ctx.recipe)
    if dry_run:
        _describe(ctx, plan)
        return None
    ctx.ensure_modules(plan, for_cells=True)
    rows = ctx.run_grid(plan)
    langs = sorted({r["language"] for r in rows})
    distances = typology.distances_from(cfg.pivot, langs, cfg.kinds, missing="nan")
    res = analyze_typology(rows, distances, pivot=cfg.pivot, kinds=cfg.kinds)
    headline = []
    for target, t in res["targets"].items():
        langs = t["languages"]
        for c in t["correlations"]:
            ys = t["gap"] if c["y"] == "gap" else t["gains"][c["y"]]
            if c["y"] == "gap" or c["y"] == list(t["gains"])[-1]:  # gap and the (mean) gain per kind
                short = "gap" if c["y"] == "gap" else "gain"
                c["figure"] = _scatter(ctx, f"typology_{target}_{short}_{c['kind']}.png",
                                       [t["distances"][l].get(c["kind"]) for l in langs], [ys.get(l) for l in langs], langs,
                                       xlabel=f"{c['kind']} distance from {cfg.pivot} (URIEL)",
                                       ylabel=f"{c['y']} ({t['metric']} points)", title=f"{target}: {c['y']}",
                                       corr=c)
        for yname in ["gap", list(t["gains"])[-1] if t["gains"] else None]:
            if yname is None:
                continue
            best = _strongest([c for c in t["correlations"] if c["y"] == yname])
            if best:
                headline.append(f"{target}, {yname} vs {best['x']} (the strongest of {len(cfg.kinds)} kinds): "
                                + best["spearman"]["sentence"])
    res["headline"] = headline
    return res


def render_typology(res: Mapping[str, Any]) -> list[str]:
    lines = []
    for target, t in res["targets"].items():
        langs = t["languages"]
        lines += [f"## {target} ({t['metric']})", "",
                  f"Baseline (`single`) {res['pivot']} score: {fmt(t['baseline'].get(res['pivot']), '{:.1f}')}. "
                  f"Gap = {res['pivot']} score minus the language's score; gains are over `single`.", ""]
        kinds = sorted({c["kind"] for c in t["correlations"]})
        hdr = ["language", "score", "gap"] + list(t["gains"]) + kinds
        body = [[l, fmt(t["baseline"].get(l), "{:.1f}"), fmt(t["gap"].get(l), "{:+.1f}")]
                + [fmt(g.get(l), "{:+.1f}") for g in t["gains"].values()]
                + [fmt(t["distances"][l].get(k), "{:.3f}") for k in kinds] for l in langs]
        lines += [md_table(hdr, body), "", "### Correlations", "", md_table(CORR_HEADER, _corr_rows(t["correlations"])), ""]
        for c in t["correlations"]:
            if c.get("figure"):
                lines.append(f"- {c['y']} vs {c['x']}: {c['spearman'].get('sentence', '')}")
        lines.append("")
    return lines


# =========================================================================== 3. morphology


def parallel_texts(spec, lang: str, pivot: str, data_dir: Path | None, *, splits: Sequence[str] = SPLIT_ORDER,
                   limit: int | None = None) -> tuple[list[str], list[str]]:
    """(language side, pivot side) of up to ``limit`` translation pairs.

    A retrieval task gives its line-aligned pairs (Tatoeba: the English side differs per
    language).  A task with an id column whose ids name the same item in every language (SIB-200:
    FLORES sentences) gives the examples of ``splits`` paired by id.
    """
    from adapters_xtl.data import load_examples
    from adapters_xtl.evaluate import retrieval_pairs

    if spec.format == "retrieval":
        return retrieval_pairs(spec, lang, data_dir, limit)
    if not spec.id_column:
        raise XtlError(f"task {spec.name!r} has no id column to pair translations by", where="study.parallel_task",
                       fix="use a retrieval task (tatoeba) or a parallel one with an id column (sib200)")
    from adapters_xtl.data import source_path

    xx, en = [], []
    for split in splits:
        if split not in spec.splits:
            continue
        src = spec.splits[split]
        if src.path and any(not source_path(src, spec, l, data_dir).exists() for l in (lang, pivot)) and src.kind != "hub":
            continue  # not in the local data (SIB-200 in ../shared/data has only English dev splits)
        a = load_examples(spec, split, lang, data_dir)
        b = {str(e["id"]): e for e in load_examples(spec, split, pivot, data_dir)}
        for e in a:
            other = b.get(str(e["id"]))
            if other is not None and e.get("text") and other.get("text"):
                xx.append(e["text"])
                en.append(other["text"])
    if limit:
        xx, en = xx[:limit], en[:limit]
    if not xx:
        raise XtlError(f"no parallel {lang}-{pivot} pairs in task {spec.name!r}", where="study.parallel_task")
    return xx, en


def text_words(text: str) -> list[str]:
    """Lower-cased whitespace words with leading/trailing punctuation and symbols stripped (not a
    ``\\w+`` regex: it splits Devanagari, Tamil, ... words at their combining vowel signs)."""
    import unicodedata

    out = []
    for w in text.lower().split():
        a, b = 0, len(w)
        while a < b and unicodedata.category(w[a])[0] in "PS":
            a += 1
        while b > a and unicodedata.category(w[b - 1])[0] in "PS":
            b -= 1
        if a < b:
            out.append(w[a:b])
    return out


def complexity_measures(lang: str, texts: Sequence[str], tokenizer, *, ud_root: Path | None, ud_max_sentences: int,
                        mattr_window: int) -> dict[str, Any]:
    """FEATS per word (UD test treebanks of the language, the PUD one when there is one), MATTR
    of the parallel text's lower-cased words, tokenizer fertility per word.  Text in a script
    without spaces gets NaN for MATTR and fertility (per-character values would not compare)."""
    from adapters_xtl.studies import morphology

    out: dict[str, Any] = {"feats": math.nan, "feats_source": None, "mattr": math.nan, "fertility": math.nan}
    if ud_root is not None and ud_root.is_dir():
        files = morphology.ud_files(ud_root, lang, "test")
        pud = [f for f in files if "_pud-" in f.name]
        files = pud or files
        if files:
            st = morphology.feats_stats(files, max_sentences=ud_max_sentences)
            out.update(feats=st.mean, feats_source=[f.parent.name for f in files], feats_words=st.n_words)
    fert = morphology.fertility(texts, tokenizer, unit="auto")
    out["fertility_unit"] = fert.unit
    if fert.unit == "word":
        out["fertility"] = fert.value
        words = [w for t in texts for w in text_words(t)]
        if words:
            m = morphology.mattr(words, window=mattr_window)
            out["mattr"] = m.value if m.windowed else math.nan
            out["mattr_tokens"] = m.n_tokens
    else:
        out["note"] = "written without spaces: MATTR and per-word fertility left out"
    return out


def alignment_of(emb_x, emb_en) -> dict[str, float]:
    from adapters_xtl.studies.alignment import linear_cka, linear_cka_debiased, retrieval_accuracy_both

    both = retrieval_accuracy_both(emb_x, emb_en)
    # the same search after removing each side's mean vector: tells a shared offset that swamps
    # cosine similarity (common after task training) from translations that moved apart
    cen = retrieval_accuracy_both(emb_x - emb_x.mean(axis=0), emb_en - emb_en.mean(axis=0))
    return {"retrieval": 100.0 * (both["src2tgt"] + both["tgt2src"]) / 2,
            "retrieval_centered": 100.0 * (cen["src2tgt"] + cen["tgt2src"]) / 2,
            "cka": linear_cka_debiased(emb_x, emb_en), "cka_biased": linear_cka(emb_x, emb_en)}


def analyze_morphology(measures: Mapping[str, Mapping[str, Any]],
                       alignment: Mapping[str, Mapping[Any, Mapping[str, Mapping[str, float]]]], *,
                       baseline: str = "backbone", measure_names: Sequence[str] = ("feats", "mattr", "fertility"),
                       metrics: Sequence[str] = ("retrieval", "cka"),
                       extra_metrics: Sequence[str] = ("retrieval_centered",)) -> dict[str, Any]:
    """Degradation of alignment (baseline condition minus each module's) vs complexity.

    ``alignment``: ``{condition: {layer: {lang: {metric: value}}}}`` with a ``baseline`` condition
    (the backbone alone) and one per intermediate module.  ``measures``: ``{lang: {measure: v}}``.
    Correlations: each measure x metric x layer against the degradation averaged over modules
    (and, in ``per_module``, against each module's).  ``extra_metrics`` present in the
    alignment get degradations and summaries but no correlations.
    """
    if baseline not in alignment:
        raise XtlError(f"no {baseline!r} alignment to measure degradation from")
    modules = [c for c in alignment if c != baseline]
    layers = list(alignment[baseline])
    langs = sorted(set(measures) & set(next(iter(alignment[baseline].values()), {})))
    first = next(iter(next(iter(alignment[baseline].values()), {}).values()), {})
    all_metrics = list(metrics) + [k for k in extra_metrics if k in first and k not in metrics]
    degr: dict[str, dict[Any, dict[str, dict[str, float]]]] = {}
    for m in modules:
        degr[m] = {}
        for L in layers:
            degr[m][L] = {}
            for lang in langs:
                b, a = alignment[baseline][L].get(lang, {}), alignment[m].get(L, {}).get(lang, {})
                degr[m][L][lang] = {k: b.get(k, math.nan) - a.get(k, math.nan) for k in all_metrics}
    mean_degr = {L: {lang: {k: statistics.fmean(finite([degr[m][L][lang][k] for m in modules])) if finite(
        [degr[m][L][lang][k] for m in modules]) else math.nan for k in all_metrics} for lang in langs} for L in layers}
    corrs, per_module = [], []
    for L in layers:
        for k in metrics:
            for meas in measure_names:
                xs = [measures[l].get(meas, math.nan) for l in langs]
                corrs.append({"x": meas, "y": f"{k} degradation (layer {L})", "layer": L, "metric": k, "measure": meas,
                              **_corr_pair(xs, [mean_degr[L][l][k] for l in langs])})
                for m in modules:
                    per_module.append({"x": meas, "y": f"{k} degradation (layer {L}, {m})", "module": m, "layer": L,
                                       "metric": k, "measure": meas,
                                       **_corr_pair(xs, [degr[m][L][l][k] for l in langs])})
    summary = {L: {k: mean_ci([mean_degr[L][l][k] for l in langs]).as_dict() for k in all_metrics} for L in layers}
    module_summary = {m: {L: {k: mean_ci([degr[m][L][l][k] for l in langs]).as_dict() for k in all_metrics}
                          for L in layers} for m in modules}
    return {"languages": langs, "modules": modules, "layers": layers, "measures": {l: dict(measures[l]) for l in langs},
            "alignment": alignment, "degradation": degr, "mean_degradation": mean_degr, "summary": summary,
            "module_summary": module_summary, "correlations": corrs, "per_module": per_module}


def run_morphology(ctx: StudyContext, dry_run: bool = False) -> dict[str, Any] | None:
    from adapters_xtl.methods import get_method
    from adapters_xtl.pipeline import load_module_into
    from adapters_xtl.recipe import expand
    from adapters_xtl.studies.similarity import embed_layers, resolve_layers
    from adapters_xtl.tasks import get_task

    cfg: MorphologyConfig = ctx.cfg
    plan = expand(ctx.recipe)
    if not plan.modules:
        raise XtlError("the morphology study needs intermediate modules", where=ctx.recipe.file,
                       fix="list them under `intermediate:`")
    if dry_run:
        from adapters_xtl.runner import _find_module

        have = {j.name: _find_module(ctx.registry, j) is not None for j in plan.modules}
        _describe(ctx, plan, f"\n  alignment on {cfg.parallel_task} ({cfg.limit} pairs) for {cfg.languages}, "
                  f"backbone alone and with each of {len(plan.modules)} modules: "
                  + ", ".join(f"{n} ({'in the registry' if h else 'to train'})" for n, h in have.items()))
        return None
    refs = ctx.ensure_modules(plan)
    bb = ctx.backbone()
    spec = get_task(cfg.parallel_task)
    layers = resolve_layers(cfg.layers, bb.num_layers)
    langs = [l for l in cfg.languages if l != cfg.pivot]
    pairs = {l: parallel_texts(spec, l, cfg.pivot, ctx.data_dir, splits=cfg.splits, limit=cfg.limit) for l in langs}
    ud_root = Path(cfg.ud_dir).expanduser() if cfg.ud_dir else ctx.data_root / "ud"
    measures = {l: complexity_measures(l, pairs[l][0], bb.tokenizer, ud_root=ud_root,
                                       ud_max_sentences=cfg.ud_max_sentences, mattr_window=cfg.mattr_window)
                for l in langs}
    conditions: list[tuple[str, str | None]] = [("backbone", None)] + [(name, ref) for name, ref in refs.items()]
    alignment: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    t0 = time.perf_counter()
    from adapters_xtl.manifest import config_hash

    cache_dir = ctx.out / "measurements"
    for cond, ref in conditions:
        # one file per condition: a re-run (another analysis, a figure) does not embed again
        ckey = config_hash({"module": ref, "backbone": bb.fingerprint.model_dump(), "layers": layers,
                            "pairs": {l: config_hash(pairs[l]) for l in langs}})
        cfile = cache_dir / f"alignment-{re.sub(r'[^A-Za-z0-9._-]', '_', cond)}-{ckey}.json"
        if cfile.exists():
            got = json.loads(cfile.read_text())
            alignment[cond] = {L: {lang: {k: math.nan if v is None else v for k, v in d.items()}
                                   for lang, d in got[str(L)].items()} for L in layers}
            ctx.console.print(f"  alignment with {cond}: cached ({cfile.name})")
            continue
        slot = method = None
        if ref is not None:
            name, _, version = ref.partition("@")
            man, slot, _ = load_module_into(bb, ctx.registry, name, version=version)
            method = get_method(man.method)
            method.activate(bb, [slot], [])
        try:
            cache: dict[int, dict[int, Any]] = {}
            alignment[cond] = {L: {} for L in layers}
            for l in langs:
                xx, en = pairs[l]
                ex = embed_layers(bb, xx, layers, max_length=spec.max_length, batch_size=cfg.batch_size)
                key = hash(tuple(en))
                if key not in cache:
                    cache[key] = embed_layers(bb, en, layers, max_length=spec.max_length, batch_size=cfg.batch_size)
                for L in layers:
                    alignment[cond][L][l] = alignment_of(ex[L], cache[key][L])
        finally:
            if method is not None:
                method.deactivate(bb)
                method.remove(bb, slot)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cfile.with_suffix(".tmp")
        tmp.write_text(json.dumps(jsonable(alignment[cond])))
        os.replace(tmp, cfile)
        ctx.console.print(f"  alignment with {cond}: done ({time.perf_counter() - t0:.0f}s)")
    res = analyze_morphology(measures, alignment)
    res["parallel"] = {"task": spec.name, "pairs": {l: len(pairs[l][0]) for l in langs}, "layers": layers}
    res["modules_used"] = refs
    langs_ = res["languages"]
    headline = []
    for c in res["correlations"]:
        L, k = c["layer"], c["metric"]
        c["figure"] = _scatter(ctx, f"morphology_{c['measure']}_{k}_L{L}.png",
                               [res["measures"][l].get(c["measure"]) for l in langs_],
                               [res["mean_degradation"][L][l][k] for l in langs_], langs_,
                               xlabel={"feats": "UD FEATS per word", "mattr": f"MATTR (window {cfg.mattr_window})",
                                       "fertility": "sub-words per word"}[c["measure"]],
                               ylabel=f"{k} degradation (backbone - with module)", title=f"layer {L}: {c['y']}",
                               corr=c)
    for L in layers:
        for k in ("retrieval", "cka"):
            s = res["summary"][L][k]
            per = "; ".join(f"{m}: {fmt(res['module_summary'][m][L][k]['mean'], '{:+.2f}')}" for m in res["modules"])
            headline.append(f"layer {L}: mean {k} degradation over languages {s['text']}"
                            + (" points" if k == "retrieval" else "") + f" (per module: {per})")
    best = _strongest(res["correlations"])
    if best:
        headline.append(f"strongest relation: {best['x']} vs {best['y']}: {best['spearman']['sentence']}")
    res["headline"] = headline
    return res


def render_morphology(res: Mapping[str, Any]) -> list[str]:
    langs = res["languages"]
    lines = ["## Complexity measures", "",
             md_table(["language", "FEATS/word (UD)", "MATTR", "fertility", "UD treebanks"],
                      [[l, fmt(res["measures"][l].get("feats")), fmt(res["measures"][l].get("mattr"), "{:.3f}"),
                        fmt(res["measures"][l].get("fertility")), ", ".join(res["measures"][l].get("feats_source") or [])]
                       for l in langs]), ""]
    for L in res["layers"]:
        hdr = ["language", "retrieval (backbone)"] + [f"retrieval degr. {m}" for m in res["modules"]] + \
              ["CKA (backbone)"] + [f"CKA degr. {m}" for m in res["modules"]]
        base = res["alignment"]["backbone"][L]
        body = [[l, fmt(base[l]["retrieval"], "{:.1f}")] + [fmt(res["degradation"][m][L][l]["retrieval"], "{:+.1f}")
                                                            for m in res["modules"]]
                + [fmt(base[l]["cka"], "{:.3f}")] + [fmt(res["degradation"][m][L][l]["cka"], "{:+.3f}") for m in res["modules"]]
                for l in langs]
        lines += [f"## Alignment at layer {L} (degradation = backbone alone minus with the module)", "",
                  md_table(hdr, body), ""]
    ms = res.get("module_summary") or {}
    if ms:
        lines += ["## Mean degradation per module [95% bootstrap CI over languages]", "",
                  md_table(["module", "layer", "retrieval (points)", "retrieval, centred (points)", "CKA"],
                           [[m, L, ms[m][L]["retrieval"]["text"],
                             (ms[m][L].get("retrieval_centered") or {}).get("text", "n/a"), ms[m][L]["cka"]["text"]]
                            for m in res["modules"] for L in res["layers"]]), "",
                  "Centred retrieval searches after removing each side's mean vector: when it degrades much less than "
                  "plain retrieval, the module added a shared offset that swamps cosine similarity rather than moving "
                  "translations apart.", ""]
    lines += ["## Correlations (degradation averaged over modules)", "", md_table(CORR_HEADER, _corr_rows(res["correlations"])), ""]
    return lines


# =========================================================================== 4. similarity


def analyze_similarity(gain_table: Mapping[tuple[str, str, str], Mapping[str, float]],
                       similarities: Mapping[tuple[str, str], Mapping[str, float]]) -> dict[str, Any]:
    """Task similarity vs gain over (intermediate task, target) pairs.

    ``gain_table``: ``{(composition, intermediate task, target): {lang: gain}}``;
    ``similarities``: ``{(intermediate task, target): {measure: value}}``.  Per composition and
    measure: the correlation with the gain averaged over each pair's languages (one point per
    pair), per language (one point per pair), and pooled over all (pair, language) points (not
    independent: languages of one pair share the pair's similarity).
    """
    comps = sorted({c for c, _, _ in gain_table})
    measures = sorted({m for d in similarities.values() for m in d})
    out: dict[str, Any] = {"compositions": {}, "measures": measures,
                           "similarities": {f"{i} -> {t}": dict(v) for (i, t), v in similarities.items()}}
    for comp in comps:
        pairs = sorted((i, t) for c, i, t in gain_table if c == comp and (i, t) in similarities)
        avg = {p: statistics.fmean(finite(gain_table[(comp, *p)].values())) if finite(gain_table[(comp, *p)].values())
               else math.nan for p in pairs}
        langs = sorted({l for p in pairs for l in gain_table[(comp, *p)]})
        res: dict[str, Any] = {"pairs": [f"{i} -> {t}" for i, t in pairs], "mean_gain": {f"{i} -> {t}": avg[(i, t)] for i, t in pairs},
                               "gains": {f"{i} -> {t}": dict(gain_table[(comp, i, t)]) for i, t in pairs},
                               "averaged": [], "per_language": [], "pooled": []}
        for m in measures:
            xs = [similarities[p].get(m, math.nan) for p in pairs]
            res["averaged"].append({"x": m, "y": "gain (mean over languages)", "measure": m,
                                    **_corr_pair(xs, [avg[p] for p in pairs], unit="task pairs")})
            for lang in langs:
                res["per_language"].append({"x": m, "y": f"gain ({lang})", "measure": m, "language": lang,
                                            **_corr_pair(xs, [gain_table[(comp, *p)].get(lang, math.nan) for p in pairs],
                                                         unit="task pairs")})
            px, py = [], []
            for p in pairs:
                for lang, g in gain_table[(comp, *p)].items():
                    px.append(similarities[p].get(m, math.nan))
                    py.append(g)
            res["pooled"].append({"x": m, "y": "gain (all pair x language points)", "measure": m,
                                  **_corr_pair(px, py, unit="pair-language points (not independent)")})
        out["compositions"][comp] = res
    return out


def _task_list(task: str) -> list[str]:
    return task[3:].split("+") if task.startswith("mt:") else [task]


def run_similarity(ctx: StudyContext, dry_run: bool = False) -> dict[str, Any] | None:
    from adapters_xtl.recipe import expand
    from adapters_xtl.runner import _find_module
    from adapters_xtl.studies.similarity import (centroid_cosine, covariance_similarity, delta_similarity,
                                                 embed_layers, module_deltas, resolve_layers, task_texts)
    from adapters_xtl.tasks import get_task

    cfg: SimilarityConfig = ctx.cfg
    recipe = ctx.recipe
    if not any(c.kind == "single" for c in recipe.compositions):
        raise XtlError("the similarity study needs `single` cells (gains, and the target modules whose weights are "
                       "compared)", where=recipe.file, fix="add single to compositions")
    plan = expand(recipe)
    if dry_run:
        _describe(ctx, plan)
        return None
    ctx.ensure_modules(plan, for_cells=True)
    rows = ctx.run_grid(plan)
    bb = ctx.backbone()
    # tasks are named in rows by catalog name (target) and by the recipe's reference (intermediate
    # task: a name or a YAML path); everything below uses the catalog names
    def display(ref: str) -> str:
        return "mt:" + "+".join(get_task(t).name for t in _task_list(ref)) if ref.startswith("mt:") else get_task(ref).name

    refs = {display(j.task): j.task for j in plan.modules}
    refs.update({get_task(t.task).name: t.task for t in recipe.targets})
    job_task = {j.name: display(j.task) for j in plan.modules}
    inter_tasks = sorted(set(job_task.values()))
    targets = sorted({r["target"] for r in rows})
    # gains per (composition, intermediate task, target)
    gain_table: dict[tuple[str, str, str], dict[str, float]] = {}
    for target in targets:
        metric = main_metric_of(rows, target)
        for (comp, inter), per_lang in gains(scores(rows, target, metric, key="intermediate_task")).items():
            if "+" in inter and not inter.startswith("mt:"):  # fuse/merge mix intermediates: no one pair
                continue
            gain_table[(comp, display(inter), target)] = per_lang
    # representation similarity of the tasks' English data under the backbone alone
    layer = resolve_layers([cfg.layer], bb.num_layers)[0]
    cents, embs = {}, {}
    for task in inter_tasks + targets:
        texts = [t for ref in _task_list(refs[task]) for t in task_texts(get_task(ref), ctx.data_dir, cfg.n_texts)]
        embs[task] = embed_layers(bb, texts, [layer], batch_size=cfg.batch_size)[layer]
        cents[task] = embs[task].mean(axis=0)
    center = sum(cents.values()) / len(cents)
    sims: dict[tuple[str, str], dict[str, float]] = {}
    for i in inter_tasks:
        for t in targets:
            sims[(i, t)] = {"text_cos": centroid_cosine(embs[i], embs[t]),
                            "text_cos_centered": centroid_cosine(embs[i], embs[t], center=center) if len(cents) > 2 else math.nan,
                            "cov_sim": covariance_similarity(embs[i], embs[t])}
    # weight deltas: each intermediate module vs the target's `single` module of the same seed
    single_mod = {(r["target"], int(r.get("seed", 0))): r["module"] for r in rows if r.get("composition") == "single"}
    deltas_cache: dict[str, Any] = {}

    def deltas(ref: str):
        if ref not in deltas_cache:
            name, _, version = ref.partition("@")
            man, tensors = ctx.registry.load(name, version or None)
            deltas_cache[ref] = module_deltas(tensors, man.method, man.method_config)
        return deltas_cache[ref]

    per_pair: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for job in plan.modules:
        man = _find_module(ctx.registry, job, bb.fingerprint)
        if man is None:
            ctx.notes.append(f"intermediate module {job.name} not found in the registry: no weight similarity")
            continue
        for t in targets:
            ref = single_mod.get((t, job.seed))
            if ref is None:
                continue
            d = delta_similarity(deltas(f"{man.name}@{man.version}"), deltas(ref))
            per_pair[(job_task[job.name], t)].append(d)
    for p, ds in per_pair.items():
        sims[p]["delta_cos"] = statistics.fmean(finite([d["global"] for d in ds])) if finite([d["global"] for d in ds]) else math.nan
        sims[p]["delta_cos_layer"] = statistics.fmean(finite([d["per_layer"] for d in ds])) if finite(
            [d["per_layer"] for d in ds]) else math.nan
    res = analyze_similarity(gain_table, sims)
    res["layer"] = layer
    res["intermediates"] = {name: task for name, task in job_task.items()}
    headline = []
    for comp, c in res["compositions"].items():
        pairs = c["pairs"]
        for corr in c["averaged"]:
            m = corr["measure"]
            corr["figure"] = _scatter(ctx, f"similarity_{comp}_{m}.png",
                                      [res["similarities"][p].get(m) for p in pairs], [c["mean_gain"][p] for p in pairs],
                                      [p.replace("-local", "") for p in pairs], xlabel=SIM_LABELS.get(m, m),
                                      ylabel="gain over single (mean over languages)", title=f"{comp}: gain vs {m}",
                                      corr=corr)
            headline.append(f"{comp}, {m}: {corr['spearman']['sentence']}")
    res["headline"] = headline
    return res


SIM_LABELS = {
    "text_cos": "cosine of mean backbone representations (raw)",
    "text_cos_centered": "cosine of mean representations (centred on all tasks' mean)",
    "cov_sim": "covariance similarity of representations",
    "delta_cos": "cosine of weight deltas (all layers)",
    "delta_cos_layer": "cosine of weight deltas (mean over layers)",
}


def render_similarity(res: Mapping[str, Any]) -> list[str]:
    measures = res["measures"]
    lines = ["## Similarities", "",
             md_table(["intermediate -> target"] + measures,
                      [[p] + [fmt(v.get(m), "{:.3f}") for m in measures] for p, v in res["similarities"].items()]), "",
             "Measures: " + "; ".join(f"`{m}`: {SIM_LABELS.get(m, m)}" for m in measures) + ".", ""]
    for comp, c in res["compositions"].items():
        langs = sorted({l for g in c["gains"].values() for l in g})
        lines += [f"## {comp}: gains over single", "",
                  md_table(["intermediate -> target", "mean"] + langs,
                           [[p, fmt(c["mean_gain"][p], "{:+.1f}")] + [fmt(c["gains"][p].get(l), "{:+.1f}") for l in langs]
                            for p in c["pairs"]]), "",
                  f"### {comp}: similarity vs gain averaged over languages (one point per task pair)", "",
                  md_table(CORR_HEADER, _corr_rows(c["averaged"])), "",
                  f"### {comp}: per language (Spearman r [95% CI], n = task pairs)", ""]
        by_m: dict[str, dict[str, str]] = defaultdict(dict)
        for corr in c["per_language"]:
            by_m[corr["measure"]][corr["language"]] = _ci(corr["spearman"])
        lines += [md_table(["measure"] + langs, [[m] + [by_m[m].get(l, "") for l in langs] for m in by_m]), "",
                  f"### {comp}: pooled over pair x language points (not independent)", "",
                  md_table(CORR_HEADER, _corr_rows(c["pooled"])), ""]
    return lines


# =========================================================================== 5. intermediate language


def analyze_intermediate_language(rows: Sequence[Mapping[str, Any]], inter_language: Mapping[str, str], *,
                                  reference: str = "en",
                                  distances: Mapping[tuple[str, str], Mapping[str, float]] | None = None
                                  ) -> dict[str, Any]:
    """Gains of the same intermediate task trained in different languages.

    ``inter_language``: ``{intermediate task name: its training language}``.  Per target and
    composition: each intermediate language's gain per target language, its mean with a
    bootstrap CI over target languages, the paired difference from the ``reference`` language's
    intermediate (mean, CI, sign-flip permutation p), the gain in its own language vs the mean
    gain elsewhere, and (with ``distances``: ``{(intermediate lang, target lang): {kind: d}}``)
    the correlation of gain with the distance between the two languages.
    """
    out: dict[str, Any] = {"reference": reference, "intermediate_languages": dict(inter_language), "targets": {}}
    targets = sorted({r.get("target", r.get("task")) for r in rows if "composition" in r})
    for target in targets:
        metric = main_metric_of(rows, target)
        g = gains(scores(rows, target, metric, key="intermediate_task"))
        comps: dict[str, Any] = {}
        for comp in sorted({c for c, _ in g}):
            by_lang = {inter_language[i]: v for (c, i), v in g.items() if c == comp and i in inter_language}
            if not by_lang:
                continue
            order = sorted(by_lang, key=lambda l: (l != reference, l))
            tlangs = sorted({l for v in by_lang.values() for l in v}, key=lambda x: (x != "en", x))
            summary = {L: mean_ci(by_lang[L].values()).as_dict() for L in order}
            vs_ref = {}
            if reference in by_lang:
                for L in order:
                    if L == reference:
                        continue
                    common = [t for t in tlangs if t in by_lang[L] and t in by_lang[reference]]
                    diffs = [by_lang[L][t] - by_lang[reference][t] for t in common]
                    vs_ref[L] = {**mean_ci(diffs).as_dict(), "p_sign_flip": sign_flip_p(diffs),
                                 "better_in": sum(d > 0 for d in diffs), "worse_in": sum(d < 0 for d in diffs)}
            own = {}
            for L in order:
                if L in by_lang[L]:
                    others = [v for t, v in by_lang[L].items() if t != L]
                    own[L] = {"own": by_lang[L][L], "others_mean": statistics.fmean(others) if others else math.nan,
                              "reference_own": by_lang.get(reference, {}).get(L)}
            dist_corr = []
            if distances:
                kinds = sorted({k for d in distances.values() for k in d})
                pts = [(L, t) for L in order for t in by_lang[L]]
                for kind in kinds:
                    xs = [distances.get(p, {}).get(kind, math.nan) for p in pts]
                    ys = [by_lang[L][t] for L, t in pts]
                    dist_corr.append({"x": f"{kind} distance (intermediate lang, target lang)", "y": "gain",
                                      "kind": kind, "points": [f"{L}->{t}" for L, t in pts],
                                      **_corr_pair(xs, ys, unit="(intermediate language, target language) pairs")})
            comps[comp] = {"languages": order, "target_languages": tlangs, "gains": by_lang, "summary": summary,
                           "vs_reference": vs_ref, "own_language": own, "distance_correlations": dist_corr}
        out["targets"][target] = {"metric": metric, "compositions": comps}
    return out


def _ud_treebank(ud_root: Path, lang: str, split: str = "train") -> str | None:
    files = sorted(ud_root.glob(f"UD_*/{lang}_*-ud-{split}.conllu"))
    if not files:
        return None
    f = files[0]
    return f"{f.parent.name}/{f.name[: -len(f'-ud-{split}.conllu')]}"


@contextlib.contextmanager
def extra_task_folder(folder: Path) -> Iterator[None]:
    """Make the task YAMLs in ``folder`` part of the catalog (``XTL_TASKS``) for the block."""
    from adapters_xtl import tasks as tasks_mod

    old = os.environ.get("XTL_TASKS")
    os.environ["XTL_TASKS"] = os.pathsep.join([str(folder)] + ([old] if old else []))
    tasks_mod._catalog.cache_clear()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XTL_TASKS", None)
        else:
            os.environ["XTL_TASKS"] = old
        tasks_mod._catalog.cache_clear()


def language_variants(base, langs: Sequence[str], ud_root: Path, treebanks: Mapping[str, str], reference: str
                      ) -> dict[str, Any]:
    """``{lang: TaskSpec}``: the base task trained on ``lang``'s UD train split (dev split as the
    dev set when there is one); the reference language keeps the base task as it is."""
    out = {}
    for lang in langs:
        if lang == reference:
            out[lang] = base
            continue
        tb = treebanks.get(lang) or _ud_treebank(ud_root, lang)
        if tb is None:
            have = sorted({p.name.split("_")[0] for p in ud_root.glob("UD_*/*-ud-train.conllu")})
            raise XtlError(f"no UD train split for {lang!r} under {ud_root}", where="study.train_languages",
                           fix=f"languages with a UD train split here: {', '.join(have) or 'none'}")
        if base.format != "tagging":
            raise XtlError(f"language variants are made for UD tagging tasks; {base.name!r} is {base.format}",
                           where="study.base_task", fix="use udpos-local (or another CoNLL-U tagging task)")
        splits = dict(base.splits)
        splits["train"] = splits["train"].model_copy(update={"path": f"{{data_dir}}/ud/{tb}-ud-train.conllu",
                                                              "file_format": "conllu"})
        if (ud_root / f"{tb}-ud-dev.conllu").exists():
            splits["validation"] = splits.get("validation", splits["train"]).model_copy(
                update={"path": f"{{data_dir}}/ud/{tb}-ud-dev.conllu", "file_format": "conllu"})
        else:
            splits.pop("validation", None)
        languages = dict(base.languages)
        languages.setdefault(lang, tb)
        out[lang] = base.model_copy(update={
            "name": f"{base.name}-from-{lang}", "train_language": lang, "splits": splits, "languages": languages,
            "description": f"{base.description} [trained on {tb} train]", "file": None, "group": "local"})
    return out


def run_intermediate_language(ctx: StudyContext, dry_run: bool = False) -> dict[str, Any] | None:
    from adapters_xtl.recipe import IntermediateSpec, expand
    from adapters_xtl.studies import typology
    from adapters_xtl.tasks import get_task

    cfg: IntermediateLanguageConfig = ctx.cfg
    recipe = ctx.recipe
    if len(recipe.intermediate) != 1 or not recipe.intermediate[0].task:
        raise XtlError("the intermediate-language study takes one intermediate entry (the task and budget to "
                       "train in every language)", where=recipe.file, fix="list one `intermediate:` entry with `task:`")
    if not any(c.kind == "single" for c in recipe.compositions):
        raise XtlError("the intermediate-language study needs `single` cells (gains are measured from them)",
                       where=recipe.file, fix="add single to compositions")
    template = recipe.intermediate[0]
    base = get_task(cfg.base_task or template.task)
    if cfg.reference not in cfg.train_languages:
        raise XtlError(f"the reference language {cfg.reference!r} is not among train_languages", where=recipe.file)
    ud_root = ctx.data_root / "ud"
    variants = language_variants(base, cfg.train_languages, ud_root, cfg.treebanks, cfg.reference)
    task_dir = ctx.out / "tasks"
    task_dir.mkdir(parents=True, exist_ok=True)
    for lang, spec in variants.items():
        if spec is base:
            continue
        doc = spec.model_dump(mode="json", exclude={"file"}, exclude_none=True)
        (task_dir / f"{spec.name}.yaml").write_text(
            "# written by `xtl study intermediate-language`: " + spec.description + "\n"
            + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    with extra_task_folder(task_dir):
        inters = [IntermediateSpec(**{**template.model_dump(), "task": template.task if spec is base else spec.name,
                                      "name": f"{template.name}-{lang}" if template.name else None})
                  for lang, spec in variants.items()]
        derived = recipe.model_copy(update={"intermediate": inters})
        plan = expand(derived)
        if dry_run:
            _describe(ctx, plan, f"\n  intermediate {base.name} trained in: "
                      + ", ".join(f"{l} ({'base' if s is base else s.splits['train'].path})" for l, s in variants.items())
                      + f"\n  task variants written to {task_dir}")
            return None
        ctx.ensure_modules(plan, for_cells=True)
        rows = ctx.run_grid(plan)
    # the reference intermediate is named in rows as the recipe names it (maybe a YAML path)
    rows = [{**r, "intermediate_task": base.name} if r.get("intermediate_task") == template.task else r for r in rows]
    inter_language = {spec.name: lang for lang, spec in variants.items()}
    tlangs = sorted({r["language"] for r in rows})
    dists: dict[tuple[str, str], dict[str, float]] = {}
    for L in cfg.train_languages:
        for t in tlangs:
            row = {}
            for kind in cfg.kinds:
                try:
                    row[kind] = typology.distance(L, t, kind)
                except XtlError:
                    row[kind] = math.nan
            dists[(L, t)] = row
    res = analyze_intermediate_language(rows, inter_language, reference=cfg.reference, distances=dists)
    res["train_files"] = {l: s.splits["train"].path for l, s in variants.items()}
    headline = []
    for target, t in res["targets"].items():
        for comp, c in t["compositions"].items():
            order = c["languages"]
            p = ctx.figure(f"intermediate_language_{target}_{comp}.png")
            bar_plot(order, [c["summary"][L]["mean"] for L in order], p,
                     errors=[(c["summary"][L]["ci_low"], c["summary"][L]["ci_high"]) for L in order],
                     ylabel=f"mean gain over single ({t['metric']} points)",
                     title=f"{target} ({comp}): gain by intermediate training language (95% CI over target languages)")
            for corr in c["distance_correlations"]:
                pts = corr["points"]
                corr["figure"] = _scatter(ctx, f"intermediate_language_{target}_{comp}_{corr['kind']}.png",
                                          [dists.get(tuple(q.split("->")), {}).get(corr["kind"]) for q in pts],
                                          [c["gains"][q.split("->")[0]][q.split("->")[1]] for q in pts], pts,
                                          xlabel=corr["x"], ylabel="gain over single", title=f"{target} ({comp})", corr=corr)
            for L in order:
                line = f"{target}, {comp}: intermediate in {L}: mean gain {c['summary'][L]['text']}"
                if L in c["vs_reference"]:
                    v = c["vs_reference"][L]
                    line += (f"; vs {res['reference']}: {v['text']}, paired sign-flip p={fmt(v['p_sign_flip'], '{:.3f}')} "
                             f"(better in {v['better_in']}, worse in {v['worse_in']} target languages)")
                headline.append(line)
    res["headline"] = headline
    return res


def render_intermediate_language(res: Mapping[str, Any]) -> list[str]:
    lines = ["Training files: " + "; ".join(f"{l}: `{p}`" for l, p in res.get("train_files", {}).items()), ""]
    for target, t in res["targets"].items():
        for comp, c in t["compositions"].items():
            order, tl = c["languages"], c["target_languages"]
            lines += [f"## {target} ({t['metric']}), {comp}: gain over single by intermediate training language", "",
                      md_table(["intermediate in", "mean [95% CI]"] + tl,
                               [[L, c["summary"][L]["text"]] + [fmt(c["gains"][L].get(x), "{:+.1f}") for x in tl]
                                for L in order]), ""]
            if c["vs_reference"]:
                lines += [f"### Paired difference from the {res['reference']} intermediate (over target languages)", "",
                          md_table(["intermediate in", "mean diff [95% CI]", "sign-flip p", "better in", "worse in"],
                                   [[L, v["text"], fmt(v["p_sign_flip"], "{:.3f}"), v["better_in"], v["worse_in"]]
                                    for L, v in c["vs_reference"].items()]), ""]
            if c["own_language"]:
                lines += ["### Gain in the intermediate's own language", "",
                          md_table(["intermediate in", "own-language gain", "mean gain elsewhere",
                                    f"{res['reference']} intermediate's gain there"],
                                   [[L, fmt(v["own"], "{:+.1f}"), fmt(v["others_mean"], "{:+.1f}"),
                                     fmt(v["reference_own"], "{:+.1f}")] for L, v in c["own_language"].items()]), ""]
            if c["distance_correlations"]:
                lines += ["### Gain vs distance between the intermediate's and the target's language", "",
                          md_table(CORR_HEADER, _corr_rows(c["distance_correlations"])), ""]
    return lines


# =========================================================================== driver

RUNNERS: dict[str, Callable[[StudyContext, bool], dict[str, Any] | None]] = {
    "steps": run_steps,
    "typology": run_typology,
    "morphology": run_morphology,
    "similarity": run_similarity,
    "intermediate-language": run_intermediate_language,
}
RENDER: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "steps": render_steps,
    "typology": render_typology,
    "morphology": render_morphology,
    "similarity": render_similarity,
    "intermediate-language": render_intermediate_language,
}


@dataclass
class StudyOutput:
    result: dict[str, Any]
    json_path: Path
    md_path: Path


def run_study(name: str, *, recipe: str | Path | None = None, out: str | Path | None = None,
              data_dir: str | Path | None = None, registry=None, backbone=None, console: Console | None = None,
              device: str | None = None, dry_run: bool = False) -> StudyOutput | None:
    """Run study ``name`` end to end; write ``study.json`` and ``study.md`` under ``out``."""
    from adapters_xtl.registry import Registry

    rec, cfg = load_study(name, recipe, data_dir)
    out = Path(out) if out else Path("runs") / f"study-{name}"
    if registry is None or isinstance(registry, (str, Path)):
        registry = Registry(registry)
    ctx = StudyContext(name=name, recipe=rec, cfg=cfg, out=out, registry=registry, console=console or Console(),
                       device=device, _backbone=backbone)
    t0 = time.perf_counter()
    res = RUNNERS[name](ctx, dry_run)
    if dry_run or res is None:
        return None
    res = {"study": name, "question": QUESTIONS[name], "headline": res.pop("headline", []), **res,
           "figures": list(ctx.figures), "notes": ctx.notes,
           "meta": {"recipe": rec.file, "recipe_name": rec.name, "backbone": rec.backbone, "method": rec.method,
                    "seeds": rec.seeds, "data_dir": rec.data_dir, "config": cfg.model_dump(),
                    "registry": str(registry.root), "grid": str(ctx.grid_dir),
                    "wall_seconds": round(time.perf_counter() - t0, 1),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "study.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(res), indent=1, ensure_ascii=False, allow_nan=False))
    os.replace(tmp, json_path)
    md_path = out / "study.md"
    md_path.write_text(render_markdown(res))
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
    lines += RENDER[name](res)
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
