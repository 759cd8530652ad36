"""Small shared pieces of the study runners: score tables from results rows, uncertainty of a
mean (bootstrap CI, sign-flip permutation test), JSON that stays valid, Markdown tables and bar
charts.

Results rows are those of ``results.jsonl`` (see :mod:`adapters_xtl.runner`): one per (cell,
language, metric) with ``target``, ``composition``, ``intermediate`` (registry module names
joined by ``+``, ``none`` for no intermediate), ``intermediate_task``, ``seed``, ``language``,
``metric``, ``score``.  Gains are computed per seed against the ``single`` cell of the same
target and seed, then averaged over seeds, as :mod:`adapters_xtl.report` does, so noise shared by
both cells of one seed does not count as gain.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters_xtl.errors import XtlError

__all__ = [
    "MeanCI",
    "bar_plot",
    "finite",
    "gains",
    "jsonable",
    "main_metric_of",
    "md_table",
    "mean_ci",
    "scores",
    "sign_flip_p",
]


# --------------------------------------------------------------------------- rows -> tables


def main_metric_of(rows: Sequence[Mapping[str, Any]], target: str) -> str:
    """The target's main metric when the catalog knows the task and the rows carry it, else the
    first metric the rows have for that target (synthetic tables in tests)."""
    have = {r["metric"] for r in rows if r.get("target", r.get("task")) == target}
    if not have:
        raise XtlError(f"no results rows for target {target!r}")
    from adapters_xtl.reporting import main_metric

    m = main_metric(target)
    return m if m in have else sorted(have)[0]


def scores(rows: Iterable[Mapping[str, Any]], target: str, metric: str, *, key: str = "intermediate"
           ) -> dict[tuple[str, str], dict[str, dict[int, float]]]:
    """``{(composition, <key>): {language: {seed: score}}}`` for one target and metric.

    ``key`` picks how intermediates are named: ``intermediate`` (registry module names; they
    carry ``-seedN`` when a recipe has several seeds) or ``intermediate_task``.  The baseline is
    ``("single", "none")`` either way.
    """
    out: dict[tuple[str, str], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.get("target", r.get("task")) != target or r.get("metric") != metric or "composition" not in r:
            continue
        inter = r.get(key, r.get("intermediate", "none")) or "none"
        if r["composition"] == "single":
            inter = "none"
        out[(r["composition"], inter)][r["language"]][int(r.get("seed", 0))] = float(r["score"])
    return {k: dict(v) for k, v in out.items()}


def seed_mean(per_seed: Mapping[int, float]) -> float:
    return statistics.fmean(per_seed.values()) if per_seed else math.nan


def gains(table: Mapping[tuple[str, str], Mapping[str, Mapping[int, float]]],
          baseline: tuple[str, str] = ("single", "none"), *, strip_seed: bool = True
          ) -> dict[tuple[str, str], dict[str, float]]:
    """Gain over ``baseline`` per (composition, intermediate) and language: the mean over seeds
    of (score - baseline score of the same seed).  ``strip_seed`` drops a trailing ``-seedN``
    from module names so one intermediate's seeds pool into one row."""
    base = table.get(baseline)
    if not base:
        raise XtlError("no baseline (`single`) results to compute gains against",
                       fix="add `single` to the recipe's compositions")
    pooled: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, per_lang in table.items():
        if key == baseline:
            continue
        comp, inter = key
        name = strip_seed_suffix(inter) if strip_seed else inter
        for lang, seeds in per_lang.items():
            for s, v in seeds.items():
                if lang in base and s in base[lang]:
                    pooled[(comp, name)][lang].append(v - base[lang][s])
    return {k: {lang: statistics.fmean(v) for lang, v in d.items()} for k, d in pooled.items()}


def strip_seed_suffix(name: str) -> str:
    import re

    return "+".join(re.sub(r"-seed\d+$", "", part) for part in name.split("+"))


def finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        f = float(v)
        if math.isfinite(f):
            out.append(f)
    return out


# --------------------------------------------------------------------------- uncertainty of a mean


@dataclass(frozen=True)
class MeanCI:
    """Mean of n values with a percentile bootstrap CI (resampling the values)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    ci: float = 0.95

    def text(self, fmt: str = "{:+.2f}") -> str:
        if self.n == 0:
            return "n/a (n=0)"
        if not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high)):
            return f"{fmt.format(self.mean)} (n={self.n})"
        return f"{fmt.format(self.mean)} [{self.ci:.0%} CI {fmt.format(self.ci_low)}, {fmt.format(self.ci_high)}] (n={self.n})"

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n, "ci": self.ci,
                "text": self.text()}


def mean_ci(values: Iterable[Any], *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> MeanCI:
    """Mean and bootstrap CI of the finite values (None/NaN dropped).  One value: no interval."""
    xs = np.asarray(finite(values), dtype=float)
    n = int(xs.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, ci)
    m = float(xs.mean())
    if n == 1 or n_boot <= 0:
        return MeanCI(m, math.nan, math.nan, n, ci)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = xs[idx].mean(axis=1)
    a = (1 - ci) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return MeanCI(m, float(lo), float(hi), n, ci)


def sign_flip_p(diffs: Iterable[Any], *, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided paired permutation p-value that the mean of ``diffs`` is 0: the sign of each
    difference is flipped at random (`scipy.stats.permutation_test` on one sample; exact over all
    2^n sign patterns when 2^n <= n_perm). The null distribution is symmetric, so scipy's
    two-sided p (twice the smaller tail) is the share of patterns at least as extreme."""
    from scipy import stats

    d = np.asarray(finite(diffs), dtype=float)
    if d.size == 0:
        return math.nan
    res = stats.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                 alternative="two-sided", n_resamples=n_perm, rng=np.random.default_rng(seed))
    return float(min(1.0, res.pvalue))


# --------------------------------------------------------------------------- output helpers


def jsonable(obj: Any) -> Any:
    """Nested dicts/lists with NaN/inf as None, tuples as lists, tuple keys joined by '|',
    numpy scalars as Python numbers: strict JSON."""
    if isinstance(obj, Mapping):
        return {("|".join(map(str, k)) if isinstance(k, tuple) else str(k)): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "as_dict"):
        return jsonable(obj.as_dict())
    return obj


def fmt(v: Any, spec: str = "{:.2f}") -> str:
    if v is None:
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return spec.format(f) if math.isfinite(f) else "n/a"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one char per column (``l`` or ``r``, default: first left)."""
    header = list(header)
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def bar_plot(labels: Sequence[str], values: Sequence[float], path: str | Path, *,
             errors: Sequence[tuple[float, float]] | None = None, ylabel: str = "", title: str = "",
             dpi: int = 120) -> Path:
    """Bars with optional asymmetric error bars ``(low, high)`` (absolute CI ends)."""
    from adapters_xtl.studies.stats import _new_figure, _save

    fig = _new_figure((max(4.0, 0.8 * len(labels) + 2), 4.2))
    ax = fig.add_subplot()
    vals = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    x = np.arange(len(labels))
    yerr = None
    if errors is not None:
        lo = np.asarray([v - (e[0] if e[0] is not None and math.isfinite(e[0]) else v) for v, e in zip(vals, errors)])
        hi = np.asarray([(e[1] if e[1] is not None and math.isfinite(e[1]) else v) - v for v, e in zip(vals, errors)])
        yerr = np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)])
    colors = ["tab:blue" if (math.isfinite(v) and v >= 0) else "tab:red" for v in vals]
    ax.bar(x, np.nan_to_num(vals), yerr=yerr, color=colors, capsize=4, alpha=0.85)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [str(label) for label in labels], rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path, dpi)
