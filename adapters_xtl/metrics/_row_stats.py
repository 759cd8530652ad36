"""Per-example prediction rows -> resampling units and a metric computed from unit weights.

`formats.*.score(..., keep=rows)` keeps one row per scored example (formats/base.py). Every metric
a format reports is a function of per-unit *sufficient statistics* (correct or not; tokens right
out of tokens; entities predicted, gold and correct; EM and F1 of a question; ...), so a
bootstrap resample, which draws each unit some number of times, is the same metric over the units
weighted by those counts. `compile_rows` returns the units and that weighted metric, vectorised
over many resamples at once: `fn(W)` with W a [resamples, units] array of counts gives one metric
value per row of W, in the unit the format reports (percent). With W all ones it is the reported
score (tests check both against `metric_from_rows`, which calls the official metric functions).

Units, per format:
  classification, multiple_choice   one example (row)
  tagging                           one sentence; sentences without gold tags are not scored
                                    (as `Tagging.score`) and are not units
  span_qa                           one question; questions without a gold answer are left out
                                    (as `SpanQA.score_predictions`)
  retrieval, pairs mode             one sentence pair: its xx2en and en2xx rows together
  retrieval, mining mode (BUCC)     one source sentence: its mined candidates and its gold pairs

Keys pair units across two systems (`paired_gain`): an example's `id` and which occurrence of that
id it is (so a test file with repeated ids still pairs row by row), the pair index in pairs mode,
the source id in mining mode.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

FORMAT_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "multiple_choice": ("accuracy",),
    "tagging": ("accuracy", "f1_xtreme", "f1", "precision", "recall"),
    "span_qa": ("exact_match", "f1", "qa_score"),
    "retrieval": ("accuracy", "accuracy_xx2en", "accuracy_en2xx", "f1", "precision", "recall"),
}
PAIRS_METRICS = ("accuracy", "accuracy_xx2en", "accuracy_en2xx")
MINING_METRICS = ("f1", "precision", "recall")


@dataclass
class RowStatistic:
    """Resampling units of one system's rows and the metric as a function of unit weights.

    ``fn(W)``: W is [resamples, len(keys)] counts, the result one metric value per resample.
    ``golds`` (key -> gold) lets a paired comparison check that both systems scored the same
    examples; ``open_units`` (mining mode) means a unit absent from one system's rows simply has
    nothing mined there, so two systems' key sets may differ (their gold must not).
    """

    keys: list[Hashable]
    fn: Callable[[np.ndarray], np.ndarray]
    golds: dict = field(default_factory=dict)
    open_units: bool = False
    gold_pairs: frozenset = frozenset()
    width: int = 0  # columns one resample's computation touches (candidates, for mining)

    @property
    def n(self) -> int:
        return len(self.keys)

    def value(self) -> float:
        return float(self.fn(np.ones((1, self.n)))[0]) if self.n else math.nan


def check_metric(format_name: str, metric: str) -> None:
    if format_name not in FORMAT_METRICS:
        raise ValueError(f"unknown format {format_name!r}; valid: {', '.join(FORMAT_METRICS)}")
    if metric not in FORMAT_METRICS[format_name]:
        raise ValueError(f"format {format_name!r} reports no metric {metric!r}; valid: "
                         f"{', '.join(FORMAT_METRICS[format_name])}")


def _keys(rows: Sequence[dict]) -> list[tuple]:
    """(id, k): the k-th row carrying that id (0 for a unique id)."""
    seen: dict = {}
    out = []
    for r in rows:
        rid = _hashable(r.get("id"))
        k = seen.get(rid, 0)
        seen[rid] = k + 1
        out.append((rid, k))
    return out


def _hashable(x):
    if isinstance(x, list):
        return tuple(_hashable(v) for v in x)
    return x


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _share(values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """100 x weighted mean of a per-unit value."""
    v = np.asarray(values, dtype=np.float64)
    return lambda W: 100.0 * (W @ v) / W.sum(axis=1)


# --------------------------------------------------------------------------- per format
def _classification(metric: str, rows: Sequence[dict]) -> RowStatistic:
    gold = [_hashable(r["gold"]) for r in rows]
    pred = [_hashable(r["prediction"]) for r in rows]
    keys = _keys(rows)
    golds = dict(zip(keys, gold))
    if metric == "accuracy":
        return RowStatistic(keys, _share(np.array([g == p for g, p in zip(gold, pred)])), golds)
    classes = list(dict.fromkeys(gold + pred))
    index = {c: j for j, c in enumerate(classes)}
    g = np.array([index[x] for x in gold])
    p = np.array([index[x] for x in pred])
    onehot_g = np.eye(len(classes))[g]
    onehot_p = np.eye(len(classes))[p]
    tp_m = onehot_g * onehot_p
    fp_m = onehot_p - tp_m
    fn_m = onehot_g - tp_m

    def macro(W):
        tp, fp, fn = W @ tp_m, W @ fp_m, W @ fn_m
        denom = 2 * tp + fp + fn
        present = denom > 0  # sklearn's default: the classes in gold or prediction of this sample
        f1 = _ratio(2 * tp, denom)
        return 100.0 * (f1 * present).sum(axis=1) / present.sum(axis=1)

    return RowStatistic(keys, macro, golds)


def _entity_counts(pred: list[str], gold: list[str]) -> tuple[int, int, int]:
    """(predicted, gold, correct) entities of one sentence as seqeval's default mode counts them:
    seqeval joins sentences with an `O` between them, so entities never cross sentences and the
    corpus counts are the sums of these."""
    from seqeval.metrics.sequence_labeling import get_entities

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # raw UPOS tags "seem not to be NE tags"
        ep, eg = set(get_entities(list(pred))), set(get_entities(list(gold)))
    return len(ep), len(eg), len(ep & eg)


def scored_tagging_rows(rows: Sequence[dict]) -> list[dict]:
    rows = [r for r in rows if r["gold"]]  # empty sentences score nothing (Tagging.score)
    for r in rows:
        if len(r["prediction"]) != len(r["gold"]):
            raise ValueError(f"row {r.get('id')!r} has {len(r['prediction'])} predicted tags for "
                             f"{len(r['gold'])} gold tags")
    return rows


def _tagging(metric: str, rows: Sequence[dict]) -> RowStatistic:
    rows = scored_tagging_rows(rows)
    keys = _keys(rows)
    golds = {k: tuple(r["gold"]) for k, r in zip(keys, rows)}
    if metric == "accuracy":
        right = np.array([sum(a == b for a, b in zip(r["prediction"], r["gold"])) for r in rows], dtype=float)
        total = np.array([len(r["gold"]) for r in rows], dtype=float)
        return RowStatistic(keys, lambda W: 100.0 * (W @ right) / (W @ total), golds)
    counts = np.array([_entity_counts(r["prediction"], r["gold"]) for r in rows], dtype=float).reshape(-1, 3)

    def prf(W):
        n_pred, n_gold, n_ok = (W @ counts).T
        if metric == "precision":
            return 100.0 * _ratio(n_ok, n_pred)
        if metric == "recall":
            return 100.0 * _ratio(n_ok, n_gold)
        return 100.0 * _ratio(2 * n_ok, n_pred + n_gold)  # = 2PR/(P+R); 0 without a correct entity

    return RowStatistic(keys, prf, golds)


def qa_em_f1(rows: Sequence[dict], lang: str | None) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Rows with a gold answer and each one's EM and F1 (fractions): SQuAD v1.1's script, or
    MLQA's with `lang` (an MLQA language code) when given."""
    from . import mlqa_em, mlqa_f1, squad_em, squad_f1

    rows = [r for r in rows if r["gold"]]
    if lang is None:
        em = [squad_em(r["prediction"] or "", r["gold"]) for r in rows]
        f1 = [squad_f1(r["prediction"] or "", r["gold"]) for r in rows]
    else:
        em = [mlqa_em(r["prediction"] or "", r["gold"], lang) for r in rows]
        f1 = [mlqa_f1(r["prediction"] or "", r["gold"], lang) for r in rows]
    return rows, np.array(em, dtype=float), np.array(f1, dtype=float)


