"""Tables from a run's results.jsonl: score per cell and language, and gain over `single`.

Scores are averaged over seeds (mean and std); the gain of a composition is computed per seed
against the `single` baseline of the same target and seed, then averaged, so seed noise shared
by both does not count as gain. Averages follow XTREME: a task's score is the mean over its
languages.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from pathlib import Path

from .evaluate import read_results
from .tasks import get_task

XTL_NOTE_E5 = ("Backbone xlmr-e5-small: multilingual-e5-small rebuilt from a 4-bit (Q4_0) copy; "
               "close to the original weights, not bit-exact.")


def main_metric(task: str) -> str:
    try:
        spec = get_task(task)
    except Exception:
        return "accuracy"
    from .pipeline import default_main_metric

    return default_main_metric(spec)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def score_table(rows: list[dict]) -> dict:
    """{target: {"languages": [...], "rows": {(composition, intermediate): {lang: (mean, std, n)}},
    "gain": {(composition, intermediate): {lang: (mean, std, n)}}}}"""
    by = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))  # target -> (comp, inter) -> lang -> seed -> v
    for r in rows:
        if "composition" not in r or r.get("metric") != main_metric(r["task"]):
            continue
        inter = r.get("intermediate_task", r["intermediate"])
        by[r["target"]][(r["composition"], inter)][r["language"]][r.get("seed", 0)] = r["score"]
    out = {}
    for target, groups in by.items():
        langs = sorted({lang for g in groups.values() for lang in g}, key=lambda l: (l != "en", l))
        table, gain = {}, {}
        base = groups.get(("single", "none"), {})
        for key, per_lang in groups.items():
            table[key] = {}
            gain[key] = {}
            for lang, seeds in per_lang.items():
                vals = list(seeds.values())
                table[key][lang] = (*_mean_std(vals), len(vals))
                if key != ("single", "none") and lang in base:
                    diffs = [v - base[lang][s] for s, v in seeds.items() if s in base[lang]]
                    if diffs:
                        gain[key][lang] = (*_mean_std(diffs), len(diffs))
            for t in (table[key], gain[key]):
                if t:
                    zs = [v[0] for l, v in t.items() if l != "avg"]
                    t["avg"] = (statistics.fmean(zs), 0.0, len(zs))
        out[target] = {"languages": langs + ["avg"], "rows": table, "gain": gain, "metric": main_metric(target)}
    return out


def _cell(v, signed=False) -> str:
    if v is None:
        return ""
    mean, std, n = v
    s = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return s + (f" ±{std:.1f}" if n > 1 and std else "")


def markdown(tables: dict, title: str = "Results", note: str | None = None) -> str:
    lines = [f"# {title}", ""]
    if note:
        lines += [f"> {note}", ""]
    for target, t in tables.items():
        langs = t["languages"]
        for kind, signed in (("rows", False), ("gain", True)):
            data = {k: v for k, v in t[kind].items() if v}
            if not data:
                continue
            head = f"## {target}: {t['metric']}" if kind == "rows" else f"### {target}: gain over no intermediate (single)"
            lines += [head, "", "| composition | intermediate | " + " | ".join(langs) + " |",
                      "|---|---|" + "---:|" * len(langs)]
            for (comp, inter), per in sorted(data.items(), key=lambda kv: (kv[0][0] != "single", kv[0])):
                lines.append(f"| {comp} | {inter} | " + " | ".join(_cell(per.get(l), signed) for l in langs) + " |")
            lines.append("")
    return "\n".join(lines)


def csv_text(tables: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["target", "metric", "table", "composition", "intermediate", "language", "mean", "std", "n"])
    for target, t in tables.items():
        for kind in ("rows", "gain"):
            for (comp, inter), per in t[kind].items():
                for lang, (m, s, n) in per.items():
                    w.writerow([target, t["metric"], "score" if kind == "rows" else "gain", comp, inter, lang,
                                f"{m:.4f}", f"{s:.4f}", n])
    return buf.getvalue()


def rich_tables(tables: dict):
    """Per target: the scores, then the gains over `single` (two narrow tables read better
    in an 80-column terminal than one wide one)."""
    from rich.table import Table

    out = []
    for target, t in tables.items():
        langs = t["languages"]
        for kind, signed in (("rows", False), ("gain", True)):
            data = {k: v for k, v in t[kind].items() if v}
            if not data:
                continue
            title = f"{target}: {t['metric']}" if kind == "rows" else f"{target}: gain over single (no intermediate)"
            tab = Table(title=title, pad_edge=False)
            tab.add_column("composition")
            tab.add_column("intermediate")
            for l in langs:
                tab.add_column(l, justify="right")
            for (comp, inter), per in sorted(data.items(), key=lambda kv: (kv[0][0] != "single", kv[0])):
                tab.add_row(comp, inter, *(_cell(per.get(l), signed).split(" ±")[0] for l in langs))
            out.append(tab)
    return out


def write_report(run_dir: Path, title: str | None = None) -> Path:
    rows = read_results(run_dir / "results.jsonl")
    tables = score_table(rows)
    note = XTL_NOTE_E5 if any("xlmr-e5-small" in str(r.get("backbone", "")) for r in rows) else None
    md = markdown(tables, title or f"Results: {run_dir.name}", note)
    (run_dir / "report.md").write_text(md)
    (run_dir / "report.csv").write_text(csv_text(tables))
    return run_dir / "report.md"
