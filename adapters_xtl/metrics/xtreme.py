"""The XTREME score of a run, computed as XTREME's own ``evaluate.py`` computes it.

What google-research/xtreme ``evaluate.py`` does (read at commit 0918248, ``TASK2LANGS``,
``METRIC_FUNCTION``, ``evaluate()``), and so what this module does:

* each task has one metric: accuracy for XNLI, PAWS-X and Tatoeba; seqeval F1 for PAN-X *and*
  UD-POS (``METRIC_FUNCTION['udpos'] = f1``: our tagging ``f1_xtreme``, not token accuracy);
  BUCC F1; for the QA tasks ``avg_metric = (avg_exact_match + avg_f1) / 2``;
* a task's score is the plain mean over its ``TASK2LANGS`` languages (English included) and
  every one of them is read: a missing prediction file fails the script, so a task scores only
  with all its languages; languages outside the list (e.g. XQuAD's later ``ro``) do not count;
* ``all_task``, the overall, exists only when all nine tasks are available
  (``if all_tasks == available_tasks``), and a group score (classification, tagging, qa,
  retrieval) only when all of that group's tasks are.

Tatoeba's direction: ``third_party/run_retrieval.py`` calls ``similarity_search(x, y)`` with
x = the other language's embeddings and y = English's, and ``utils_retrieve.similarity_search``
indexes x and searches with y, so each *English* sentence looks for its translation: our
``accuracy_en2xx`` (formats/retrieval.py keeps both directions and their mean as ``accuracy``).

Beside each task this module also gives the zero-shot average without English (XTREME's tables
include English; for BUCC and Tatoeba, which have no English test set, it equals the score).

Our ``-local`` tasks (tasks/local.yaml) are offline stand-ins: other splits (XNLI/PAWS-X dev halves,
MLQA dev), other test sets (one local UD treebank per language, UNER instead of WikiANN) or other
training data (TyDiQA-en instead of SQuAD for the QA tasks). Their per-task numbers are reported,
marked unofficial, and never count toward the overall, nor does a task evaluated with ``--limit``.
Functions are pure: rows are results.jsonl-style dicts ``{task, language, metric, score, ...}``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from .uncertainty import StatsError

__all__ = [
    "XTREME_TASKS",
    "XTREME_LANGUAGES",
    "XTREME_METRIC",
    "XTREME_GROUPS",
    "TASK_MAP",
    "xtreme_task",
    "xtreme_summary",
    "xtreme_overall",
]

# evaluate.py TASK2LANGS, verbatim (order kept)
XTREME_LANGUAGES: dict[str, tuple[str, ...]] = {
    "pawsx": tuple("de,en,es,fr,ja,ko,zh".split(",")),
    "xnli": tuple("ar,bg,de,el,en,es,fr,hi,ru,sw,th,tr,ur,vi,zh".split(",")),
    "panx": tuple("ar,he,vi,id,jv,ms,tl,eu,ml,ta,te,af,nl,en,de,el,bn,hi,mr,ur,fa,fr,it,pt,es,bg,ru,ja,ka,ko,"
                  "th,sw,yo,my,zh,kk,tr,et,fi,hu".split(",")),
    "udpos": tuple("af,ar,bg,de,el,en,es,et,eu,fa,fi,fr,he,hi,hu,id,it,ja,kk,ko,mr,nl,pt,ru,ta,te,th,tl,tr,ur,"
                   "vi,yo,zh".split(",")),
    "bucc2018": tuple("de,fr,ru,zh".split(",")),
    "tatoeba": tuple("ar,he,vi,id,jv,tl,eu,ml,ta,te,af,nl,de,el,bn,hi,mr,ur,fa,fr,it,pt,es,bg,ru,ja,ka,ko,th,sw,"
                     "zh,kk,tr,et,fi,hu".split(",")),
    "xquad": tuple("en,es,de,el,ru,tr,ar,vi,th,zh,hi".split(",")),
    "mlqa": tuple("en,es,de,ar,hi,vi,zh".split(",")),
    "tydiqa": tuple("en,ar,bn,fi,id,ko,ru,sw,te".split(",")),
}
XTREME_TASKS: tuple[str, ...] = tuple(XTREME_LANGUAGES)
# evaluate.py GROUP2TASK
XTREME_GROUPS: dict[str, tuple[str, ...]] = {
    "classification": ("pawsx", "xnli"),
    "tagging": ("udpos", "panx"),
    "qa": ("xquad", "mlqa", "tydiqa"),
    "retrieval": ("bucc2018", "tatoeba"),
}
# the metric of our results rows that is XTREME's number for the task (module doc)
XTREME_METRIC: dict[str, str] = {
    "pawsx": "accuracy", "xnli": "accuracy", "panx": "f1", "udpos": "f1_xtreme", "bucc2018": "f1",
    "tatoeba": "accuracy_en2xx", "xquad": "qa_score", "mlqa": "qa_score", "tydiqa": "qa_score",
}
QA_TASKS = XTREME_GROUPS["qa"]

# our task name -> (XTREME task, why it is not XTREME's official evaluation, or None)
TASK_MAP: dict[str, tuple[str, str | None]] = {
    "xnli": ("xnli", None),
    "pawsx": ("pawsx", None),
    "udpos": ("udpos", None),
    "panx": ("panx", None),
    "xquad": ("xquad", None),
    "mlqa": ("mlqa", None),
    "tydiqa": ("tydiqa", None),
    "bucc2018": ("bucc2018", None),
    "bucc": ("bucc2018", None),
    "tatoeba": ("tatoeba", None),
    "xnli-local": ("xnli", "xnli-local: half of the XNLI dev set, not XNLI test"),
    "pawsx-local": ("pawsx", "pawsx-local: half of the PAWS-X dev set, not PAWS-X test"),
    "udpos-local": ("udpos", "udpos-local: one local UD treebank per language, not XTREME's UD-POS test sets"),
    "udpos-pud-local": ("udpos", "udpos-pud-local: the PUD treebanks only, not XTREME's UD-POS test sets"),
    "uner-local": ("panx", "uner-local: UNER, a stand-in for PAN-X (WikiANN), another corpus"),
    "xquad-local": ("xquad", "xquad-local: trained on TyDiQA-GoldP English, not SQuAD v1.1"),
    "mlqa-local": ("mlqa", "mlqa-local: MLQA dev, not MLQA test, trained on TyDiQA-GoldP English"),
    "tydiqa-local": ("tydiqa", "tydiqa-local: a held-out part of the English train split, not TyDiQA-GoldP dev"),
}


def xtreme_task(task: str) -> tuple[str, bool, str | None] | None:
    """(XTREME task, official, why not official) for one of our task names; None when the task is
    not an XTREME task (or a stand-in for one)."""
    hit = TASK_MAP.get(str(task))
    if hit is None:
        return None
    name, reason = hit
    return name, reason is None, reason


def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.fmean(vals) if vals else None


def _table(rows: Iterable[Mapping[str, Any]], duplicates: str) -> dict:
    """{task: {language: {metric: score}}} of the rows, plus each task's eval limits."""
    if duplicates not in ("error", "mean", "last"):
        raise StatsError(f"duplicates must be 'error', 'mean' or 'last', got {duplicates!r}")
    seen: dict = {}
    limits: dict = {}
    for n, r in enumerate(rows):
        try:
            key = (str(r["task"]), str(r["language"]), str(r["metric"]))
            value = float(r["score"])
        except (KeyError, TypeError, ValueError):
            raise StatsError(f"result row {n} needs task, language, metric and a numeric score; got {dict(r)!r:.200}",
                             fix="pass rows as results.jsonl holds them") from None
        if r.get("limit") is not None:
            limits.setdefault(key[0], set()).add(r["limit"])
        seen.setdefault(key, []).append(value)
    table: dict = {}
    for (task, lang, metric), vals in seen.items():
        if len(vals) > 1 and duplicates == "error" and len(set(vals)) > 1:
            raise StatsError(f"{len(vals)} different scores for task {task!r}, language {lang!r}, metric {metric!r} "
                             f"({vals[:4]})",
                             fix="pass the rows of one system (filter by module/composition and seed), or "
                                 "duplicates='mean' to average seeds, duplicates='last' to keep the latest")
        v = vals[-1] if duplicates == "last" else statistics.fmean(vals)
        table.setdefault(task, {}).setdefault(lang, {})[metric] = v
    return {"scores": table, "limits": limits}


