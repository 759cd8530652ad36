"""Input checks shared by the metrics: fail loudly on ragged or malformed inputs."""

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


# --------------------------------------------------------------------------- input checks


def _as_list(x: Any, name: str) -> list:
    """Tensors and arrays become plain lists so element comparisons behave the same for all."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.ndim == 0:
            raise ValueError(f"{name} must be a sequence, got a 0-d array")
        return x.tolist()
    if isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
        raise ValueError(f"{name} must be a sequence, got {type(x).__name__}")
    return list(x)


def _same_length(a: Sequence, b: Sequence, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} items but {name_b} has {len(b)}; they must match")
    if len(a) == 0:
        raise ValueError(f"{name_a} and {name_b} are empty; a score over nothing is undefined")


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """Float64 so that ties are decided identically however the caller's embeddings were stored."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        m = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:  # ragged lists
        raise ValueError(f"{name} must be a 2-D numeric matrix: {e}") from None
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x dim), got shape {m.shape}")
    if m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"{name} is empty, shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or inf")
    return m


def _l2_normalize(m: np.ndarray) -> np.ndarray:
    """Like ``faiss.normalize_L2``: zero rows stay zero (similarity 0 to everything) instead of NaN."""
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0)


def _check_tag_seqs(pred_seqs: Any, gold_seqs: Any) -> tuple[list[list[str]], list[list[str]]]:
    """seqeval flattens sentences, so one short prediction would shift every later entity."""
    preds = _as_list(pred_seqs, "pred_seqs")
    golds = _as_list(gold_seqs, "gold_seqs")
    _same_length(preds, golds, "pred_seqs", "gold_seqs")
    out_p, out_g = [], []
    for i, (p, g) in enumerate(zip(preds, golds)):
        p, g = _as_list(p, f"pred_seqs[{i}]"), _as_list(g, f"gold_seqs[{i}]")
        if len(p) != len(g):
            raise ValueError(
                f"pred_seqs[{i}] has {len(p)} tags but gold_seqs[{i}] has {len(g)}; they must match"
            )
        out_p.append([str(t) for t in p])
        out_g.append([str(t) for t in g])
    if sum(len(g) for g in out_g) == 0:
        raise ValueError("gold_seqs holds no tags at all; a tagging score over nothing is undefined")
    return out_p, out_g


