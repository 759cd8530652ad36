"""From signals to a ranking: the past-results estimate, the unsupervised combination, the
learned ranker (LightGBM LambdaRank, as LangRank) and the calibration to predicted gains.

Rows
    One row per (candidate, target, language): the signals of :mod:`.signals` plus ``past``
    (below) and, for measured cells, the ``gain``.  A *query* is one (target, language); a
    ranking orders the candidates of one query.

``past``: the kernel estimate of a candidate's gain from measured cells
    The weighted mean of the candidate's measured gains on other queries: weight
    ``1 - d(language, language')`` (URIEL featural distance between the two languages, 1 for the
    same language; 0.5 when URIEL lacks one) times 1 for the same target and
    :data:`OTHER_TARGET` for another.  A query's own cells never count in its own row when
    ranking is scored or learned; a suggestion uses every measured cell (it is the evidence).

The unsupervised combination (``combined``; the fallback)
    Each signal is z-scored over the query's candidates (a missing value scores 0, i.e. average)
    and summed with fixed weights, :data:`COMBINED_WEIGHTS`: the measured past gains count most
    (2), then one unit per family of transfer signal, split inside the family: task similarity
    (TextEmb ``text_sim`` 0.5, weight deltas ``delta_sim`` 0.5), transferability on frozen
    features (``logme`` 0.5, ``hscore`` 0.5), the module's effect on alignment
    (``align_delta`` 1).  Language-level signals are the same for every candidate of a query, so
    they cannot reorder it: the combination leaves them out.  A signal's contribution is its
    weight times its z-score.

The learned ranker (``learned``)
    ``lightgbm.LGBMRanker(objective="lambdarank")`` on :data:`LEARN_FEATURES` (the language
    signals too: the trees can learn interactions such as "distant languages gain more from X"),
    relevance = the gain graded 0..4 within its query.  It needs the optional ``lightgbm``
    package and at least :data:`MIN_LEARN_QUERIES` training queries with
    :data:`MIN_LEARN_CELLS` cells; otherwise the combination is used and the notes say why.
    Contributions are LightGBM's per-feature SHAP values (``pred_contrib=True``), plus ``base``
    (the trees' expected value), so they add up to the score.

Predicted gain
    Scores are mapped to points by a least-squares line ``gain = a + b * score`` fitted on the
    training rows (their own scores, the query's cells left out of their ``past``); each
    contribution is multiplied by ``b`` too, so the contributions plus ``a`` add up to the
    prediction.  Without measured cells (or when ``b <= 0``: the score does not track the
    training gains) there is no predicted gain, only the order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .evidence import Cell

__all__ = ["COMBINED_WEIGHTS", "LEARN_FEATURES", "LanguageKernel", "Ranked", "rank_queries"]

OTHER_TARGET = 0.5
COMBINED_WEIGHTS = {"past": 2.0, "text_sim": 0.5, "delta_sim": 0.5, "logme": 0.5, "hscore": 0.5,
                    "align_delta": 1.0}
LEARN_FEATURES = ("past", "text_sim", "cov_sim", "delta_sim", "logme", "hscore", "align_delta",
                  "align", "syntactic", "genetic", "geographic", "featural")
MIN_LEARN_QUERIES = 8
MIN_LEARN_CELLS = 40
GRADES = 4


class LanguageKernel:
    """``1 - URIEL featural distance`` between two languages (cached); 0.5 when unknown."""

    def __init__(self, distance=None):
        self._d: dict[tuple[str, str], float] = {}
        self._distance = distance

    def __call__(self, a: str, b: str) -> float:
        if a == b:
            return 1.0
        key = (a, b) if a < b else (b, a)
        if key not in self._d:
            try:
                if self._distance is not None:
                    d = float(self._distance(a, b))
                else:
                    from adapters_xtl.studies.typology import distance

                    d = distance(a, b, "featural")
                self._d[key] = max(0.0, 1.0 - d)
            except Exception:  # noqa: BLE001 - an unknown code is only a weaker weight
                self._d[key] = 0.5
        return self._d[key]


def past_signal(cells: Iterable[Cell], candidate: str, target: str, language: str, kernel: LanguageKernel
                ) -> tuple[float, int]:
    """(kernel-weighted mean gain of ``candidate`` over ``cells``, number of cells behind it)."""
    num = den = 0.0
    n = 0
    for c in cells:
        if c.candidate != candidate:
            continue
        w = (1.0 if c.target == target else OTHER_TARGET) * kernel(language, c.language)
        if w <= 0:
            continue
        num += w * c.gain
        den += w
        n += 1
    return (num / den if den > 0 else math.nan), n


@dataclass
class Ranked:
    """One candidate of one query, as ranked."""

    candidate: str
    score: float
    rank: int = 0
    predicted_gain: float | None = None
    contributions: dict[str, float] = field(default_factory=dict)  # points when calibrated, else score units
    signals: dict[str, float] = field(default_factory=dict)
    evidence: int = 0  # measured cells behind `past`
    measured_gain: float | None = None


def _z(values: Sequence[float]) -> list[float]:
    x = np.asarray(values, dtype=float)
    ok = np.isfinite(x)
    if ok.sum() < 2:
        return [0.0] * len(values)
    sd = float(x[ok].std())
    if sd == 0:
        return [0.0] * len(values)
    mu = float(x[ok].mean())
    return [float((v - mu) / sd) if math.isfinite(v) else 0.0 for v in x]


def combined_scores(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, dict[str, float]]]:
    """The unsupervised combination over one query's rows: (score, contribution per signal)."""
    contrib = [dict() for _ in rows]
    for sig, w in COMBINED_WEIGHTS.items():
        for i, z in enumerate(_z([float(r.get(sig, math.nan)) for r in rows])):
            contrib[i][sig] = w * z
    return [(sum(c.values()), c) for c in contrib]


