"""Correlations that say how much the data can carry, plus the line fits and plots that show them.

A study typically has one number per target language (the transfer gain) and one property of that
language (distance from English, FEATS per word, ...): 5 to 60 points.  With so few points a bare
correlation coefficient misleads, so :func:`correlate` always reports

* the coefficient (Spearman by default: rank-based, so robust to the odd outlier language, and it
  asks the question studies ask, "does the gain go down as the distance goes up?"),
* a percentile **bootstrap** confidence interval, resampling (x, y) pairs,
* a two-sided **permutation** p-value (exact, over all n! orderings, when n! <= ``n_perm``),
* and :meth:`Correlation.sentence`, a plain-language reading of all three that says what the
  data do *and do not* support.

Missing values (``None``/NaN/inf in either variable) drop the pair; the count is reported.
The statistics are scipy's: ``scipy.stats.spearmanr`` / ``pearsonr`` for r, ``scipy.stats.bootstrap``
(paired, percentile) for the interval and ``scipy.stats.permutation_test`` for p, all vectorised:
2000 bootstrap resamples and 5000 permutations at n=50 take a few tens of milliseconds.

Plots use matplotlib's object API on an Agg canvas (no ``pyplot``, no global backend switch), so
they work headless and from threads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters_xtl.errors import XtlError, did_you_mean

__all__ = [
    "METHODS",
    "Correlation",
    "correlate",
    "correlation_table",
    "fit_line",
    "scatter_plot",
    "line_plot",
]

METHODS = ("spearman", "pearson")
MIN_N = 3  # below this a correlation is undefined or trivially +-1
FEW_N = 5  # below this the sentence says "too few to judge"
_ALPHA = 0.05
_CHUNK = 4_000_000  # max elements of one (resamples x n) block, bounds memory for large n


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Correlation:
    """One correlation with its uncertainty.

    ``n`` counts the complete pairs used; ``n_dropped`` the pairs left out for a missing value.
    ``n_boot_used`` bootstrap resamples gave the CI: resamples in which x or y is constant have no
    correlation and are skipped (common when n is small).  ``n_perm`` is the number of orderings
    the p-value was computed over (``p_exact``: all n! of them).  ``note`` is set when no
    coefficient exists (a constant variable); then r, the CI and p are NaN.
    """

    method: str
    r: float
    ci_low: float
    ci_high: float
    p_perm: float
    n: int
    ci: float = 0.95
    n_dropped: int = 0
    n_boot: int = 0
    n_boot_used: int = 0
    n_perm: int = 0
    p_exact: bool = False
    note: str | None = None

    # ------------------------------------------------------------------ formatting
    @property
    def name(self) -> str:
        return self.method.capitalize()

    @property
    def defined(self) -> bool:
        return self.note is None and math.isfinite(self.r)

    @property
    def significant(self) -> bool:
        """Permutation p below 0.05 *and* a bootstrap interval that excludes zero."""
        return (
            self.defined
            and self.p_perm < _ALPHA
            and math.isfinite(self.ci_low)
            and (self.ci_low > 0 or self.ci_high < 0)
        )

    def summary(self) -> str:
        """Compact one-liner for titles and tables: ``Spearman r=-0.62 [95% CI -0.93, 0.10], p=0.10, n=8``."""
        if not self.defined:
            return f"{self.name} r undefined, n={self.n}"
        return f"{self.name} r={_f(self.r)} [{_ci_label(self.ci)} {self._ci_text()}], {_p_text(self.p_perm)}, n={self.n}"

    def _ci_text(self) -> str:
        if not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high)):
            return "n/a"
        return f"{_f(self.ci_low)}, {_f(self.ci_high)}"

    def sentence(self, unit: str = "languages") -> str:
        """What the data do and do not support, in one plain sentence.

        ``unit`` names what was counted ("languages", "language pairs", "tasks").
        """
        dropped = f" ({self.n_dropped} with a missing value left out)" if self.n_dropped else ""
        few = "only " if self.n < 10 else ""
        head = f"With {few}n={self.n} {unit}{dropped}"
        if not self.defined:
            return f"{head}, no correlation can be computed: {self.note}."
        stats = f"{self.name} r={_f(self.r)} [{_ci_label(self.ci)} {self._ci_text()}], {_p_text(self.p_perm)}"
        if self.n < FEW_N:
            return (
                f"{head}, {stats}: too few {unit} to judge whether the two are related; "
                f"read it as an anecdote, not evidence."
            )
        strength = _strength(self.r)
        direction = "positive" if self.r > 0 else "negative"
        kind = "monotone " if self.method == "spearman" else "linear "
        ci_ok = math.isfinite(self.ci_low) and math.isfinite(self.ci_high)
        ci_excludes_zero = ci_ok and (self.ci_low > 0 or self.ci_high < 0)
        p_small = self.p_perm < _ALPHA
        if p_small and ci_excludes_zero:
            text = f"a {strength} {direction} {kind}relation that is unlikely to be chance"
            if ci_ok and (self.ci_high - self.ci_low) > 0.5:
                lo, hi = sorted((abs(self.ci_low), abs(self.ci_high)))
                text += f", though its size is uncertain (|r| anywhere from {lo:.2f} to {hi:.2f})"
        elif p_small or ci_excludes_zero:
            text = (
                f"a {strength} {direction} trend on weak evidence (the permutation test and the "
                f"bootstrap interval disagree); treat it as tentative"
            )
        elif strength == "negligible":
            bound = max(abs(self.ci_low), abs(self.ci_high)) if ci_ok else float("nan")
            text = "no detectable relation"
            if math.isfinite(bound):
                text += f", though the data cannot rule out one as large as |r|={bound:.2f}"
        else:
            text = f"a {strength} {direction} trend that the data cannot distinguish from no relation"
        return f"{head}, {stats}: {text}."

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN stays NaN; ``json.dumps`` writes it as ``NaN``)."""
        d = asdict(self)
        d["summary"] = self.summary()
        d["sentence"] = self.sentence()
        return d

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.sentence()