def _language_score(xtask: str, metrics: Mapping[str, float]) -> float | None:
    m = XTREME_METRIC[xtask]
    if m in metrics:
        return metrics[m]
    if xtask in QA_TASKS and "exact_match" in metrics and "f1" in metrics:
        return (metrics["exact_match"] + metrics["f1"]) / 2  # avg_metric; linear, so per language is the same
    return None


def _task_entry(xtask: str, source: str, reason: str | None, per_lang: Mapping[str, Mapping[str, float]]) -> dict:
    official_langs = XTREME_LANGUAGES[xtask]
    values = {lang: _language_score(xtask, per_lang[lang]) for lang in per_lang}
    langs = {lang: values[lang] for lang in official_langs if values.get(lang) is not None}
    extra = {lang: v for lang, v in values.items() if lang not in official_langs and v is not None}
    no_metric = sorted(lang for lang in official_langs if lang in per_lang and values[lang] is None)
    missing = [lang for lang in official_langs if lang not in langs]
    complete = not missing
    zs = [v for lang, v in langs.items() if lang != "en"]
    partial_score, partial_zs = _mean(langs.values()), _mean(zs)
    return {
        "task": source,
        "official": reason is None,
        "reason": reason,
        "metric": XTREME_METRIC[xtask],
        "languages": langs,
        "extra_languages": extra,
        "missing_languages": missing,
        "no_metric_languages": no_metric,  # rows exist but not with XTREME's metric
        "n_languages": len(langs),
        "n_official": len(official_langs),
        "complete": complete,
        "score": partial_score if complete else None,
        "zero_shot": partial_zs if complete else None,
        "partial_score": partial_score,
        "partial_zero_shot": partial_zs,
    }


