"""Study ``steps``: how many intermediate training steps are worth it, per language group.

The intermediate module is trained *once* per seed for the full budget B and snapshotted into the
registry at the schedule's steps (default 0, B/8, B/4, B/2, B) as ``<label>-<hash>-step<k>``
(``mode: snapshots``: the weights at step k of one run, learning-rate schedule of B, no dev-based
checkpoint selection), or trained separately for k steps each (``mode: separate``: each with its
own complete schedule and best-dev selection, costs about 1.9 B).  Snapshots are the default
because the question is about one training run's trajectory, at a fraction of the cost.  Step 0
is the untrained module (LoRA: B = 0, exactly the bare backbone), so gains are measured against
it through the same composition.  Reports per group where the gains saturate or reverse.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from adapters_xtl.errors import XtlError
from adapters_xtl.studies import register_study, stats
from adapters_xtl.studies.context import StudyConfig, StudyContext
from adapters_xtl.studies.tables import fmt, main_metric_of, md_table, mean_ci, scores, seed_mean


class StepsConfig(StudyConfig):
    """Settings of the steps recipe's `study:` section."""

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
    from adapters_xtl.store.manifest import config_hash
    from adapters_xtl.methods import get_method
    from adapters_xtl.recipe import CompositionSpec, IntermediateSpec
    from adapters_xtl.tasks import get_task
    from adapters_xtl.trainer import TrainConfig

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
    from adapters_xtl.data import load_examples
    from adapters_xtl.pipeline import default_main_metric
    from adapters_xtl.session import ModuleSession
    from adapters_xtl.tasks import get_task
    from adapters_xtl.trainer import TrainConfig, train

    jobs = sorted(jobs, key=lambda j: j.train["snapshot_step"])
    first = jobs[0]
    cfg = TrainConfig(**{k: v for k, v in first.train.items() if k != "snapshot_step"})
    spec = get_task(first.task)
    train_task = get_task(spec.train_task) if spec.train_task else spec
    train_ex = load_examples(train_task, "train", train_task.train_language, data_dir)
    want = {j.train["snapshot_step"]: j for j in jobs}
    if max(want) > cfg.steps:
        raise XtlError(f"snapshot step {max(want)} is beyond the budget of {cfg.steps} steps")
    saved: list[Any] = []
    t0 = time.perf_counter()
    with ModuleSession.new(backbone, f"{first.name}_snapshots", method, method_config, registry=registry,
                           seed=cfg.seed) as session:
        model = session.task_model(spec)
        fmt_ = model.format
        feats = fmt_.encode(train_ex, spec, backbone.tokenizer, train=True)
        trainable = session.trainable()

        def save(k: int) -> None:
            job = want[k]
            man = session.manifest(
                name=job.name, task=spec.name, format=spec.format, head=fmt_.head_config(spec), trainable=trainable,
                recipe_hash=recipe_hash, steps=k, seed=cfg.seed, train_examples=len(feats), scores={},
                training={"config": cfg.model_dump(), "snapshot_step": k, "budget": cfg.steps,
                          "seconds": round(time.perf_counter() - t0, 2)},
                train_key=job.key, snapshot_of=f"{first.task} ({cfg.steps} steps)",
            )
            saved.append(session.save(registry, man, trainable))
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
    return saved


def run_steps(ctx: StudyContext, dry_run: bool = False) -> dict[str, Any] | None:
    from adapters_xtl.recipe import expand
    from adapters_xtl.runner import _find_module, make_progress

    cfg: StepsConfig = ctx.cfg
    derived, budget, ks = _derive_steps_recipe(ctx.recipe, cfg)
    plan = expand(derived)
    if dry_run:
        ctx.describe(plan, f"\n  intermediate: {cfg.mode} at steps {ks} of a {budget}-step budget"
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


register_study(
    "steps",
    question="How does the number of intermediate training steps change zero-shot scores, per language group, "
             "and where do gains saturate or reverse?",
    config_cls=StepsConfig, run=run_steps, render=render_steps,
)
