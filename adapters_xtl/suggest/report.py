"""Markdown for a suggestion and for an evaluation (what the CLI prints and docs/suggest.md
quotes): one ranked table per language, the evaluation table against the baselines, verdicts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from adapters_xtl.studies.tables import fmt, md_table

from .ranking import METRICS

__all__ = ["render_evaluation", "render_suggestion"]

SHOW_SIGNALS = ("past", "text_sim", "logme", "hscore", "delta_sim", "align_delta")


def _signed(v: Any, spec: str = "{:+.2f}") -> str:
    return fmt(v, spec) if v is not None and math.isfinite(float(v)) else "n/a"


def render_suggestion(s) -> list[str]:
    unit = "points" if s.evidence.get("calibration") else "score units"
    lines = [f"# Suggested intermediate tasks for {s.target} ({s.composition})", "",
             f"Ranker: {s.method}; evidence: {s.evidence['cells']} measured cells"
             f"{' from ' + ', '.join(s.evidence['grids']) if s.evidence['grids'] else ''}; "
             f"{s.seconds:.0f} s.", ""]
    for lang, ranked in s.rankings.items():
        shown = [k for k in SHOW_SIGNALS if any(k in r.contributions for r in ranked)]
        langs = ranked[0].signals if ranked else {}
        lines += [f"## {s.target} / {lang}", "",
                  "Language: " + ", ".join(f"{k} {fmt(langs.get(k), '{:.2f}')}"
                                           for k in ("align", "syntactic", "genetic", "geographic")) + ".", ""]
        header = ["rank", "candidate", "predicted gain", *[f"{k} ({unit})" for k in shown], "other", "evidence (cells)",
                  "measured"]
        rows = []
        for r in ranked:
            other = sum(v for k, v in r.contributions.items() if k not in shown)
            rows.append([r.rank, r.candidate, _signed(r.predicted_gain), *[_signed(r.contributions.get(k)) for k in shown],
                         _signed(other) if r.contributions else "", r.evidence, _signed(r.measured_gain, "{:+.1f}")])
        lines += [md_table(header, rows), ""]
        lines += ["Raw signals: " + "; ".join(
            f"{r.candidate}: " + ", ".join(f"{k} {fmt(r.signals.get(k), '{:.3f}')}" for k in SHOW_SIGNALS
                                           if r.signals.get(k) is not None and math.isfinite(r.signals[k]))
            for r in ranked) + ".", ""]
    if s.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in s.notes] + [""]
    return lines


METHOD_ORDER = ("suggest", "combined", "best-on-average", "MNLI/SQuAD first", "random")
TITLES = {"target": "leave one target out", "language": "leave one language out"}


def render_evaluation(res: Mapping[str, Any]) -> list[str]:
    lines = [f"# Evaluation of `xtl suggest` ({res['composition']})", "",
             f"{res['cells']} measured cells in {res['queries']} queries (target x language), "
             f"{len(res['candidates'])} candidates ({', '.join(res['candidates'])}); backbone {res['backbone']}; "
             f"{res['seconds']:.0f} s.", ""]
    for proto, p in res["protocols"].items():
        methods = [m for m in METHOD_ORDER if m in p["table"]]
        used = sorted({f["method"] for f in p["folds"]})
        lines += [f"## {TITLES.get(proto, proto)} ({p['n_queries']} held-out queries; suggest used: {', '.join(used)})", "",
                  md_table(["method", *METRICS, "queries"],
                           [[m + (" (expected)" if m == "random" else ""),
                             *[fmt(p["table"][m][k], "{:.2f}" if k.startswith("regret") else "{:.3f}") for k in METRICS],
                             p["table"][m]["queries"]] for m in methods]), ""]
        lines += [f"- {v}" for v in p["verdicts"]]
        fold_notes = sorted({n for f in p["folds"] for n in f["notes"]} | set(p["notes"]))
        lines += [f"- {n}" for n in fold_notes] + [""]
    if res.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in res["notes"]] + [""]
    lines += ["Regret@k: best measured gain minus the best among the top k suggested (points, lower is better); "
              "NDCG@3 with relevance gain - min gain; Spearman between scores and gains per query (mean over "
              "queries).", ""]
    return lines
