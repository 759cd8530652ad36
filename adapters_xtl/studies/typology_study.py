"""Study ``typology``: does transfer get harder, and intermediate training help more, the further
a language is from English?

URIEL distance from English (syntactic, phonological, inventory, featural, genetic, geographic;
:mod:`adapters_xtl.studies.typology`) vs the zero-shot gap (English score minus the language's
score, of the no-intermediate ``single`` cells) and vs the gain from intermediate training.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from adapters_xtl.errors import XtlError
from adapters_xtl.studies import register_study
from adapters_xtl.studies.common import CORR_HEADER, corr_pair, corr_rows, scatter, strongest
from adapters_xtl.studies.context import StudyConfig, StudyContext
from adapters_xtl.studies.tables import finite, fmt, gains, main_metric_of, md_table, scores, seed_mean


class TypologyConfig(StudyConfig):
    """Settings of the typology recipe's `study:` section."""

    pivot: str = "en"
    kinds: list[str] = Field(default_factory=lambda: ["syntactic", "phonological", "inventory", "featural",
                                                      "genetic", "geographic"])


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
                              **corr_pair(xs, [ys.get(l, math.nan) for l in langs])})
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
        ctx.describe(plan)
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
                c["figure"] = scatter(ctx, f"typology_{target}_{short}_{c['kind']}.png",
                                      [t["distances"][l].get(c["kind"]) for l in langs], [ys.get(l) for l in langs], langs,
                                      xlabel=f"{c['kind']} distance from {cfg.pivot} (URIEL)",
                                      ylabel=f"{c['y']} ({t['metric']} points)", title=f"{target}: {c['y']}",
                                      corr=c)
        for yname in ["gap", list(t["gains"])[-1] if t["gains"] else None]:
            if yname is None:
                continue
            best = strongest([c for c in t["correlations"] if c["y"] == yname])
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
        lines += [md_table(hdr, body), "", "### Correlations", "", md_table(CORR_HEADER, corr_rows(t["correlations"])), ""]
        for c in t["correlations"]:
            if c.get("figure"):
                lines.append(f"- {c['y']} vs {c['x']}: {c['spearman'].get('sentence', '')}")
        lines.append("")
    return lines


register_study(
    "typology",
    question="Does the zero-shot gap, and the gain from intermediate training, grow with a language's "
             "typological distance from English?",
    config_cls=TypologyConfig, run=run_typology, render=render_typology,
)
