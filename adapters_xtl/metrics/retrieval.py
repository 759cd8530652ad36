"""Retrieval metrics: Tatoeba nearest-neighbour accuracy and BUCC margin-based mining (XTREME)."""

from __future__ import annotations

import functools
import re
import string
import sys
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ._checks import _as_list, _as_matrix, _check_tag_seqs, _l2_normalize, _same_length  # noqa: F401


# --------------------------------------------------------------------------- retrieval


def _cosine(a: Any, b: Any, name_a: str, name_b: str) -> np.ndarray:
    x, y = _as_matrix(a, name_a), _as_matrix(b, name_b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{name_a} has dimension {x.shape[1]} but {name_b} has {y.shape[1]}; they must match"
        )
    return _l2_normalize(x) @ _l2_normalize(y).T


def _nn_accuracy(sim: np.ndarray) -> float:
    # np.argmax returns the lowest index among tied maxima, so row i is right iff the gold strictly
    # beats every other candidate or ties only with higher-indexed ones: the conservative rule
    # (a tie with an earlier wrong row counts as a miss), and deterministic.
    return float(np.mean(np.argmax(sim, axis=1) == np.arange(sim.shape[0])))


def retrieval_accuracy(src_emb: Any, tgt_emb: Any) -> float:
    """Tatoeba-style accuracy: for each src row, is its cosine nearest tgt row the same index?

    Row i of ``src_emb`` is the translation of row i of ``tgt_emb``, so both need the same
    number of rows.  XTREME searches with faiss ``IndexFlatL2`` on L2-normalised vectors, which
    ranks exactly as cosine; we use exact cosine and break ties towards the lowest index (faiss
    leaves tie order unspecified).  Zero vectors are left at zero, as ``faiss.normalize_L2`` does.
    Note XTREME's Tatoeba number queries with the *English* side (``similarity_search(x, y)``
    indexes x = other language, searches y = English): with src = xx, tgt = en that is the
    ``tgt2src`` entry of ``retrieval_accuracy_both``.
    """
    x, y = _as_matrix(src_emb, "src_emb"), _as_matrix(tgt_emb, "tgt_emb")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"src_emb has {x.shape[0]} rows but tgt_emb has {y.shape[0]}; row i must pair with row i"
        )
    return _nn_accuracy(_cosine(x, y, "src_emb", "tgt_emb"))


def retrieval_accuracy_both(a: Any, b: Any) -> dict[str, float]:
    """Both search directions, since they differ and papers report either (see above)."""
    x, y = _as_matrix(a, "a"), _as_matrix(b, "b")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"a has {x.shape[0]} rows but b has {y.shape[0]}; row i must pair with row i")
    sim = _cosine(x, y, "a", "b")
    return {"src2tgt": _nn_accuracy(sim), "tgt2src": _nn_accuracy(sim.T)}


