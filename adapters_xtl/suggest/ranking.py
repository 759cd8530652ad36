"""How good a ranking of intermediate tasks is, against the gains measured for one query (one
target and language): Regret@k, NDCG@k, Spearman, and what a random ranking scores on average.

* Regret@k: the best measured gain minus the best gain among the top ``k`` suggested, in the
  score's points: what a user who trains the ``k`` suggestions and keeps the best loses against
  an oracle.  0 is perfect.
* NDCG@k: discounted cumulative gain of the top ``k`` over the ideal order's, with relevance
  ``gain - min(gains)`` (measured gains can be negative; the worst candidate has relevance 0).
  1 is perfect; undefined (NaN) when every candidate gained the same.
* Spearman: ``scipy.stats.spearmanr`` between the suggested scores and the measured gains over
  all candidates; NaN when either side is constant.

Ties in the suggested score are broken by candidate name, so a ranking is deterministic.
The random baseline is its exact expectation over all orders (:func:`random_expectation`), not
a sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from math import comb

import numpy as np

__all__ = ["METRICS", "ndcg_at_k", "order", "query_metrics", "random_expectation", "regret_at_k", "spearman"]

METRICS = ("regret@1", "regret@3", "ndcg@3", "spearman")


def order(scores: Mapping[str, float]) -> list[str]:
    """Candidates from the highest score down (NaN last; ties by name)."""
    def key(c: str):
        s = scores[c]
        bad = s is None or not math.isfinite(float(s))
        return (bad, 0.0 if bad else -float(s), c)

    return sorted(scores, key=key)


def _check(gains: Mapping[str, float], scores: Mapping[str, float]) -> None:
    missing = set(gains) - set(scores)
    if missing:
        raise ValueError(f"no score for measured candidate(s) {sorted(missing)}")
    if not gains:
        raise ValueError("no measured candidates")


def regret_at_k(gains: Mapping[str, float], scores: Mapping[str, float], k: int) -> float:
    """Best measured gain minus the best measured gain among the top ``k`` by score (only the
    measured candidates are ranked)."""
    _check(gains, scores)
    ranked = order({c: scores[c] for c in gains})
    return float(max(gains.values()) - max(gains[c] for c in ranked[:k]))


def _dcg(rels: Sequence[float]) -> float:
    return float(sum(r / math.log2(i + 2) for i, r in enumerate(rels)))


def ndcg_at_k(gains: Mapping[str, float], scores: Mapping[str, float], k: int) -> float:
    """NDCG@k with relevance ``gain - min(gain)``; NaN when all gains are equal."""
    _check(gains, scores)
    low = min(gains.values())
    rel = {c: g - low for c, g in gains.items()}
    ideal = _dcg(sorted(rel.values(), reverse=True)[:k])
    if ideal <= 0:
        return math.nan
    ranked = order({c: scores[c] for c in gains})
    return _dcg([rel[c] for c in ranked[:k]]) / ideal


def spearman(gains: Mapping[str, float], scores: Mapping[str, float]) -> float:
    """Spearman's rho between scores and gains over the measured candidates (NaN if undefined)."""
    from scipy.stats import spearmanr

    _check(gains, scores)
    cands = sorted(gains)
    x = np.array([scores[c] for c in cands], dtype=float)
    y = np.array([gains[c] for c in cands], dtype=float)
    ok = np.isfinite(x)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


def query_metrics(gains: Mapping[str, float], scores: Mapping[str, float]) -> dict[str, float]:
    """All of :data:`METRICS` for one query."""
    return {"regret@1": regret_at_k(gains, scores, 1), "regret@3": regret_at_k(gains, scores, 3),
            "ndcg@3": ndcg_at_k(gains, scores, 3), "spearman": spearman(gains, scores)}


def random_expectation(gains: Mapping[str, float]) -> dict[str, float]:
    """The expected value of each metric over uniformly random orders of the candidates, exactly.

    Regret@k: the top-k's best is the i-th smallest of n gains with probability
    ``C(i-1, k-1) / C(n, k)``.  NDCG@k: every position holds the mean relevance on average, so
    ``E[DCG@k] = mean(rel) * sum 1/log2(p+1)``.  Spearman: 0 by symmetry.
    """
    if not gains:
        raise ValueError("no measured candidates")
    vals = sorted(float(g) for g in gains.values())
    n = len(vals)
    out = {}
    for k in (1, 3):
        kk = min(k, n)
        exp_best = sum(vals[i - 1] * comb(i - 1, kk - 1) for i in range(kk, n + 1)) / comb(n, kk)
        out[f"regret@{k}"] = vals[-1] - exp_best
    rel = [v - vals[0] for v in vals]
    ideal = _dcg(sorted(rel, reverse=True)[:3])
    positions = min(3, n)
    out["ndcg@3"] = (float(np.mean(rel)) * sum(1 / math.log2(p + 2) for p in range(positions)) / ideal
                     if ideal > 0 else math.nan)
    out["spearman"] = 0.0 if n >= 3 and vals[-1] > vals[0] else math.nan
    return out