def _f(v: float) -> str:
    return f"{v:.2f}" if abs(v) >= 0.005 else "0.00"


def _ci_label(ci: float) -> str:
    pct = ci * 100
    return f"{pct:.0f}% CI" if abs(pct - round(pct)) < 1e-9 else f"{pct:g}% CI"


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return "p n/a"
    if p < 0.001:
        return "p<0.001"
    if p < 0.01:
        return f"p={p:.3f}"
    return f"p={p:.2f}"


def _strength(r: float) -> str:
    a = abs(r)
    if a < 0.1:
        return "negligible"
    if a < 0.4:
        return "weak"
    if a < 0.7:
        return "moderate"
    return "strong"


# --------------------------------------------------------------------------- numerics


def _as_float_vector(v: Any, name: str) -> np.ndarray:
    if hasattr(v, "detach"):  # torch tensor
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        arr = v.astype(float, copy=False)
    else:
        arr = np.asarray([np.nan if e is None else e for e in v], dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _complete_pairs(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, int]:
    xa, ya = _as_float_vector(x, "x"), _as_float_vector(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(f"x has {xa.shape[0]} values but y has {ya.shape[0]}; they must pair up")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep], int((~keep).sum())


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank) along the last axis: Spearman's input."""
    from scipy import stats

    return stats.rankdata(a, method="average", axis=-1)


