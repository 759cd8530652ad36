"""Correlation summaries shared by the studies: the same two methods, table columns and figure
for every study, so their reports read alike.

Each study correlates some property (a distance, a complexity measure, a similarity) with a gain
or a degradation over a handful of languages or task pairs; :func:`corr_pair` gives Spearman and
Pearson for such a pair of series (with CIs, permutation p and a sentence), :func:`corr_rows`
their Markdown rows under :data:`CORR_HEADER`, :func:`scatter` the labelled figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from adapters_xtl.errors import XtlError
from adapters_xtl.studies import stats
from adapters_xtl.studies.tables import finite, fmt

if TYPE_CHECKING:
    from adapters_xtl.studies.context import StudyContext

__all__ = ["CORR_HEADER", "ci_text", "corr_pair", "corr_rows", "scatter", "strongest"]


def corr_pair(x: Sequence[Any], y: Sequence[Any], unit: str = "languages") -> dict[str, Any]:
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


def strongest(corrs: Sequence[Mapping[str, Any]], method: str = "spearman") -> Mapping[str, Any] | None:
    """The correlation with the largest finite |r| (the first one when none has an r)."""
    best, best_abs = None, -1.0
    for c in corrs:
        r = (c.get(method) or {}).get("r")
        if r is not None and isinstance(r, float) and math.isfinite(r) and abs(r) > best_abs:
            best, best_abs = c, abs(r)
    return best if best is not None else (corrs[0] if corrs else None)


def scatter(ctx: StudyContext | None, name: str, xs, ys, labels, *, xlabel, ylabel, title,
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


def corr_rows(corrs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One Markdown row per correlation, under :data:`CORR_HEADER`."""
    rows = []
    for c in corrs:
        s, p = c.get("spearman") or {}, c.get("pearson") or {}
        rows.append([c["x"], c["y"], ci_text(s), fmt(s.get("p_perm"), "{:.3f}"), ci_text(p),
                     fmt(p.get("p_perm"), "{:.3f}"), str(s.get("n", ""))])
    return rows


CORR_HEADER = ["x", "y", "Spearman r [95% CI]", "p", "Pearson r [95% CI]", "p", "n"]


def ci_text(d: Mapping[str, Any]) -> str:
    """``r [low, high]`` of one method's correlation, ``n/a`` without a finite r."""
    if not d or d.get("r") is None or (isinstance(d.get("r"), float) and not math.isfinite(d["r"])):
        return "n/a"
    return f"{d['r']:+.2f} [{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]"