def xtreme_summary(rows: Iterable[Mapping[str, Any]], *, duplicates: str = "error") -> dict:
    """XTREME's per-task scores, group scores and overall of one system's result rows.

    ``rows``: results.jsonl-style dicts with ``task``, ``language``, ``metric``, ``score`` (percent)
    for ONE system (one module or grid cell; several seeds only with ``duplicates="mean"``).
    Returns::

        {"tasks": {xtreme_task: {"task": our task, "official", "reason", "metric",
                                 "languages": {lang: score}, "extra_languages", "missing_languages",
                                 "no_metric_languages", "n_languages", "n_official", "complete",
                                 "score", "zero_shot",            # None unless complete
                                 "partial_score", "partial_zero_shot"}},   # over what is there
         "groups": {group: score or None}, "overall": float or None, "zero_shot_overall": float or None,
         "partial": bool, "official": bool,
         "missing": {"tasks": [...], "languages": {xtreme_task: [...]}, "unofficial": {xtreme_task: why}},
         "alternatives": {xtreme_task: [other task names mapping to it, not used]},
         "ignored": [task names that are not XTREME tasks], "note": str}

    ``overall`` (XTREME's ``all_task``) is set only when all nine tasks are present with every
    official language and each comes from XTREME's own evaluation (not a ``-local`` stand-in, not
    limited); otherwise ``partial`` is True and ``missing`` says exactly what is lacking. When a
    task has rows from several of our tasks (``xnli`` and ``xnli-local``), the official one is
    used, else the one covering most official languages.
    """
    parsed = _table(rows, duplicates)
    table, limits = parsed["scores"], parsed["limits"]
    candidates: dict[str, list[tuple[str, str | None]]] = {}
    ignored = []
    for task in table:
        hit = xtreme_task(task)
        if hit is None:
            ignored.append(task)
            continue
        xtask, _, reason = hit
        if task in limits:
            lim = ", ".join(str(v) for v in sorted(limits[task], key=str))
            reason = (reason + "; " if reason else "") + f"{task}: evaluated with --limit {lim}"
        candidates.setdefault(xtask, []).append((task, reason))
    tasks: dict[str, dict] = {}
    alternatives: dict[str, list[str]] = {}
    for xtask in XTREME_TASKS:
        if xtask not in candidates:
            continue
        entries = [_task_entry(xtask, t, why, table[t]) for t, why in candidates[xtask]]
        entries.sort(key=lambda e: (not e["official"], -e["n_languages"], e["task"]))
        tasks[xtask] = entries[0]
        if len(entries) > 1:
            alternatives[xtask] = [e["task"] for e in entries[1:]]

    missing_tasks = [t for t in XTREME_TASKS if t not in tasks]
    missing_langs = {t: e["missing_languages"] for t, e in tasks.items() if e["missing_languages"]}
    unofficial = {t: e["reason"] for t, e in tasks.items() if not e["official"]}
    complete = not missing_tasks and not missing_langs
    official = complete and not unofficial
    groups = {}
    for g, members in XTREME_GROUPS.items():
        ok = all(m in tasks and tasks[m]["complete"] and tasks[m]["official"] for m in members)
        groups[g] = _mean(tasks[m]["score"] for m in members) if ok else None
    overall = _mean(tasks[t]["score"] for t in XTREME_TASKS) if official else None
    zs_overall = _mean(tasks[t]["zero_shot"] for t in XTREME_TASKS) if official else None
    if official:
        note = "XTREME overall over all nine tasks and their official languages"
    else:
        parts = []
        if missing_tasks:
            parts.append(f"{len(missing_tasks)} of 9 tasks missing ({', '.join(missing_tasks)})")
        if missing_langs:
            parts.append("languages missing in " + ", ".join(f"{t} ({len(v)})" for t, v in missing_langs.items()))
        if unofficial:
            parts.append("not XTREME's official evaluation: " + "; ".join(unofficial.values()))
        note = "partial: no XTREME overall (" + "; ".join(parts) + ")"
    return {
        "tasks": tasks,
        "groups": groups,
        "overall": overall,
        "zero_shot_overall": zs_overall,
        "partial": not official,
        "official": official,
        "missing": {"tasks": missing_tasks, "languages": missing_langs, "unofficial": unofficial},
        "alternatives": alternatives,
        "ignored": sorted(ignored),
        "note": note,
    }


