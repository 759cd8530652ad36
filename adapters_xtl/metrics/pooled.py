"""Gains and scores pooled over languages and seeds, with one bootstrap across all of them.

A report's "avg" column is the mean over a task's languages (XTREME's task score), and a grid
with several seeds reports the mean over seeds; its uncertainty is that of the mean, not of any
one language. `uncertainty.paired_gain` resamples one language's examples; here each language's
examples are resampled independently (languages are separate test sets) and the same resample
serves every seed of that language (the seeds were scored on the same examples, so what they
share cancels, as in the paired bootstrap). The statistic on each resample is

    mean over languages ( mean over seeds ( metric(b) - metric(a) ) )

and the interval is its percentile interval, the p-value the same inversion as `paired_gain`,
so Holm/BH over many cells (`adjust_pvalues`) keeps the "adjusted p < alpha <=> interval excludes
0" reading. One language and one seed is `paired_gain`'s statistic with another random stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._row_stats import compile_rows
from .uncertainty import Gain, Interval, StatsError, _align, _weights

__all__ = ["Part", "pooled_gain", "pooled_score"]

_CHUNK = 4_000_000  # elements of one [resamples x units] weight block


@dataclass(frozen=True)
class Part:
    """One seed of one language: the rows of system a (baseline) and b, and how to score them.
    ``lang`` is the metric language as in `metric_from_rows` (MLQA's answer language or None)."""

    language: str
    format_name: str
    metric: str
    rows_b: Sequence[dict]
    rows_a: Sequence[dict] | None = None
    lang: str | None = None


def _by_language(parts: Sequence[Part]) -> dict[str, list[Part]]:
    out: dict[str, list[Part]] = {}
    for p in parts:
        out.setdefault(p.language, []).append(p)
    return out


def _language_plan(parts: list[Part], paired: bool):
    """Units of one language over all its seeds: (n, [(fn_b, cols_b, fn_a, cols_a)])."""
    compiled = []
    for p in parts:
        sb = compile_rows(p.format_name, p.metric, p.rows_b, p.lang)
        sa = compile_rows(p.format_name, p.metric, p.rows_a, p.lang) if paired else None
        if paired:
            _align(sa, sb)  # same examples and gold in both systems, or a StatsError naming the ids
        compiled.append((sb, sa))
    keys = list(dict.fromkeys(k for sb, sa in compiled for k in (sb.keys + (sa.keys if sa else []))))
    if not paired and len(compiled) > 1 and any(set(sb.keys) != set(compiled[0][0].keys) for sb, _ in compiled):
        raise StatsError(f"the seeds of language {parts[0].language!r} scored different examples",
                         fix="pool seeds evaluated on the same test examples (same split and --limit)")
    col = {k: j for j, k in enumerate(keys)}
    plan = [(sb.fn, np.array([col[k] for k in sb.keys], int), sa.fn if sa else None,
             np.array([col[k] for k in sa.keys], int) if sa else None) for sb, sa in compiled]
    return len(keys), plan


def _statistic(plan, W: np.ndarray) -> np.ndarray:
    vals = [(fb(W[:, cb]) - (fa(W[:, ca]) if fa is not None else 0.0)) for fb, cb, fa, ca in plan]
    return np.mean(vals, axis=0)


def _distribution(parts: Sequence[Part], paired: bool, n_resamples: int, seed: int | None):
    if not parts:
        raise StatsError("nothing to pool: no (language, seed) parts given", fix="pass at least one Part")
    rng = np.random.default_rng(seed)
    per_lang, observed, units = [], [], 0
    for lang, lparts in _by_language(parts).items():
        n, plan = _language_plan(lparts, paired)
        if n == 0:
            raise StatsError(f"language {lang!r} has no scored examples", fix="check its prediction rows")
        units += n
        observed.append(float(_statistic(plan, np.ones((1, n)))[0]))
        chunk = max(1, _CHUNK // n)
        dist = np.concatenate([_statistic(plan, _weights(rng.integers(0, n, size=(min(chunk, n_resamples - i), n)), n))
                               for i in range(0, n_resamples, chunk)])
        per_lang.append(dist)
    return units, float(np.mean(observed)), np.mean(per_lang, axis=0)


def _check(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be in (0, 1), got {confidence!r}", fix="e.g. 0.95")
    if int(n_resamples) < 1:
        raise StatsError(f"n_resamples must be a positive integer, got {n_resamples!r}", fix="e.g. 1000")


def pooled_gain(parts: Sequence[Part], confidence: float = 0.95, n_resamples: int = 1000,
                seed: int | None = 0) -> Gain:
    """Gain of b over a (points), averaged over the parts' seeds and then their languages, with a
    bootstrap interval and p-value over every language's test examples (module doc). ``n`` is the
    number of resampled units over all languages."""
    _check(confidence, n_resamples)
    if any(p.rows_a is None for p in parts):
        raise StatsError("a gain needs the baseline's rows (rows_a) in every part", fix="pass rows_a")
    n, observed, dist = _distribution(parts, True, int(n_resamples), seed)
    low, high = (float(v) for v in np.quantile(dist, [(1 - confidence) / 2, (1 + confidence) / 2]))
    k = dist.shape[0]
    p = min(1.0, 2 * min((np.sum(dist <= 0) + 1) / (k + 1), (np.sum(dist >= 0) + 1) / (k + 1)))
    note = "every resample gives the same value: the interval is a point" if np.ptp(dist) == 0 else None
    return Gain(n, observed, low, high, float(p), confidence=confidence, method="percentile",
                n_resamples=int(n_resamples), note=note)


def pooled_score(parts: Sequence[Part], confidence: float = 0.95, n_resamples: int = 1000,
                 seed: int | None = 0) -> Interval:
    """A score averaged over seeds and languages (the report's "avg"), with its bootstrap interval."""
    _check(confidence, n_resamples)
    n, observed, dist = _distribution(parts, False, int(n_resamples), seed)
    low, high = (float(v) for v in np.quantile(dist, [(1 - confidence) / 2, (1 + confidence) / 2]))
    if not math.isfinite(observed):
        low = high = math.nan
    return Interval(n, low, high, observed, confidence, "percentile", int(n_resamples))
