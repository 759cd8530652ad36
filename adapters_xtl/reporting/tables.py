"""The numbers of a report: score per cell and language, gain over `single`, and how sure each is.

Scores are averaged over seeds; the gain of a composition is computed per seed against the
`single` baseline of the same target and seed, then averaged, so seed noise shared by both does
not count as gain. A task's "avg" is XTREME's: the mean over its languages; "zs-avg" leaves
English out (the zero-shot average users otherwise recompute by hand).

Uncertainty, when the run kept its per-example predictions (`<run>/predictions/<cell>.jsonl`):
every gain carries a paired bootstrap interval over the same test examples, pooled over seeds
and, for the averages, over languages (metrics/pooled.py); with several seeds also a t-interval
over seeds. A gain is marked significant only when its p-value, adjusted across every gain of the
report (Holm by default, or Benjamini-Hochberg), is below alpha: the report names the correction
and the family size. Without predictions (old runs) gains carry the seed interval only and are
never marked.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from ..errors import XtlError
from ..tasks import get_task

BASE = ("single", "none")
ZS = "zs-avg"
CORRECTIONS = {"holm": "Holm (family-wise error)", "bh": "Benjamini-Hochberg (false discovery rate)"}


class Stat(NamedTuple):
    """A score: mean and std over `n` seeds, and its 95% interval (None when unknown)."""

    mean: float
    std: float
    n: int
    low: float | None = None
    high: float | None = None


class GainStat(NamedTuple):
    """A gain over `single` in points: mean and std over `n` seeds; [low, high] the paired
    bootstrap interval over test examples, p its p-value and p_adj after the report's
    correction; significant when p_adj < alpha; [seed_low, seed_high] the t-interval over seeds."""

    mean: float
    std: float
    n: int
    low: float | None = None
    high: float | None = None
    p: float | None = None
    p_adj: float | None = None
    significant: bool = False
    seed_low: float | None = None
    seed_high: float | None = None


def main_metric(task: str) -> str:
    try:
        spec = get_task(task)
    except Exception:
        return "accuracy"
    from ..pipeline import default_main_metric

    return default_main_metric(spec)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def load_predictions(run_dir: Path) -> dict[str, dict[str, list]]:
    """cell key -> language -> per-example rows, from `<run>/predictions/*.jsonl` (a torn last
    line from a kill is skipped; the cell is then re-run anyway, its record being absent)."""
    out: dict[str, dict[str, list]] = {}
    folder = Path(run_dir) / "predictions"
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.jsonl")):
        per: dict[str, list] = {}
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                per.setdefault(r.get("language"), []).append(r)
        out[f.stem] = per
    return out


def score_table(rows: list[dict], predictions: dict[str, dict[str, list]] | None = None, *,
                correction: str = "holm", alpha: float = 0.05, n_resamples: int = 1000) -> dict:
    """{target: {"languages": [..., "avg", "zs-avg"], "metric": m, "rows": {(composition,
    intermediate): {lang: Stat}}, "gain": {(composition, intermediate): {lang: GainStat}},
    "significance": {...how gains were tested...}}}. `predictions` (see `load_predictions`)
    enables the example-level intervals and significance marks."""
    if correction not in CORRECTIONS:
        raise XtlError(f"unknown correction {correction!r}", where="--correction",
                       fix=f"valid: {', '.join(CORRECTIONS)}")
    if not 0 < alpha < 1:
        raise XtlError(f"alpha must be in (0, 1), got {alpha!r}", where="--alpha", fix="e.g. 0.05")
    predictions = predictions or {}
    # target -> (comp, inter) -> lang -> seed -> row
    by = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in rows:
        if "composition" not in r or r.get("metric") != main_metric(r["task"]):
            continue
        inter = r.get("intermediate_task", r.get("intermediate", "none"))
        by[r.get("target", r["task"])][(r["composition"], inter)][r["language"]][r.get("seed", 0)] = r
    out = {}
    for target, groups in by.items():
        langs = sorted({lang for g in groups.values() for lang in g}, key=lambda l: (l != "en", l))
        spec = _spec(target)
        fmt = spec.format if spec else next((r.get("format") for g in groups.values() for seeds in g.values()
                                             for r in seeds.values() if r.get("format")), None)
        metric = main_metric(target)
        table, gain = {}, {}
        for key, per_lang in groups.items():
            table[key] = _scores((spec, fmt), metric, per_lang, predictions, n_resamples)
            if key != BASE and BASE in groups:
                gain[key] = _gains((spec, fmt), metric, per_lang, groups[BASE], predictions, n_resamples)
        extra = ["avg"] + ([ZS] if "en" in langs and len(langs) > 2 else [])
        out[target] = {"languages": langs + extra, "rows": table, "gain": gain, "metric": metric}
    _correct(out, correction, alpha)
    return out


def _spec(target: str):
    try:
        return get_task(target)
    except Exception:
        return None


def _parts(task, metric: str, cells: list[tuple[str, str, str | None]], predictions) -> list | None:
    """Pooling parts for (language, cell_b, cell_a) triples, or None when any rows are missing.
    `task` is (spec or None, format): a task outside today's catalog is scored by the format its
    rows recorded (span QA then by SQuAD's normalisation)."""
    from ..formats.intervals import metric_language
    from ..metrics.pooled import Part

    spec, fmt = task
    if fmt is None:
        return None
    parts = []
    for lang, b, a in cells:
        rb = predictions.get(b, {}).get(lang)
        ra = predictions.get(a, {}).get(lang) if a else None
        if not rb or (a and not ra):
            return None
        parts.append(Part(lang, fmt, metric, rb, ra, metric_language(spec, lang) if spec else None))
    return parts


def _scores(spec, metric, per_lang: dict, predictions, n_resamples) -> dict[str, Stat]:
    from ..metrics.pooled import pooled_score

    res: dict[str, Stat] = {}
    for lang, seeds in per_lang.items():
        vals = [r["score"] for r in seeds.values()]
        mean, std = _mean_std(vals)
        low = high = None
        if len(seeds) == 1:
            r = next(iter(seeds.values()))
            low, high = _finite(r.get("ci_low")), _finite(r.get("ci_high"))
        else:
            parts = _parts(spec, metric, [(lang, r.get("cell"), None) for r in seeds.values()], predictions)
            if parts:
                iv = _safe(pooled_score, parts, n_resamples=n_resamples)
                low, high = (_finite(iv.low), _finite(iv.high)) if iv else (None, None)
        res[lang] = Stat(mean, std, len(vals), low, high)
    for name, chosen in (("avg", list(per_lang)), (ZS, [l for l in per_lang if l != "en"])):
        if name == ZS and ("en" not in per_lang or len(chosen) < 2):  # one language is its own column
            continue
        zs = [res[l].mean for l in chosen]
        cells = [(l, r.get("cell"), None) for l in chosen for r in per_lang[l].values()]
        parts = _parts(spec, metric, cells, predictions)
        iv = _safe(pooled_score, parts, n_resamples=n_resamples) if parts else None
        res[name] = Stat(statistics.fmean(zs), 0.0, len(zs), _finite(iv.low) if iv else None,
                         _finite(iv.high) if iv else None)
    return res


def _gains(spec, metric, per_lang: dict, base: dict, predictions, n_resamples) -> dict[str, GainStat]:
    from ..metrics.pooled import pooled_gain
    from ..metrics.uncertainty import seed_interval

    res: dict[str, GainStat] = {}
    pairs: dict[str, list[tuple[dict, dict]]] = {}
    for lang, seeds in per_lang.items():
        common = [s for s in seeds if s in base.get(lang, {})]
        if common:
            pairs[lang] = [(seeds[s], base[lang][s]) for s in common]
    for lang, ps in pairs.items():
        diffs = [b["score"] - a["score"] for b, a in ps]
        res[lang] = _gain_stat(spec, metric, [(lang, b.get("cell"), a.get("cell")) for b, a in ps], diffs,
                               predictions, n_resamples, pooled_gain, seed_interval)
    for name, chosen in (("avg", list(pairs)), (ZS, [l for l in pairs if l != "en"])):
        if not chosen or (name == ZS and ("en" not in pairs or len(chosen) < 2)):
            continue
        cells = [(l, b.get("cell"), a.get("cell")) for l in chosen for b, a in pairs[l]]
        seeds = sorted({b.get("seed", 0) for l in chosen for b, _ in pairs[l]}, key=str)
        # per seed: the mean gain over languages, so the seed interval is over seed-level averages
        per_seed = [statistics.fmean(b["score"] - a["score"] for l in chosen for b, a in pairs[l]
                                     if b.get("seed", 0) == s) for s in seeds]
        g = _gain_stat(spec, metric, cells, per_seed, predictions, n_resamples, pooled_gain, seed_interval)
        res[name] = g._replace(mean=statistics.fmean(res[l].mean for l in chosen), n=len(seeds))
    return res


def _gain_stat(spec, metric, cells, diffs, predictions, n_resamples, pooled_gain, seed_interval) -> GainStat:
    mean, std = _mean_std(diffs)
    si = seed_interval(diffs) if len(diffs) > 1 else None
    parts = _parts(spec, metric, cells, predictions)
    g = _safe(pooled_gain, parts, n_resamples=n_resamples) if parts else None
    return GainStat(mean, std, len(diffs), _finite(g.low) if g else None, _finite(g.high) if g else None,
                    _finite(g.p) if g else None, None, False,
                    _finite(si.low) if si else None, _finite(si.high) if si else None)


def _safe(fn, parts, **kw):
    """A statistic that cannot be computed (rows of two systems on different examples, e.g. one
    evaluated with --limit) leaves the cell without an interval instead of failing the report."""
    from ..metrics.uncertainty import StatsError

    try:
        return fn(parts, **kw)
    except StatsError:
        return None


def _correct(tables: dict, correction: str, alpha: float) -> None:
    from ..metrics.uncertainty import adjust_pvalues

    cells = [(t, k, l) for t, tab in tables.items() for k, per in tab["gain"].items() for l, g in per.items()
             if g.p is not None]
    adjusted = adjust_pvalues([tables[t]["gain"][k][l].p for t, k, l in cells], correction) if cells else []
    for (t, k, l), p_adj in zip(cells, adjusted):
        g = tables[t]["gain"][k][l]
        tables[t]["gain"][k][l] = g._replace(p_adj=p_adj, significant=bool(p_adj < alpha))
    info = {"correction": correction, "correction_name": CORRECTIONS[correction], "alpha": alpha,
            "family": len(cells), "significant": sum(1 for t, k, l in cells if tables[t]["gain"][k][l].significant)}
    for tab in tables.values():
        tab["significance"] = info


def significance_note(tables: dict) -> str:
    """One sentence saying how gains were tested, for every table and figure of a report."""
    info = next((t["significance"] for t in tables.values() if "significance" in t), None)
    if not info or not info["family"]:
        return ("Gains carry no example-level interval (the run kept no per-example predictions); "
                "none is marked significant.")
    return (f"* = significant: the paired bootstrap interval over test examples (95%, pooled over seeds, and "
            f"over languages for the averages) excludes 0 after the {info['correction_name']} correction "
            f"across all {info['family']} gains of this report at alpha {info['alpha']:g} "
            f"({info['significant']} significant).")
