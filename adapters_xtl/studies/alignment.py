"""Cross-lingual alignment of sentence representations: linear CKA and retrieval accuracy.

Given embeddings of parallel sentences (row i of ``X`` translates row i of ``Y``), two views of
how aligned the two languages are in the model:

* :func:`linear_cka` (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited"): similarity of the two representation *geometries*, invariant to rotations and
  isotropic scaling of either space, 1 for identical geometry.  It needs n (sentences) well above
  the dimension to be meaningful: with n not >> d even unrelated representations score high
  (the biased HSIC estimator used here has an offset of roughly d/n for independent data).
* :func:`retrieval_accuracy` / :func:`retrieval_accuracy_both`: is each sentence's nearest
  neighbour (cosine) in the other language its translation?  These are the Tatoeba metrics of
  :mod:`adapters_xtl.metrics`, re-exported here so a study computes the same number the evaluation
  reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adapters_xtl.metrics import retrieval_accuracy, retrieval_accuracy_both

__all__ = ["alignment_scores", "linear_cka", "retrieval_accuracy", "retrieval_accuracy_both"]


def _matrix(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    m = np.asarray(a, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (examples x features) matrix, got shape {m.shape}")
    if m.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {m.shape[0]}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} contains NaN or inf")
    return m


def _centered_unit_pair(X: Any, Y: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Column-centred X and Y, each scaled to unit Frobenius norm (so the fourth powers in CKA's
    norms cannot overflow or underflow); None when either is constant (it has no geometry)."""
    x, y = _matrix(X, "X"), _matrix(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X has {x.shape[0]} rows but Y has {y.shape[0]}; row i must pair with row i")
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    sx, sy = np.linalg.norm(x), np.linalg.norm(y)
    if sx == 0 or sy == 0:
        return None
    return x / sx, y / sy


def linear_cka(X: Any, Y: Any) -> float:
    """Linear centered kernel alignment between representations ``X`` (n x d1) and ``Y`` (n x d2).

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F * ||Yc^T Yc||_F)`` with column-centred Xc, Yc: the
    feature-space form, O(n d^2), so large n is cheap.  Rows must pair up.  In [0, 1]; 1 for
    ``Y = X Q s + b`` (Q orthogonal, s > 0).  A constant representation has no geometry: NaN.
    """
    pair = _centered_unit_pair(X, Y)
    if pair is None:
        return float("nan")
    x, y = pair
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.clip(cross / denom, 0.0, 1.0))


def alignment_scores(src_emb: Any, tgt_emb: Any) -> dict[str, float]:
    """CKA and both retrieval directions for one parallel set: ``{"cka", "src2tgt", "tgt2src"}``."""
    both = retrieval_accuracy_both(src_emb, tgt_emb)
    return {"cka": linear_cka(src_emb, tgt_emb), **both}


def linear_cka_debiased(X: Any, Y: Any) -> float:
    """Linear CKA from the unbiased HSIC estimator (Song et al. 2012; Kornblith et al. 2019, eq. 5
    with the debiased HSIC of Nguyen et al. 2021): near 0 for independent representations even
    when n (sentences) is not far above the dimension, where :func:`linear_cka` is biased upwards
    by roughly d/n.  Needs n >= 4; can be slightly negative for unrelated data.  O(n^2 d).
    """
    n = _matrix(X, "X").shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 rows, got {n}")
    pair = _centered_unit_pair(X, Y)
    if pair is None:
        return float("nan")
    x, y = pair

    def hsic(k: np.ndarray, l: np.ndarray) -> float:
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0.0)
        np.fill_diagonal(l, 0.0)
        kl = k @ l
        return float(np.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl.sum()) / (n * (n - 3))

    kx, ky = x @ x.T, y @ y.T
    hxy, hxx, hyy = hsic(kx, ky), hsic(kx, kx), hsic(ky, ky)
    if hxx <= 0 or hyy <= 0:
        return float("nan")
    return float(np.clip(hxy / np.sqrt(hxx * hyy), -1.0, 1.0))
