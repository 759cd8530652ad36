"""Zero-shot evaluation on every language of a task, and the results file it feeds.

Results are one JSON object per (module, task, language, metric, score) line in `results.jsonl`.
Lines are appended whole and flushed, so a killed run leaves at most one truncated last line,
which `read_results` skips.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .data import load_examples
from .errors import XtlError
from .tasks import TaskSpec


def retrieval_pairs(spec: TaskSpec, lang: str, data_dir: Path | None, limit: int | None) -> tuple[list[str], list[str]]:
    """(language side, pivot side) of a parallel set: two line-aligned files, or two columns."""
    xx = load_examples(spec, "test", lang, data_dir, limit=None)
    if "test_pivot" in spec.splits:
        en = load_examples(spec, "test_pivot", lang, data_dir, limit=None)
        src, tgt = [e["text"] for e in xx], [e["text"] for e in en]
        if len(src) != len(tgt):
            raise XtlError(
                f"retrieval files for {lang!r} differ in length: {len(src)} vs {len(tgt)} lines",
                where=spec.file or spec.name,
                fix="the two files must be line-aligned translations",
            )
    else:
        src, tgt = [e["text"] for e in xx], [e["text_pair"] for e in xx]
    # empty lines cannot be retrieved meaningfully; drop the pair on both sides
    pairs = [(a, b) for a, b in zip(src, tgt) if a and b and a.strip() and b.strip()]
    if limit:
        pairs = pairs[:limit]
    return [a for a, _ in pairs], [b for _, b in pairs]


def evaluate(
    model,
    spec: TaskSpec,
    languages: list[str] | None = None,
    *,
    split: str | None = None,
    data_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    predictions: dict[str, list] | None = None,
) -> dict[str, dict[str, float]]:
    """Scores per language (metric -> percent). Languages default to all of the task's. With a
    dict `predictions`, each language's per-example rows (id, gold, prediction, score) land in
    it too: later statistics (bootstrap CIs, paired tests) need them."""
    langs = languages or list(spec.languages)
    for lang in langs:
        spec.language_code(lang)  # unknown language: clear error before any work
    out: dict[str, dict[str, float]] = {}
    model.eval()
    fmt = model.format
    for lang in langs:
        if spec.format == "retrieval":  # parallel pairs or bitext mining (BUCC), by the task's mode
            keep = [] if predictions is not None else None
            out[lang] = fmt.score_language(model, spec, lang, data_dir=data_dir, limit=limit, batch_size=batch_size,
                                           keep=keep)
        else:
            sp = split or spec.eval_split
            examples = load_examples(spec, sp, lang, data_dir, limit=limit)
            features = fmt.encode(examples, spec, model.tokenizer, train=False)
            keep = [] if predictions is not None else None
            out[lang] = fmt.score(model, features, examples, spec, batch_size, lang=lang, keep=keep)
        if predictions is not None:
            predictions[lang] = keep
    return out


def write_predictions(path: Path, module: str, task: str, predictions: dict[str, list]) -> Path:
    """One JSON line per test example (module, task, language, id, gold, prediction, score),
    written whole and atomically."""
    from .io import atomic_write_text

    lines = []
    for lang, rows in predictions.items():
        for r in rows:
            lines.append(json.dumps({"module": module, "task": task, "language": lang, **r}, ensure_ascii=False))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), "".join(l + "\n" for l in lines))
    return Path(path)


def result_rows(module: str, task: str, scores: dict[str, dict[str, float]], *, intervals: dict | None = None,
                **extra) -> list[dict]:
    """One row per (language, metric); with `intervals` (formats/intervals.py) each score carries
    its n and 95% bootstrap interval (`n`, `ci_low`, `ci_high`)."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S")
    return [
        {"module": module, "task": task, "language": lang, "metric": metric, "score": round(float(v), 4),
         **interval_fields((intervals or {}).get(lang, {}).get(metric)), "time": ts, **extra}
        for lang, ms in scores.items()
        for metric, v in ms.items()
    ]


def interval_fields(iv) -> dict:
    """A results row's uncertainty fields for one score's Interval: n, ci_low, ci_high."""
    import math

    if iv is None:
        return {}
    r = (lambda v: round(float(v), 4) if math.isfinite(v) else None)
    return {"n": int(iv.n), "ci_low": r(iv.low), "ci_high": r(iv.high)}


def append_results(path: Path, rows: list[dict]) -> None:
    """Whole lines, fsynced; a line cut by an earlier kill is closed first, so no row is lost."""
    from .io import append_jsonl

    path.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(path, rows, ensure_ascii=False)


def read_results(path: Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
    return rows
