"""Study ``similarity``: do intermediate tasks that resemble the target help it more?

Task similarity between intermediate and target (backbone representations of the two tasks'
English data: centroid cosine and covariance similarity; cosine of the trained modules' weight
deltas; :mod:`adapters_xtl.studies.similarity`) vs the gain, per language and averaged over
languages.  Several measures because none is established: the report shows which one tracks
the gain, if any.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from adapters_xtl.errors import XtlError
from adapters_xtl.studies import register_study
from adapters_xtl.studies.common import CORR_HEADER, ci_text, corr_pair, corr_rows, scatter
from adapters_xtl.studies.context import StudyConfig, StudyContext
from adapters_xtl.studies.tables import finite, fmt, gains, main_metric_of, md_table, scores


class SimilarityConfig(StudyConfig):
    """Settings of the similarity recipe's `study:` section."""

    n_texts: int = 200  # English training texts per task for the representation measures
    layer: int | str = "last"
    batch_size: int = 32


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
                                    **corr_pair(xs, [avg[p] for p in pairs], unit="task pairs")})
            for lang in langs:
                res["per_language"].append({"x": m, "y": f"gain ({lang})", "measure": m, "language": lang,
                                            **corr_pair(xs, [gain_table[(comp, *p)].get(lang, math.nan) for p in pairs],
                                                        unit="task pairs")})
            px, py = [], []
            for p in pairs:
                for lang, g in gain_table[(comp, *p)].items():
                    px.append(similarities[p].get(m, math.nan))
                    py.append(g)
            res["pooled"].append({"x": m, "y": "gain (all pair x language points)", "measure": m,
                                  **corr_pair(px, py, unit="pair-language points (not independent)")})
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
        ctx.describe(plan)
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
            corr["figure"] = scatter(ctx, f"similarity_{comp}_{m}.png",
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
                  md_table(CORR_HEADER, corr_rows(c["averaged"])), "",
                  f"### {comp}: per language (Spearman r [95% CI], n = task pairs)", ""]
        by_m: dict[str, dict[str, str]] = defaultdict(dict)
        for corr in c["per_language"]:
            by_m[corr["measure"]][corr["language"]] = ci_text(corr["spearman"])
        lines += [md_table(["measure"] + langs, [[m] + [by_m[m].get(l, "") for l in langs] for m in by_m]), "",
                  f"### {comp}: pooled over pair x language points (not independent)", "",
                  md_table(CORR_HEADER, corr_rows(c["pooled"])), ""]
    return lines


register_study(
    "similarity",
    question="Do intermediate tasks that are more similar to the target task help more?",
    config_cls=SimilarityConfig, run=run_similarity, render=render_similarity,
)
