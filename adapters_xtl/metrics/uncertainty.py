"""How sure a score and a gain are: bootstrap intervals over test examples, paired gains, seeds.

A zero-shot score on 100 test sentences moves by several points when other sentences are drawn,
so a gain of +0.9 means nothing without its uncertainty. Everything here starts from the
per-example rows a format keeps while scoring (`score(..., keep=rows)`, formats/base.py):

* `metric_from_rows(format_name, metric, rows, lang=None)`: the reported metric again, from the rows
  alone, through the same official metric functions `score` calls (so it equals `score`'s value).
* `score_interval(...)`: a bootstrap confidence interval over the test examples
  (`scipy.stats.bootstrap`). Corpus-level metrics (seqeval F1, macro-F1, BUCC F1 with its
  threshold) are recomputed on every resample from per-unit counts (metrics/_row_stats.py), not
  averaged per example.
* `paired_gain(...)`: the gain of system b over system a on the *same* examples, matched by id,
  with a paired bootstrap interval and a two-sided p-value.
* `seed_interval(values)`: a t-interval over seeds, for a gain measured with several seeds.
* `adjust_pvalues(pvalues, method)`: Holm or Benjamini-Hochberg across a grid's cells.

Choices, and why:

* Percentile intervals by default (``method="percentile"``). BCa (``method="BCa"``) is offered:
  it corrects bias and skew but runs a jackknife, one more evaluation per unit, which for
  corpus-level metrics on thousands of sentences costs more than the resamples; where it is
  undefined (a degenerate bootstrap distribution) the percentile interval is reported with a note.
* The p-value of a gain comes from the same paired bootstrap distribution as its interval:
  ``p = 2 * min(P*(gain <= 0), P*(gain >= 0))`` with the +1 correction (never 0), which is the
  inversion of the percentile interval, so "p < alpha" and "the (1 - alpha) interval excludes 0"
  agree, and Holm/BH-adjusted p-values below alpha are exactly the gains whose intervals exclude 0
  at the corrected level. `scipy.stats.permutation_test` (swapping the two systems' outputs per
  example) was the alternative; it needs a second resampling pass, and for BUCC it would mix
  margin scores of two systems in one threshold sweep, which have no common scale.
* Retrieval is conditional on the candidate pool: a resample redraws the queries, the sentences
  searched among stay as scored (re-searching would need the embeddings, not the rows).

Degenerate inputs give a clear result, never a crash: no units -> NaN value and interval; one
unit -> its value with a NaN interval (the spread of one example is not estimable); every
resample equal (e.g. all correct) -> a point interval ``[v, v]``. Each says why in ``note``.
Scores are in the unit the format reports (percent); gains in points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import XtlError
from ._row_stats import FORMAT_METRICS, RowStatistic, compile_rows  # noqa: F401

__all__ = [
    "Interval",
    "Gain",
    "StatsError",
    "FORMAT_METRICS",
    "metric_from_rows",
    "score_interval",
    "paired_gain",
    "seed_interval",
    "adjust_pvalues",
    "ADJUST_METHODS",
]

ADJUST_METHODS = ("holm", "bh")
CI_METHODS = ("percentile", "BCa", "basic")
_CHUNK = 4_000_000  # elements of one [resamples x units] block: bounds memory on large test sets


# a user-fixable problem (unknown method, mismatched rows): the CLI prints it and exits 2
StatsError = XtlError


@dataclass(frozen=True)
class Interval:
    """A score (``value``) on ``n`` resampling units with its ``confidence`` interval [low, high]."""

    n: int
    low: float
    high: float
    value: float = math.nan
    confidence: float = 0.95
    method: str = "percentile"
    n_resamples: int = 0
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def excludes(self, x: float = 0.0) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high) and (self.low > x or self.high < x)


@dataclass(frozen=True)
class Gain:
    """metric(b) - metric(a) on the same ``n`` units: ``mean`` is the observed gain (b - a on
    all units, in points), [low, high] its paired bootstrap interval, ``p`` the two-sided p-value
    of "no gain" (module doc); ``a`` and ``b`` the two scores."""

    n: int
    mean: float
    low: float
    high: float
    p: float
    a: float = math.nan
    b: float = math.nan
    confidence: float = 0.95
    method: str = "percentile"
    n_resamples: int = 0
    note: str | None = None

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (uncorrected; adjust ``p`` across cells with `adjust_pvalues`)."""
        return math.isfinite(self.low) and math.isfinite(self.high) and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


