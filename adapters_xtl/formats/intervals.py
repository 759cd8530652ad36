"""Every score with its uncertainty: n and a 95% bootstrap interval over the test examples,
computed from the per-example rows a format keeps while scoring (`score(..., keep=)`).

Lives with the formats because only a format knows how its metric reads a row (MLQA's answer
language for span QA, pairs vs mining for retrieval); the statistics are metrics/uncertainty.py.
"""

from __future__ import annotations

from ..metrics.uncertainty import FORMAT_METRICS, Interval, score_interval
from ..tasks import TaskSpec

N_RESAMPLES = 1000


def metric_language(spec: TaskSpec, lang: str) -> str | None:
    """The `lang` argument of the row statistics: MLQA's answer language for tasks scored with
    MLQA's script, else None (SQuAD's script and every other format)."""
    if spec.format != "span_qa":
        return None
    from .span_qa import mlqa_language, uses_mlqa_metric

    return mlqa_language(spec, lang) if uses_mlqa_metric(spec) else None


def score_intervals(spec: TaskSpec, scores: dict[str, dict[str, float]], predictions: dict[str, list],
                    confidence: float = 0.95, n_resamples: int = N_RESAMPLES) -> dict[str, dict[str, Interval]]:
    """language -> metric -> Interval, for each score that the rows can recompute (a metric
    outside the format's row statistics, e.g. a derived average, has none)."""
    known = FORMAT_METRICS.get(spec.format, ())
    out: dict[str, dict[str, Interval]] = {}
    for lang, per_metric in scores.items():
        rows = predictions.get(lang)
        if not rows:
            continue
        for metric in per_metric:
            if metric in known and _applies(spec, metric, rows):
                out.setdefault(lang, {})[metric] = score_interval(
                    spec.format, metric, rows, metric_language(spec, lang), confidence=confidence,
                    n_resamples=n_resamples)
    return out


def _applies(spec: TaskSpec, metric: str, rows: list) -> bool:
    if spec.format != "retrieval":
        return True
    pairs = "direction" in rows[0]
    return metric.startswith("accuracy") == pairs