def _span_qa(metric: str, rows: Sequence[dict], lang: str | None) -> RowStatistic:
    rows, em, f1 = qa_em_f1(rows, lang)
    keys = _keys(rows)
    golds = {k: tuple(r["gold"]) for k, r in zip(keys, rows)}
    values = {"exact_match": em, "f1": f1, "qa_score": (em + f1) / 2}[metric]
    return RowStatistic(keys, _share(values), golds)


def pair_units(rows: Sequence[dict]) -> tuple[list, np.ndarray, np.ndarray]:
    """Pairs mode: (pair ids, xx2en correct, en2xx correct), one entry per sentence pair."""
    by: dict = {}
    for r in rows:
        d = r.get("direction")
        if d not in ("xx2en", "en2xx"):
            raise ValueError(f"retrieval row {r.get('id')!r} has direction {d!r}; pairs-mode rows have "
                             "'xx2en' or 'en2xx' (mining-mode rows have none: use f1, precision or recall)")
        slot = by.setdefault(_hashable(r["id"]), {})
        if d in slot:
            raise ValueError(f"retrieval pair {r['id']!r} has two {d} rows")
        slot[d] = r["gold"] == r["prediction"]
    lone = [k for k, s in by.items() if len(s) != 2]
    if lone:
        raise ValueError(f"retrieval pairs {lone[:5]} have a row for one direction only; each pair needs both")
    keys = list(by)
    return keys, np.array([by[k]["xx2en"] for k in keys], float), np.array([by[k]["en2xx"] for k in keys], float)