def xtreme_overall(summary_or_scores: Mapping[str, Any]) -> float:
    """The XTREME overall, or a `StatsError` saying what is missing (the CLI's exit 2).

    Takes an `xtreme_summary` result, or a plain {xtreme_task: score} dict of the nine task scores
    (already XTREME's per-task numbers; their languages cannot be checked then)."""
    if "tasks" in summary_or_scores and "partial" in summary_or_scores:
        s = summary_or_scores
        if s["partial"]:
            miss = s["missing"]
            detail = []
            if miss["tasks"]:
                detail.append(f"tasks missing: {', '.join(miss['tasks'])}")
            for t, langs in miss["languages"].items():
                detail.append(f"{t} lacks {', '.join(langs)}")
            for t, why in miss["unofficial"].items():
                detail.append(f"{t} is not official ({why})")
            raise StatsError("no XTREME overall for a partial run: " + "; ".join(detail),
                             fix="evaluate all nine XTREME tasks (xnli pawsx udpos panx xquad mlqa tydiqa bucc2018 "
                                 "tatoeba) on all their languages, or report the per-task scores")
        return float(s["overall"])
    scores = dict(summary_or_scores)
    lacking = [t for t in XTREME_TASKS if t not in scores or scores[t] is None
               or not math.isfinite(float(scores[t]))]
    unknown = sorted(set(scores) - set(XTREME_TASKS))
    if lacking or unknown:
        raise StatsError(f"no XTREME overall: tasks missing {lacking}" + (f", unknown tasks {unknown}" if unknown else ""),
                         fix=f"give a score for each of {', '.join(XTREME_TASKS)}")
    return statistics.fmean(float(scores[t]) for t in XTREME_TASKS)
