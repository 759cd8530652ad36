"""Study ``intermediate-language``: does it matter which language the intermediate task is
trained in?

The same intermediate task trained in different languages (UD POS: English vs the languages
with a UD train split in the data folder), same budget, same targets: gains compared with the
English intermediate (paired over target languages), the gain in the intermediate's own
language, and gain vs the distance between the two languages.  The language variants are
written as task YAMLs under ``<out>/tasks`` and put in the catalog for the run, so the grid
runner and the registry treat them as any other task.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from adapters_xtl.errors import XtlError
from adapters_xtl.studies import register_study
from adapters_xtl.studies.common import CORR_HEADER, corr_pair, corr_rows, scatter
from adapters_xtl.studies.context import StudyConfig, StudyContext, extra_task_folder
from adapters_xtl.studies.tables import (
    bar_plot,
    fmt,
    gains,
    main_metric_of,
    md_table,
    mean_ci,
    scores,
    sign_flip_p,
)


class IntermediateLanguageConfig(StudyConfig):
    """Settings of the intermediate-language recipe's `study:` section."""

    base_task: str | None = None  # default: the recipe's one intermediate task
    train_languages: list[str] = Field(default_factory=lambda: ["en", "tr", "vi"])
    reference: str = "en"
    treebanks: dict[str, str] = Field(default_factory=dict)  # lang -> "UD_X/xx_tb" under <data_dir>/ud
    kinds: list[str] = Field(default_factory=lambda: ["syntactic", "genetic"])


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
                                      **corr_pair(xs, ys, unit="(intermediate language, target language) pairs")})
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
            ctx.describe(plan, f"\n  intermediate {base.name} trained in: "
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
                corr["figure"] = scatter(ctx, f"intermediate_language_{target}_{comp}_{corr['kind']}.png",
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
                          md_table(CORR_HEADER, corr_rows(c["distance_correlations"])), ""]
    return lines


register_study(
    "intermediate-language",
    question="Does the language the intermediate task is trained in matter, at the same task and budget?",
    config_cls=IntermediateLanguageConfig, run=run_intermediate_language, render=render_intermediate_language,
)