def _rows_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of a with the same row of b (`scipy.stats.pearsonr` along the last
    axis); NaN where either row is constant."""
    import warnings

    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning: a constant row has no correlation
        r = stats.pearsonr(a, b, axis=-1).statistic
    return np.clip(np.asarray(r, dtype=float), -1.0, 1.0)


def _coef(x: np.ndarray, y: np.ndarray, method: str) -> float:
    """`scipy.stats.spearmanr` / `scipy.stats.pearsonr`."""
    from scipy import stats

    fn = stats.spearmanr if method == "spearman" else stats.pearsonr
    return float(np.clip(fn(x, y).statistic, -1.0, 1.0))


def _bootstrap(x: np.ndarray, y: np.ndarray, method: str, n_boot: int, ci: float,
               rng: np.random.Generator) -> np.ndarray:
    """Correlation of each of ``n_boot`` (x, y) pair resamples (`scipy.stats.bootstrap`,
    ``paired=True``); resamples in which x or y is constant have none and are dropped."""
    import warnings

    from scipy import stats

    def statistic(xb, yb, axis=-1):
        xb, yb = np.moveaxis(xb, axis, -1), np.moveaxis(yb, axis, -1)
        if method == "spearman":
            xb, yb = _ranks(xb), _ranks(yb)
        return _rows_r(xb, yb)

    n = x.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN resamples: dropped below instead of spoiling the interval
        res = stats.bootstrap((x, y), statistic, paired=True, vectorized=True, n_resamples=n_boot,
                              confidence_level=ci, method="percentile", batch=max(1, _CHUNK // max(n, 1)), rng=rng)
    boots = np.asarray(res.bootstrap_distribution, dtype=float)
    return boots[np.isfinite(boots)]


def _permutation_p(
    x: np.ndarray, y: np.ndarray, method: str, n_perm: int, rng: np.random.Generator
) -> tuple[float, int, bool]:
    """Two-sided p: share of orderings of y whose |r| reaches the observed |r|
    (`scipy.stats.permutation_test`, ``permutation_type="pairings"`` over y alone, statistic |r|,
    ``alternative="greater"``).

    Exact over all n! orderings when that is at most ``n_perm`` (scipy's rule too); otherwise
    Monte Carlo with scipy's +1 correction (Phipson & Smyth 2010), so a p-value is never 0.
    """
    from scipy import stats

    if method == "spearman":  # ranks are invariant under permutation: rank once
        x, y = _ranks(x), _ranks(y)

    def statistic(yp, axis=-1):
        yp = np.moveaxis(yp, axis, -1)
        return np.abs(_rows_r(np.broadcast_to(x, yp.shape), yp))

    n = x.shape[0]
    res = stats.permutation_test((y,), statistic, permutation_type="pairings", vectorized=True,
                                 n_resamples=n_perm, alternative="greater",
                                 batch=max(1, _CHUNK // max(n, 1)), rng=rng)
    used = int(np.asarray(res.null_distribution).shape[0])
    return float(res.pvalue), used, math.factorial(n) <= n_perm


def correlate(
    x: Any,
    y: Any,
    *,
    method: str = "spearman",
    n_boot: int = 2000,
    n_perm: int = 5000,
    ci: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """Correlation of paired samples with a bootstrap CI and a permutation p-value.

    ``x`` and ``y`` are equal-length sequences (lists, arrays, tensors); pairs with a missing
    value (``None``, NaN, inf) are dropped and counted in ``n_dropped``.  Raises ``XtlError``
    when fewer than 3 complete pairs remain.  A constant variable gives a ``Correlation`` whose
    r, CI and p are NaN and whose ``note`` says why (a study over many columns should not stop
    for one empty one).  Same inputs and ``seed`` give identical results; the bootstrap and the
    permutations draw from independent streams, so changing ``n_boot`` leaves ``p_perm`` as is.
    """
    if method not in METHODS:
        raise XtlError(f"unknown correlation method {method!r}", fix=did_you_mean(str(method), METHODS))
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 0 or n_perm < 0:
        raise ValueError(f"n_boot and n_perm must be >= 0, got {n_boot} and {n_perm}")
    xs, ys, dropped = _complete_pairs(x, y)
    n = xs.shape[0]
    if n < MIN_N:
        raise XtlError(
            f"a correlation needs at least {MIN_N} complete (x, y) pairs; got {n}"
            + (f" ({dropped} dropped for a missing value)" if dropped else ""),
            fix="add languages with results for both variables",
        )
    nan = float("nan")
    base = dict(method=method, n=n, ci=ci, n_dropped=dropped, n_boot=n_boot)
    const = [name for name, v in (("x", xs), ("y", ys)) if np.ptp(v) == 0]
    if const:
        which = " and ".join(const)
        return Correlation(
            r=nan, ci_low=nan, ci_high=nan, p_perm=nan, **base,
            note=f"{which} {'is' if len(const) == 1 else 'are'} constant across all {n} points",
        )
    boot_rng, perm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    r = _coef(xs, ys, method)
    boots = _bootstrap(xs, ys, method, n_boot, ci, boot_rng) if n_boot else np.empty(0)
    if boots.size:
        alpha = (1.0 - ci) / 2.0
        lo, hi = np.quantile(boots, [alpha, 1.0 - alpha])
        lo, hi = float(lo), float(hi)
    else:
        lo = hi = nan
    if n_perm:
        p, used, exact = _permutation_p(xs, ys, method, n_perm, perm_rng)
    else:
        p, used, exact = nan, 0, False
    return Correlation(
        r=r, ci_low=lo, ci_high=hi, p_perm=float(p), n_boot_used=int(boots.size),
        n_perm=used, p_exact=exact, **base,
    )


def correlation_table(
    rows: Iterable[Mapping[str, Any]],
    x_key: str,
    *y_keys: str,
    method: str = "spearman",
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Correlate column ``x_key`` with each of ``y_keys`` over a list of row dicts.

    Rows missing a key count as missing values.  Returns one dict per y key:
    ``{"x": x_key, "y": key, **Correlation.as_dict()}``, or ``{"x", "y", "error"}`` when the
    column has fewer than 3 complete pairs (so a table over many columns still comes out).
    """
    rows = list(rows)
    if not y_keys:
        raise ValueError("correlation_table needs at least one y key")
    xs = [r.get(x_key) for r in rows]
    out = []
    for key in y_keys:
        ys = [r.get(key) for r in rows]
        try:
            c = correlate(xs, ys, method=method, **kwargs)
        except XtlError as e:
            out.append({"x": x_key, "y": key, "error": str(e)})
            continue
        out.append({"x": x_key, "y": key, **c.as_dict()})
    return out


def fit_line(x: Any, y: Any) -> tuple[float, float]:
    """Least-squares line y = slope * x + intercept over the complete pairs."""
    xs, ys, _ = _complete_pairs(x, y)
    if xs.shape[0] < 2 or np.ptp(xs) == 0:
        raise XtlError(
            f"a line needs at least two distinct x values; got {np.unique(xs).size} among {xs.shape[0]} complete pairs"
        )
    xm, ym = xs.mean(), ys.mean()
    slope = float(((xs - xm) * (ys - ym)).sum() / ((xs - xm) ** 2).sum())
    return slope, float(ym - slope * xm)


# --------------------------------------------------------------------------- plots


def _new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    return path


def scatter_plot(
    x: Any,
    y: Any,
    labels: Sequence[str] | None,
    path: str | Path,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    corr: Correlation | None = None,
    fit: bool = True,
    figsize: tuple[float, float] = (6.4, 4.8),
    dpi: int = 120,
) -> Path:
    """Scatter of y against x, each point labelled (by language), with the least-squares line.

    The correlation summary (r, CI, p, n) goes under the title when ``corr`` is given.  Points
    with a missing value are not drawn.  Writes ``path`` (PNG unless the suffix says otherwise)
    and returns it.
    """
    xa, ya = _as_float_vector(x, "x"), _as_float_vector(y, "y")
    if xa.shape != ya.shape:
        raise ValueError(f"x has {xa.shape[0]} values but y has {ya.shape[0]}")
    labels = list(labels) if labels is not None else [""] * xa.shape[0]
    if len(labels) != xa.shape[0]:
        raise ValueError(f"{len(labels)} labels for {xa.shape[0]} points")
    keep = np.isfinite(xa) & np.isfinite(ya)
    fig = _new_figure(figsize)
    ax = fig.add_subplot()
    ax.scatter(xa[keep], ya[keep], s=28, color="tab:blue", zorder=3)
    for xi, yi, lab in zip(xa[keep], ya[keep], np.asarray(labels, dtype=object)[keep]):
        if lab:
            ax.annotate(str(lab), (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=8)
    if fit and keep.sum() >= 2 and np.ptp(xa[keep]) > 0:
        slope, intercept = fit_line(xa[keep], ya[keep])
        xs = np.linspace(xa[keep].min(), xa[keep].max(), 50)
        ax.plot(xs, slope * xs + intercept, color="tab:red", lw=1.2, label=f"least squares: slope {slope:.3g}")
        ax.legend(loc="best", fontsize=8, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    head = title
    if corr is not None:
        head = f"{title}\n{corr.summary()}" if title else corr.summary()
    if head:
        ax.set_title(head, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path, dpi)


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    logx: bool = False,
    figsize: tuple[float, float] = (6.4, 4.8),
    dpi: int = 120,
) -> Path:
    """One line per series (e.g. per language group): ``{"Germanic": [(steps, gain), ...]}``.

    Points are drawn in x order; points with a missing value are skipped.  ``logx`` for step
    counts spanning orders of magnitude.  Writes ``path`` and returns it.
    """
    if not series:
        raise ValueError("line_plot needs at least one series")
    fig = _new_figure(figsize)
    ax = fig.add_subplot()
    for name, pts in series.items():
        arr = np.asarray([(np.nan if a is None else a, np.nan if b is None else b) for a, b in pts], dtype=float)
        if arr.size == 0:
            continue
        arr = arr[np.isfinite(arr).all(axis=1)]
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        ax.plot(arr[:, 0], arr[:, 1], marker="o", ms=4, lw=1.4, label=str(name))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _save(fig, path, dpi)