def _grades(gains: Sequence[float]) -> list[int]:
    lo, hi = min(gains), max(gains)
    if hi == lo:
        return [0] * len(gains)
    return [int(round(GRADES * (g - lo) / (hi - lo))) for g in gains]


class LearnedRanker:
    """LambdaRank over :data:`LEARN_FEATURES` (lightgbm)."""

    def __init__(self, seed: int = 0):
        import lightgbm

        self.model = lightgbm.LGBMRanker(objective="lambdarank", n_estimators=200, learning_rate=0.05, num_leaves=7,
                                         min_child_samples=5, random_state=seed, n_jobs=1, verbose=-1,
                                         deterministic=True, force_col_wise=True)

    @staticmethod
    def matrix(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.array([[float(r.get(f, math.nan)) for f in LEARN_FEATURES] for r in rows], dtype=float)

    def fit(self, queries: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]) -> "LearnedRanker":
        rows, groups, labels = [], [], []
        for q in sorted(queries):
            rs = queries[q]
            rows.extend(rs)
            groups.append(len(rs))
            labels.extend(_grades([r["gain"] for r in rs]))
        self.model.fit(self.matrix(rows), np.array(labels), group=np.array(groups))
        return self

    def scores(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, dict[str, float]]]:
        x = self.matrix(rows)
        contrib = self.model.predict(x, pred_contrib=True)
        out = []
        for row in contrib:
            parts = {f: float(v) for f, v in zip(LEARN_FEATURES, row[:-1]) if abs(v) > 0}
            parts["base"] = float(row[-1])  # the trees' expected value: the contributions add up to the score
            out.append((float(row.sum()), parts))
        return out


def lightgbm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lightgbm") is not None


def choose_method(method: str, train_queries: Mapping[tuple[str, str], Sequence[Mapping]]) -> tuple[str, list[str]]:
    """``learned`` or ``combined`` for ``method`` (auto | learned | combined), and why."""
    if method not in ("auto", "learned", "combined"):
        from adapters_xtl.errors import XtlError

        raise XtlError(f"unknown ranker {method!r}", where="--ranker", fix="auto, learned or combined")
    if method == "combined":
        return "combined", []
    n_q = len(train_queries)
    n_c = sum(len(v) for v in train_queries.values())
    why = None
    if not lightgbm_available():
        why = "lightgbm is not installed (pip install 'adapters_xtl[suggest]' or pip install lightgbm)"
    elif n_q < MIN_LEARN_QUERIES or n_c < MIN_LEARN_CELLS:
        why = (f"{n_c} measured cells in {n_q} queries (target x language) are too few for the learned ranker "
               f"(it needs {MIN_LEARN_CELLS} cells in {MIN_LEARN_QUERIES} queries)")
    if why is None:
        return "learned", []
    return "combined", [f"learned ranker not used: {why}; ranked by the unsupervised combination (docs/suggest.md)"]