# --------------------------------------------------------------------------- point values
def metric_from_rows(format_name: str, metric: str, rows: Sequence[dict], lang: str | None = None) -> float:
    """`metric` (as `score` reports it, percent) recomputed from the kept rows of one language.

    ``format_name``: classification, tagging, span_qa, multiple_choice or retrieval. ``lang`` only
    matters for span QA: the MLQA answer language (an MLQA code, what
    `formats.span_qa.mlqa_language(spec, lang)` gives) for tasks scored with MLQA's script
    (`formats.span_qa.uses_mlqa_metric(spec)`); None for SQuAD's script (XQuAD, TyDiQA, SQuAD).
    Retrieval rows with a ``direction`` are pairs mode (accuracy, accuracy_xx2en,
    accuracy_en2xx), others BUCC mining (f1, precision, recall). An empty row list is NaN.
    """
    from . import _row_stats as rs
    from . import accuracy, bucc_f1, macro_f1, ner_f1, pos_accuracy, pos_xtreme_f1

    rs.check_metric(format_name, metric)
    rows = list(rows)
    if format_name in ("classification", "multiple_choice"):
        if not rows:
            return math.nan
        pred, gold = [rs._hashable(r["prediction"]) for r in rows], [rs._hashable(r["gold"]) for r in rows]
        return 100.0 * (accuracy(pred, gold) if metric == "accuracy" else macro_f1(pred, gold))
    if format_name == "tagging":
        rows = rs.scored_tagging_rows(rows)
        if not rows:
            return math.nan
        pred, gold = [r["prediction"] for r in rows], [r["gold"] for r in rows]
        if metric == "accuracy":
            return 100.0 * pos_accuracy(pred, gold)
        return 100.0 * (pos_xtreme_f1 if metric == "f1_xtreme" else ner_f1)(pred, gold)[
            "f1" if metric == "f1_xtreme" else metric]
    if format_name == "span_qa":
        from . import mlqa_scores, squad_scores

        rows = [r for r in rows if r["gold"]]
        if not rows:
            return math.nan
        preds = {i: r["prediction"] or "" for i, r in enumerate(rows)}
        golds = {i: r["gold"] for i, r in enumerate(rows)}
        s = squad_scores(preds, golds) if lang is None else mlqa_scores(preds, golds, lang)
        return (s["exact_match"] + s["f1"]) / 2 if metric == "qa_score" else s[metric]
    if metric in rs.PAIRS_METRICS:
        if not rows:
            return math.nan
        _, cx, ce = rs.pair_units(rows)
        x2e, e2x = 100.0 * float(np.mean(cx)), 100.0 * float(np.mean(ce))
        return {"accuracy_xx2en": x2e, "accuracy_en2xx": e2x, "accuracy": (x2e + e2x) / 2}[metric]
    cands, gold = rs.mining_parts(rows)
    if not gold:
        return math.nan
    if not cands:
        return 0.0  # nothing mined with a positive margin (Retrieval.score_mining)
    return bucc_f1(cands, gold)[metric]