def _knn(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row, best first; a stable sort puts the lower index first among equal sims."""
    ind = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, ind, axis=1), ind


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def margin_scores(x: Any, y: Any, k: int = 4) -> np.ndarray:
    """Ratio-margin score of every (x_i, y_j) pair (Artetxe & Schwenk 2019), shape [len(x), len(y)].

        cos(x, y) / ( sum_{z in NN_k(x)} cos(x, z) / 2k + sum_{z in NN_k(y)} cos(y, z) / 2k )

    Plain cosine favours "hub" sentences close to everything; dividing by the neighbourhood
    density removes that.  As in LASER / XTREME ``mine_bitext``, the neighbourhood of an x is
    searched among the ys (and vice versa) and ``k`` is capped at the other side's size.
    Where both neighbourhoods average to 0 (e.g. orthogonal or zero vectors) the ratio is 0/0 and
    left as NaN rather than invented; ``mine_pairs`` never mines such a pair.
    """
    k = _check_k(k)
    sim = _cosine(x, y, "x", "y")
    fwd_mean = _knn(sim, min(k, sim.shape[1]))[0].mean(axis=1)
    bwd_mean = _knn(sim.T, min(k, sim.shape[0]))[0].mean(axis=1)
    denom = (fwd_mean[:, None] + bwd_mean[None, :]) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return sim / denom


def mine_pairs(src_emb: Any, tgt_emb: Any, k: int = 4) -> list[tuple[int, int, float]]:
    """Candidate bitext pairs ``(src_index, tgt_index, margin_score)``, best score first.

    LASER ``mine_bitext`` with XTREME's BUCC settings (mode='mine', retrieval='max',
    margin='ratio', threshold=0): each src picks, among its k nearest tgts, the one with the
    best margin (forward) and each tgt likewise among its k nearest srcs (backward); the union is
    sorted by score and taken greedily, skipping any pair whose src or tgt was already used;
    only scores > 0 are kept.  Departures, both about ties only: the sort is stable (np.argsort's
    default quicksort is not, so the script's tie order is arbitrary) and kNN ties go to the lower
    index.  Deduplicating identical sentence texts (``text_load_unify``) happens before
    embedding, and mapping the mined texts back to ids afterwards, dropping every candidate whose
    text occurs on several lines of its side (``read_sent2id``), is the caller's job too
    (``formats.retrieval.candidate_ids``).  Feed the result to ``bucc_f1``.
    """
    k = _check_k(k)
    sim = _cosine(src_emb, tgt_emb, "src_emb", "tgt_emb")
    n_src, n_tgt = sim.shape
    fwd_sim, fwd_ind = _knn(sim, min(k, n_tgt))
    bwd_sim, bwd_ind = _knn(sim.T, min(k, n_src))
    fwd_mean, bwd_mean = fwd_sim.mean(axis=1), bwd_sim.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        fwd_scores = fwd_sim / ((fwd_mean[:, None] + bwd_mean[fwd_ind]) / 2)
        bwd_scores = bwd_sim / ((bwd_mean[:, None] + fwd_mean[bwd_ind]) / 2)
    fwd_scores = np.nan_to_num(fwd_scores, nan=-np.inf)  # all-zero embeddings: never mined
    bwd_scores = np.nan_to_num(bwd_scores, nan=-np.inf)
    fwd_best = fwd_ind[np.arange(n_src), fwd_scores.argmax(axis=1)]
    bwd_best = bwd_ind[np.arange(n_tgt), bwd_scores.argmax(axis=1)]
    src_idx = np.concatenate((np.arange(n_src), bwd_best))
    tgt_idx = np.concatenate((fwd_best, np.arange(n_tgt)))
    scores = np.concatenate((fwd_scores.max(axis=1), bwd_scores.max(axis=1)))
    seen_src: set[int] = set()
    seen_tgt: set[int] = set()
    out: list[tuple[int, int, float]] = []
    for i in np.argsort(-scores, kind="stable"):
        s, t = int(src_idx[i]), int(tgt_idx[i])
        if s not in seen_src and t not in seen_tgt:
            seen_src.add(s)
            seen_tgt.add(t)
            if scores[i] > 0:
                out.append((s, t, float(scores[i])))
    return out


def bucc_f1(candidates_with_scores: Any, gold_pairs: Iterable) -> dict[str, float]:
    """BUCC P/R/F1 (percent) at the F1-optimal threshold, as XTREME ``bucc_optimize`` + ``bucc_eval``.

    ``candidates_with_scores`` is a dict ``{(src_id, tgt_id): score}`` or an iterable of
    ``(src_id, tgt_id, score)`` (e.g. ``mine_pairs``' output); a repeated pair keeps its max
    score (``read_candidate2score``).  Ids are compared as strings, as the script compares
    ``"src\\ttgt"`` lines, so ``(3, 7)`` matches ``("3", "7")``.

    The sweep: sort by score, descending (ties keep input order: Python's stable sort), extract
    one more candidate at a time, and whenever F1 improves strictly set the threshold to the
    midpoint between this score and the next.  Then, as ``bucc_eval``, extract every candidate
    with ``score >= threshold`` and report P/R/F1 of *that* set, which can differ from the
    sweep's best when scores tie at the cut.  If no candidate is correct, the threshold stays 0.
    Departure: when the best cut is after the last candidate, the script crashes (IndexError
    on ``items[i + 1]``); we use that last score as the threshold, which extracts everything.

    The threshold is optimised against ``gold_pairs`` themselves, i.e. on the evaluated set.  So
    is XTREME's: ``run_retrieval.py`` passes each split's gold file to ``bucc_eval``, which
    re-optimises whenever it has one (a given threshold is used only without gold), for the test
    split as for dev.  Gold pairs that no candidate can match (e.g. naming a sentence dropped as
    repeated) still count in recall, as the script's gold set keeps them.
    """
    if isinstance(candidates_with_scores, Mapping):
        triples = [(*pair, score) for pair, score in candidates_with_scores.items()]
    else:
        triples = _as_list(candidates_with_scores, "candidates_with_scores")
    cand: dict[tuple[str, str], float] = {}
    for n, item in enumerate(triples):
        try:
            s, t, score = item
        except (TypeError, ValueError):
            raise ValueError(
                f"candidates_with_scores[{n}] must be (src_id, tgt_id, score), got {item!r}"
            ) from None
        key, score = (str(s), str(t)), float(score)
        cand[key] = max(score, cand.get(key, score))
    gold = set()
    for n, pair in enumerate(gold_pairs):
        try:
            s, t = pair
        except (TypeError, ValueError):
            raise ValueError(f"gold_pairs[{n}] must be (src_id, tgt_id), got {pair!r}") from None
        gold.add((str(s), str(t)))
    if not cand:
        raise ValueError("candidates_with_scores is empty; there is no threshold to optimise")
    if not gold:
        raise ValueError("gold_pairs is empty; recall is undefined")

    items = sorted(cand.items(), key=lambda kv: -kv[1])
    threshold = 0.0
    best_f1 = 0.0
    nextract = ncorrect = 0
    for i, (pair, score) in enumerate(items):
        nextract += 1
        ncorrect += pair in gold
        if ncorrect > 0:
            precision, recall = ncorrect / nextract, ncorrect / len(gold)
            f1 = 2 * precision * recall / (precision + recall)
            if f1 > best_f1:
                best_f1 = f1
                threshold = (score + items[i + 1][1]) / 2 if i + 1 < len(items) else score

    extracted = {pair for pair, score in cand.items() if score >= threshold}
    ncorrect = len(gold & extracted)
    if ncorrect > 0:
        precision, recall = ncorrect / len(extracted), ncorrect / len(gold)
        f1 = 2 * precision * recall / (precision + recall)
    else:
        precision = recall = f1 = 0.0
    return {
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "threshold": float(threshold),
    }


