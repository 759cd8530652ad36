"""Honest evaluation of the suggestions: rank held-out measured cells, compare with baselines.

Protocols
    ``target``: leave one target out: every query (target, language) of that target is ranked
    by a ranker that learned from, and whose past-results signal saw, only the other targets'
    cells.  ``language``: leave one language out, the same with languages (every target's
    cells in that language are held out together).

Methods
    ``suggest``: what ``xtl suggest`` would do in that fold (learned ranker when it can, else the
    unsupervised combination: the notes say which, fold by fold); ``combined``: the
    unsupervised combination alone; and the baselines: ``best-on-average`` (candidates by their
    mean gain over the fold's training cells), ``MNLI/SQuAD first`` (Phang et al. 2020's finding:
    the NLI intermediates first, then extractive QA, the rest tied) and ``random`` (the exact
    expectation over random orders, :func:`.ranking.random_expectation`).

Verdicts
    Per protocol, the suggestion's Regret@1 and NDCG@3 are compared with each baseline's over the
    held-out queries with a paired sign-flip permutation test (:func:`studies.tables.sign_flip_p`)
    and a bootstrap CI of the mean difference; fewer than :data:`MIN_QUERIES` queries is said to
    be too few to tell, and so is a difference whose p is 0.05 or more.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .combine import LanguageKernel, combined_scores, rank_queries
from .evidence import Cell
from .ranking import METRICS, query_metrics, random_expectation

__all__ = ["BASELINES", "MIN_QUERIES", "evaluate_cells", "paper_prior"]

MIN_QUERIES = 10
BASELINES = ("best-on-average", "MNLI/SQuAD first", "random")
PROTOCOLS = {"target": 0, "language": 1}


def paper_prior(candidate: str) -> float:
    """2 for an NLI task (its labels include ``entailment``), 1 for extractive QA, else 0."""
    if candidate.startswith("mt:"):
        return 0.0
    try:
        from adapters_xtl.tasks import get_task

        spec = get_task(candidate)
    except Exception:  # noqa: BLE001 - a task this catalog lacks is just "other"
        return 2.0 if "nli" in candidate.lower() else 0.0
    if spec.labels and "entailment" in spec.labels:
        return 2.0
    return 1.0 if spec.format == "span_qa" else 0.0


def _queries(cells: Sequence[Cell]) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for c in cells:
        out[c.query][c.candidate] = c.gain
    return dict(out)


def _mean(xs) -> float:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(v) if v else math.nan


def evaluate_cells(cells: Sequence[Cell], features: Mapping[tuple[str, str, str], Mapping[str, float]], *,
                   method: str = "auto", protocols: Sequence[str] = ("target", "language"),
                   kernel: LanguageKernel | None = None, prior: Callable[[str], float] = paper_prior,
                   min_candidates: int = 2, seed: int = 0) -> dict[str, Any]:
    """Leave-one-out evaluation over measured ``cells`` (see the module docstring)."""
    kernel = kernel or LanguageKernel()
    queries = {q: g for q, g in _queries(cells).items() if len(g) >= min_candidates}
    out: dict[str, Any] = {"queries": len(queries), "cells": sum(len(g) for g in queries.values()),
                           "candidates": sorted({c for g in queries.values() for c in g}), "protocols": {}}
    for proto in protocols:
        idx = PROTOCOLS[proto]
        groups = sorted({q[idx] for q in queries})
        per_method: dict[str, list[dict[str, float]]] = defaultdict(list)
        folds, notes = [], []
        for held in groups:
            test = sorted(q for q in queries if q[idx] == held)
            train = [c for c in cells if c.query[idx] != held]
            if not train:
                notes.append(f"{proto} {held}: no other {proto} to learn from; ranked without past results")
            cands = {q: sorted(queries[q]) for q in test}
            ranked, info = rank_queries(features, test, cands, train, method=method, kernel=kernel, seed=seed)
            folds.append({"held_out": held, "queries": len(test), "method": info["method"],
                          "train_cells": info["train_cells"], "notes": info["notes"]})
            avg: dict[str, list[float]] = defaultdict(list)
            for c in train:
                avg[c.candidate].append(c.gain)
            for q in test:
                gains = queries[q]
                scores = {r.candidate: r.score for r in ranked[q]}
                per_method["suggest"].append({**query_metrics(gains, scores), "query": q})
                if info["method"] == "learned":
                    rows = [{**features.get((c, *q), {}), "past": r.signals.get("past", math.nan)}
                            for c, r in ((r.candidate, r) for r in ranked[q])]
                    comb = {r.candidate: s for r, (s, _) in zip(ranked[q], combined_scores(rows))}
                else:
                    comb = scores
                per_method["combined"].append({**query_metrics(gains, comb), "query": q})
                best_avg = {c: _mean(avg.get(c, [])) for c in gains}
                best_avg = {c: (v if math.isfinite(v) else -math.inf) for c, v in best_avg.items()}
                per_method["best-on-average"].append({**query_metrics(gains, best_avg), "query": q})
                per_method["MNLI/SQuAD first"].append({**query_metrics(gains, {c: prior(c) for c in gains}),
                                                       "query": q})
                per_method["random"].append({**random_expectation(gains), "query": q})
        table = {m: {k: _mean(r[k] for r in rows) for k in METRICS} | {"queries": len(rows)}
                 for m, rows in per_method.items()}
        n = len(per_method["suggest"])
        out["protocols"][proto] = {
            "folds": folds, "table": table, "notes": notes, "n_queries": n, "verdicts": _verdicts(per_method, n),
            "per_query": {m: [{**{k: v for k, v in r.items() if k != "query"}, "target": r["query"][0],
                               "language": r["query"][1]} for r in rows] for m, rows in per_method.items()}}
    return out


def _verdicts(per_method: Mapping[str, list[dict]], n: int) -> list[str]:
    from adapters_xtl.studies.tables import mean_ci, sign_flip_p

    if n < MIN_QUERIES:
        return [f"{n} held-out queries (target x language) are too few to tell the methods apart "
                f"(at least {MIN_QUERIES} are needed for a paired test); the table only describes these grids"]
    out = []
    sug = per_method["suggest"]
    for base in BASELINES:
        rows = per_method[base]
        for metric, better in (("regret@1", -1), ("ndcg@3", 1)):
            diffs = [a[metric] - b[metric] for a, b in zip(sug, rows)
                     if math.isfinite(a[metric]) and math.isfinite(b[metric])]
            if len(diffs) < MIN_QUERIES:
                out.append(f"{metric} vs {base}: {len(diffs)} comparable queries, too few to tell")
                continue
            ci = mean_ci(diffs)
            p = sign_flip_p(diffs)
            if p >= 0.05:
                out.append(f"{metric}: suggest cannot be told apart from {base} (mean difference {ci.text()}, "
                           f"sign-flip p = {p:.3f}, {len(diffs)} queries)")
            else:
                word = "better" if ci.mean * better > 0 else "worse"
                out.append(f"{metric}: suggest is {word} than {base} (mean difference {ci.text()}, "
                           f"sign-flip p = {p:.3f}, {len(diffs)} queries)")
    return out