# --------------------------------------------------------------------------- bootstrap
def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Resampled unit indices [batch, k] -> counts per unit [batch, n] (k = n for a resample,
    n - 1 for the jackknife of BCa)."""
    idx = np.asarray(idx, dtype=np.int64)
    b = idx.shape[0]
    flat = (idx + n * np.arange(b, dtype=np.int64)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _check_ci(confidence: float, n_resamples: int, method: str) -> None:
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be in (0, 1), got {confidence!r}", fix="e.g. 0.95")
    if int(n_resamples) < 1:
        raise StatsError(f"n_resamples must be a positive integer, got {n_resamples!r}", fix="e.g. 1000")
    if method not in CI_METHODS:
        raise StatsError(f"unknown interval method {method!r}", fix=f"valid: {', '.join(CI_METHODS)}")


def _bootstrap(stat, n: int, width: int, *, confidence: float, n_resamples: int, method: str, seed):
    """scipy.stats.bootstrap over unit indices 0..n-1; `stat(W)` maps counts to values.
    Returns (low, high, distribution, method used, note)."""
    import warnings

    from scipy import stats

    def statistic(idx, axis=-1):
        idx = np.moveaxis(np.asarray(idx), axis, -1)
        out = stat(_weights(idx.reshape(-1, idx.shape[-1]), n))
        return out.reshape(idx.shape[:-1])

    kw = dict(n_resamples=int(n_resamples), vectorized=True, confidence_level=confidence,
              batch=max(1, _CHUNK // max(width, 1)), rng=np.random.default_rng(seed))
    note = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning: handled below
        res = stats.bootstrap((np.arange(n),), statistic, method=method, **kw)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        if method != "percentile" and not (math.isfinite(low) and math.isfinite(high)):
            low, high = (float(v) for v in np.quantile(dist, [(1 - confidence) / 2, (1 + confidence) / 2]))
            note = f"{method} undefined here (degenerate bootstrap distribution): percentile interval"
            method = "percentile"
    if np.ptp(dist) == 0:
        point = "every resample gives the same value: the interval is a point"
        note = f"{note}; {point}" if note else point
    return low, high, dist, method, note


def _width(stat: RowStatistic) -> int:
    return max(stat.n, stat.width, 1)


def score_interval(format_name: str, metric: str, rows: Sequence[dict], lang: str | None = None,
                   confidence: float = 0.95, n_resamples: int = 1000, seed: int | None = 0,
                   method: str = "percentile") -> Interval:
    """Bootstrap interval of `metric` over the test examples of `rows` (one language).

    Resamples units (examples; sentences for tagging; sentence pairs or source sentences for
    retrieval: see metrics/_row_stats.py) with replacement and recomputes the metric on each
    resample, corpus-level metrics included. ``value`` is `metric_from_rows`. Same rows and seed
    give the same interval. ``lang`` as in `metric_from_rows`.
    """
    _check_ci(confidence, n_resamples, method)
    stat = compile_rows(format_name, metric, rows, lang)
    value = metric_from_rows(format_name, metric, rows, lang)
    nan = math.nan
    base = dict(confidence=confidence, method=method)
    if stat.n == 0:
        return Interval(0, nan, nan, nan, **base, note="no scored examples")
    if stat.n == 1:
        return Interval(1, nan, nan, value, **base, note="one example: its spread cannot be estimated")
    low, high, _, used, note = _bootstrap(stat.fn, stat.n, _width(stat), confidence=confidence,
                                          n_resamples=n_resamples, method=method, seed=seed)
    return Interval(stat.n, low, high, value, confidence, used, int(n_resamples), note)


def _align(a: RowStatistic, b: RowStatistic) -> tuple[int, np.ndarray, np.ndarray]:
    """Units of both systems in one index: (n, columns of a's units, columns of b's units)."""
    if a.open_units or b.open_units:
        if a.gold_pairs != b.gold_pairs:
            only_a, only_b = sorted(a.gold_pairs - b.gold_pairs), sorted(b.gold_pairs - a.gold_pairs)
            raise StatsError(f"the two systems were scored against different gold pairs ({len(only_a)} only in a, "
                             f"e.g. {only_a[:3]}; {len(only_b)} only in b, e.g. {only_b[:3]})",
                             fix="compare rows of the same task, language and split")
        keys = list(dict.fromkeys(a.keys + b.keys))
    else:
        ka, kb = set(a.keys), set(b.keys)
        if ka != kb or len(a.keys) != len(b.keys):
            only_a = [k[0] if isinstance(k, tuple) else k for k in a.keys if k not in kb]
            only_b = [k[0] if isinstance(k, tuple) else k for k in b.keys if k not in ka]
            raise StatsError(f"the two systems scored different examples: ids only in a {only_a[:5]} "
                             f"({len(only_a)} in all), only in b {only_b[:5]} ({len(only_b)})",
                             fix="a paired gain needs the rows of both systems on the same test examples "
                                 "(same task, language, split and --limit)")
        differ = [k for k in a.keys if a.golds.get(k) != b.golds.get(k)]
        if differ:
            raise StatsError(f"{len(differ)} examples have different gold answers in the two row sets, e.g. id "
                             f"{differ[0][0] if isinstance(differ[0], tuple) else differ[0]!r}",
                             fix="compare rows of the same task, language and split")
        keys = list(a.keys)
    col = {k: j for j, k in enumerate(keys)}
    return len(keys), np.array([col[k] for k in a.keys], int), np.array([col[k] for k in b.keys], int)


def paired_gain(format_name: str, metric: str, rows_a: Sequence[dict], rows_b: Sequence[dict],
                lang: str | None = None, confidence: float = 0.95, n_resamples: int = 1000,
                seed: int | None = 0, method: str = "percentile") -> Gain:
    """Gain of system b over system a (metric(b) - metric(a), points) on the same test examples.

    Rows are matched by id (and occurrence, for repeated ids); differing example sets or gold
    answers are a `StatsError` naming the ids. Each resample draws the same units for both
    systems (the paired bootstrap), so what both get right or wrong cancels. ``p``: module doc.
    """
    _check_ci(confidence, n_resamples, method)
    sa = compile_rows(format_name, metric, rows_a, lang)
    sb = compile_rows(format_name, metric, rows_b, lang)
    n, ca, cb = _align(sa, sb)
    va = metric_from_rows(format_name, metric, rows_a, lang)
    vb = metric_from_rows(format_name, metric, rows_b, lang)
    nan = math.nan
    base = dict(a=va, b=vb, confidence=confidence, method=method)
    if n == 0:
        return Gain(0, nan, nan, nan, nan, **base, note="no scored examples")
    if n == 1:
        return Gain(1, vb - va, nan, nan, nan, **base, note="one example: its spread cannot be estimated")

    def gain(W):
        return sb.fn(W[:, cb]) - sa.fn(W[:, ca])

    low, high, dist, used, note = _bootstrap(gain, n, max(_width(sa), _width(sb), n), confidence=confidence,
                                             n_resamples=n_resamples, method=method, seed=seed)
    k = dist.shape[0]
    p = min(1.0, 2 * min((np.sum(dist <= 0) + 1) / (k + 1), (np.sum(dist >= 0) + 1) / (k + 1)))
    return Gain(n, vb - va, low, high, float(p), va, vb, confidence, used, int(n_resamples), note)


# --------------------------------------------------------------------------- seeds and many cells
def seed_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean over seeds: mean +- t_{(1+c)/2, n-1} * s / sqrt(n)
    (`scipy.stats.t`). ``n`` counts the finite values; fewer than two give a NaN interval; equal
    values a point."""
    from scipy import stats

    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be in (0, 1), got {confidence!r}", fix="e.g. 0.95")
    v = np.asarray([math.nan if x is None else float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    base = dict(confidence=confidence, method="t")
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, **base, note="no values")
    mean = float(v.mean())
    if n == 1:
        return Interval(1, math.nan, math.nan, mean, **base, note="one seed: no spread to estimate")
    sem = float(v.std(ddof=1) / math.sqrt(n))
    if sem == 0:
        return Interval(n, mean, mean, mean, **base, note="all seeds agree: the interval is a point")
    low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=sem)
    return Interval(n, float(low), float(high), mean, **base)


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm") -> list[float]:
    """p-values adjusted for testing many cells at once, in input order.

    ``holm``: Holm's step-down (family-wise error): with p sorted ascending,
    ``p_adj(i) = max_{j <= i} min(1, (m - j) * p(j))`` (0-based j). ``bh``: Benjamini-Hochberg
    (false discovery rate), `scipy.stats.false_discovery_control`. NaN (a gain that could not be
    tested) stays NaN and does not count in m. A cell is significant when its adjusted p is below
    the level (and then its interval at the corrected level excludes 0: module doc).
    """
    if method not in ADJUST_METHODS:
        raise StatsError(f"unknown p-value adjustment {method!r}",
                         fix=f"valid: {', '.join(ADJUST_METHODS)} (Holm step-down, Benjamini-Hochberg)")
    p = np.asarray([math.nan if x is None else float(x) for x in pvalues], dtype=np.float64)
    ok = np.isfinite(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise StatsError(f"p-values must lie in [0, 1], got {p[ok][(p[ok] < 0) | (p[ok] > 1)][:3].tolist()}")
    out = np.full(p.shape, math.nan)
    q = p[ok]
    if q.size:
        if method == "bh":
            from scipy import stats

            adj = stats.false_discovery_control(q, method="bh")
        else:
            order = np.argsort(q, kind="stable")
            m = q.size
            steps = np.minimum(1.0, (m - np.arange(m)) * q[order])
            adj = np.empty(m)
            adj[order] = np.maximum.accumulate(steps)
        out[ok] = adj
    return [float(x) for x in out]