def _pairs(metric: str, rows: Sequence[dict]) -> RowStatistic:
    keys, cx, ce = pair_units(rows)
    golds = {k: k for k in keys}
    if metric == "accuracy_xx2en":
        return RowStatistic(keys, _share(cx), golds)
    if metric == "accuracy_en2xx":
        return RowStatistic(keys, _share(ce), golds)
    return RowStatistic(keys, _share((cx + ce) / 2), golds)  # the mean of both directions


def mining_parts(rows: Sequence[dict]) -> tuple[dict, set]:
    """Mining mode: ({(src, tgt): score} of the mined pairs in row order, gold pairs)."""
    cands: dict = {}
    gold: set = set()
    for r in rows:
        if "direction" in r:
            raise ValueError("these are pairs-mode retrieval rows (they have a direction); "
                             "their metrics are accuracy, accuracy_xx2en and accuracy_en2xx")
        s = str(r["id"])
        gold.update((s, str(t)) for t in r["gold"] or [])
        if r.get("prediction") is not None:
            key = (s, str(r["prediction"]))
            cands[key] = max(float(r["score"]), cands.get(key, -math.inf))
    return cands, gold


def _mining(metric: str, rows: Sequence[dict]) -> RowStatistic:
    cands, gold = mining_parts(rows)
    keys = list(dict.fromkeys([s for s, _ in gold] + [s for s, _ in cands]))
    unit = {k: j for j, k in enumerate(keys)}
    n_gold = np.zeros(len(keys))
    for s, _ in gold:
        n_gold[unit[s]] += 1
    pairs = list(cands)
    score = np.array([cands[p] for p in pairs], dtype=float)
    order = np.argsort(-score, kind="stable")  # bucc_f1's sort: by score, ties in row order
    score = score[order]
    correct = np.array([pairs[i] in gold for i in order], dtype=float)
    owner = np.array([unit[pairs[i][0]] for i in order], dtype=int)
    pos = {"precision": 0, "recall": 1, "f1": 2}[metric]
    fn = lambda W: weighted_bucc(W, score, correct, owner, n_gold)[pos]  # noqa: E731
    return RowStatistic(keys, fn, open_units=True, gold_pairs=frozenset(gold), width=len(pairs))


def weighted_bucc(W: np.ndarray, score: np.ndarray, correct: np.ndarray, owner: np.ndarray,
                  n_gold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`metrics.bucc_f1` (P, R, F1 in percent) of every resample at once: candidates sorted by
    score (best first), whether each is gold, the unit owning it, and gold pairs per unit.

    A unit drawn k times contributes k copies of its candidates and gold pairs. The threshold is
    re-optimised on each resample, as `bucc_f1` does on the evaluated set: the first cut with the
    best F1, the midpoint between its score and the next present candidate's (its own score when
    it is the last), then P/R/F1 of every candidate scoring at least that. (Inside a block of
    copies F1 only rises, for correct ones, or only falls, so the best cut is at a block's end.)
    """
    B, m = W.shape[0], score.shape[0]
    ngold = W @ n_gold
    if m == 0:
        z = np.zeros(B)
        return z, z, z
    w = W[:, owner]
    ne = np.cumsum(w, axis=1)
    nc = np.cumsum(w * correct, axis=1)
    f1 = _ratio(2 * nc, ne + ngold[:, None])
    best = f1.argmax(axis=1)  # first maximum: bucc_f1 moves the threshold on strict gains only
    found = f1[np.arange(B), best] > 0
    present = w > 0
    nxt = np.where(present, np.arange(m), m)
    nxt = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]  # next present index at or after j
    after = np.where(best + 1 < m, nxt[np.arange(B), np.minimum(best + 1, m - 1)], m)
    here = score[best]
    threshold = np.where(after < m, (here + score[np.minimum(after, m - 1)]) / 2, here)
    threshold = np.where(found, threshold, 0.0)
    take = w * (score[None, :] >= threshold[:, None])
    n_ext, n_ok = take.sum(axis=1), (take * correct).sum(axis=1)
    precision, recall = _ratio(n_ok, n_ext), _ratio(n_ok, ngold)
    f = _ratio(2 * precision * recall, precision + recall)
    return 100.0 * precision, 100.0 * recall, 100.0 * f


def compile_rows(format_name: str, metric: str, rows: Sequence[dict], lang: str | None = None) -> RowStatistic:
    """The units of `rows` and `metric` as a function of their weights (module doc)."""
    check_metric(format_name, metric)
    rows = list(rows)
    if format_name in ("classification", "multiple_choice"):
        return _classification(metric, rows)
    if format_name == "tagging":
        return _tagging(metric, rows)
    if format_name == "span_qa":
        return _span_qa(metric, rows, lang)
    if metric in PAIRS_METRICS:
        return _pairs(metric, rows)
    return _mining(metric, rows)
