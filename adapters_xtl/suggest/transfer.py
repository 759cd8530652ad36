"""Transferability of frozen features to a target's labels, without training: LogME and H-score.

Both take a feature matrix (one row per example, or per word for tagging: what the backbone
with an intermediate module active produces) and the target's English training labels, and say
how well a linear model on those features could fit the labels.  ``suggest`` computes them with
each candidate module active and reports the change against the bare backbone.

* :func:`logme` (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning"): the log marginal likelihood (evidence) per example of a Bayesian linear
  regression from the features to each class's one-hot column, with the prior precision
  ``alpha`` and the noise precision ``beta`` set by MacKay's fixed-point updates (the authors'
  algorithm, on the SVD of ``F^T F``), averaged over classes.  Higher is better; it is a log
  density per example, so only differences between feature sets on the same labels mean
  anything.  :func:`logme_evidence` is the same quantity for given ``alpha`` and ``beta``
  (the tests check it against ``scipy.stats.multivariate_normal``).
* :func:`hscore` (Bao et al. 2019, "An Information-theoretic Approach to Transferability in
  Task Transfer Learning"): ``tr(cov(f)^-1 cov(E[f | y]))``, the share of the feature variance
  that the class means explain, summed over directions, on the top ``n / 10`` principal
  components of the features: with fewer examples than dimensions (200 sentences, 384
  dimensions) the sample covariance is singular and the plain H-score saturates at
  ``classes - 1`` whatever the features.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["hscore", "logme", "logme_evidence"]


def _inputs(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D (examples x dimensions) matrix, got shape {f.shape}")
    if y.ndim != 1 or y.shape[0] != f.shape[0]:
        raise ValueError(f"labels must be one per feature row: {y.shape} labels for {f.shape[0]} rows")
    if f.shape[0] < 2:
        raise ValueError("need at least 2 examples")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f, y


def _classes(y: np.ndarray) -> np.ndarray:
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(f"labels must have at least 2 classes, got {classes.tolist()}")
    return classes


def logme_evidence(features: Any, target: Any, alpha: float, beta: float) -> float:
    """Log evidence per example, ``log p(y | F, alpha, beta) / n``, of the Bayesian linear model
    ``y = F w + e`` with ``w ~ N(0, I / alpha)``, ``e ~ N(0, I / beta)``, for one real-valued
    target column ``y`` (LogME's eq. 2, computed directly)."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    ev = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * logdet
          - beta / 2 * float(np.sum((y - f @ m) ** 2)) - alpha / 2 * float(m @ m) - n / 2 * math.log(2 * math.pi))
    return ev / n


def _class_evidence(y: np.ndarray, f: np.ndarray, v: np.ndarray, s: np.ndarray, max_iter: int = 100,
                    tol: float = 1e-3) -> tuple[float, float, float]:
    """MacKay's fixed point for one one-hot column (the LogME authors' update), then its evidence."""
    n, d = f.shape
    eps = 1e-5
    alpha, beta = 1.0, 1.0
    lam = alpha / beta
    proj = v.T @ (f.T @ y)
    for _ in range(max_iter):
        gamma = float((s / (s + lam)).sum())
        m = v @ (proj * beta / (alpha + beta * s))
        alpha_de = float(m @ m)
        alpha = gamma / (alpha_de + eps)
        beta_de = float(np.sum((y - f @ m) ** 2))
        beta = (n - gamma) / (beta_de + eps)
        new_lam = alpha / beta
        converged = abs(new_lam - lam) / lam < tol
        lam = new_lam
        if converged:
            break
    m = v @ (proj * beta / (alpha + beta * s))  # the posterior mean at the final alpha, beta
    alpha_de, beta_de = float(m @ m), float(np.sum((y - f @ m) ** 2))
    ev = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * float(np.sum(np.log(alpha + beta * s)))
          - beta / 2 * beta_de - alpha / 2 * alpha_de - n / 2 * math.log(2 * math.pi))
    return ev / n, alpha, beta


def logme(features: Any, labels: Any, *, return_params: bool = False):
    """LogME of class ``labels`` (any hashable values, at least 2 classes) on ``features``
    (n x d): the mean over classes of the maximised log evidence per example.

    With ``return_params``, also ``[(alpha, beta)]`` per class (sorted class order)."""
    f, y = _inputs(features, labels)
    classes = _classes(y)
    s, v = np.linalg.eigh(f.T @ f)  # F^T F = V diag(s) V^T, the SVD of a symmetric PSD matrix
    s = np.clip(s, 0.0, None)
    out, params = [], []
    for c in classes:
        ev, alpha, beta = _class_evidence((y == c).astype(np.float64), f, v, s)
        out.append(ev)
        params.append((alpha, beta))
    value = float(np.mean(out))
    return (value, params) if return_params else value


def hscore(features: Any, labels: Any, *, components: int | None = None) -> float:
    """H-score ``tr(cov(f)^-1 cov(E[f | y]))`` (population covariances) in [0, min(r, classes-1)]:
    0 when the class means coincide, ``classes - 1`` for perfectly separated classes.

    The features are first projected onto their top ``components`` principal directions
    (default ``n // 10``, at most the dimension, at least 1), so the covariance is estimated from
    ten examples per dimension: with fewer examples than dimensions (200 sentences, 384
    dimensions) the sample covariance is singular and the plain H-score sits at ``classes - 1``
    for any labels."""
    f, y = _inputs(features, labels)
    classes = _classes(y)
    n, d = f.shape
    r = components or max(1, min(d, n // 10))
    fc = f - f.mean(axis=0)
    if r < d:
        _, _, vt = np.linalg.svd(fc, full_matrices=False)
        fc = fc @ vt[:r].T
    cov = fc.T @ fc / n
    means = np.zeros_like(fc)
    for c in classes:
        idx = y == c
        means[idx] = fc[idx].mean(axis=0)
    cov_between = means.T @ means / n
    scale = float(np.trace(cov)) / cov.shape[0]
    if scale <= 0:
        return 0.0
    return float(np.trace(np.linalg.solve(cov + 1e-9 * scale * np.eye(cov.shape[0]), cov_between)))