def calibrate(pairs: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """(a, b) of ``gain = a + b * score`` by least squares, or None without a usable fit."""
    pts = [(s, g) for s, g in pairs if math.isfinite(s) and math.isfinite(g)]
    if len(pts) < 3:
        return None
    s = np.array([p[0] for p in pts])
    g = np.array([p[1] for p in pts])
    if float(s.std()) == 0:
        return None
    b, a = np.polyfit(s, g, 1)
    return float(a), float(b)


def _with_past(rows: Sequence[dict], cells: Sequence[Cell], kernel: LanguageKernel, *, leave_query_out: bool
               ) -> list[dict]:
    out = []
    for r in rows:
        use = [c for c in cells if not (leave_query_out and c.query == (r["target"], r["language"]))]
        past, n = past_signal(use, r["candidate"], r["target"], r["language"], kernel)
        out.append({**r, "past": past, "evidence": n})
    return out


def rank_queries(features: Mapping[tuple[str, str, str], Mapping[str, float]], queries: Sequence[tuple[str, str]],
                 candidates: Mapping[tuple[str, str], Sequence[str]], train: Sequence[Cell], *, method: str = "auto",
                 kernel: LanguageKernel | None = None, seed: int = 0) -> tuple[dict[tuple[str, str], list[Ranked]], dict]:
    """Rank ``candidates[q]`` for each query ``q`` from ``features[(candidate, target, language)]``,
    learning from (and calibrating on) the measured ``train`` cells.  Returns the rankings and
    ``{"method", "notes", "calibration", "train_cells", "train_queries"}``."""
    kernel = kernel or LanguageKernel()
    by_q: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in train:
        f = features.get((c.candidate, c.target, c.language))
        if f is not None:
            by_q[c.query].append({**f, "candidate": c.candidate, "target": c.target, "language": c.language,
                                  "gain": c.gain})
    train_q = {q: _with_past(rs, train, kernel, leave_query_out=True) for q, rs in by_q.items() if len(rs) >= 2}
    used, notes = choose_method(method, train_q)
    learner = None
    if used == "learned":
        learner = LearnedRanker(seed).fit(train_q)

    def score(rows):
        return learner.scores(rows) if learner is not None else combined_scores(rows)

    pairs = [(s, r["gain"]) for rs in train_q.values() for (s, _), r in zip(score(rs), rs)]
    cal = calibrate(pairs)
    if cal is not None and cal[1] <= 0:
        notes.append(f"the {used} score does not rise with the measured gains of the training cells (slope "
                     f"{cal[1]:+.3f}): no predicted gains, only the order")
        cal = None
    out: dict[tuple[str, str], list[Ranked]] = {}
    for q in queries:
        target, lang = q
        rows = [{**features.get((c, target, lang), {}), "candidate": c, "target": target, "language": lang}
                for c in candidates[q]]
        rows = _with_past(rows, train, kernel, leave_query_out=False)
        ranked = []
        for (s, parts), r in zip(score(rows), rows):
            item = Ranked(candidate=r["candidate"], score=s, evidence=r["evidence"],
                          signals={k: v for k, v in r.items() if k not in ("candidate", "target", "language",
                                                                           "evidence", "gain")})
            if cal is not None:
                item.predicted_gain = cal[0] + cal[1] * s
                item.contributions = {k: cal[1] * v for k, v in parts.items()}
            else:
                item.contributions = dict(parts)
            ranked.append(item)
        ranked.sort(key=lambda x: (-x.score if math.isfinite(x.score) else math.inf, x.candidate))
        for i, item in enumerate(ranked):
            item.rank = i + 1
        out[q] = ranked
    info = {"method": used, "notes": notes, "calibration": cal, "train_queries": len(train_q),
            "train_cells": sum(len(v) for v in train_q.values())}
    return out, info
