"""Tables from a run's results.jsonl: score per cell and language, and gain over `single`.

Scores are averaged over seeds (mean and std); the gain of a composition is computed per seed
against the `single` baseline of the same target and seed, then averaged, so seed noise shared
by both does not count as gain. Averages follow XTREME: a task's score is the mean over its
languages.
"""

from __future__ import annotations

import csv
import re
import io
import statistics
from collections import defaultdict
from pathlib import Path

from .evaluation import read_results
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


def xtreme_averages(tables: dict) -> dict:
    """Per (composition, intermediate): each target's mean over languages and the mean over
    targets, for rows present in every target (XTREME's overall score)."""
    targets = list(tables)
    keys = set.intersection(*(set(t["rows"]) for t in tables.values())) if tables else set()
    rows = {}
    for k in sorted(keys, key=lambda k: (k[0] != "single", k)):
        vals = {t: tables[t]["rows"][k]["avg"][0] for t in targets if "avg" in tables[t]["rows"][k]}
        if len(vals) == len(targets):
            vals["overall"] = sum(vals.values()) / len(vals)
            rows[k] = vals
    return {"targets": targets, "rows": rows} if len(targets) > 1 and rows else {}


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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(tables: dict, path: Path) -> Path | None:
    """Intermediate (x composition) by target: mean gain over `single` across languages."""
    rows = sorted({k for t in tables.values() for k, v in t["gain"].items() if v})
    targets = [t for t in tables if any(tables[t]["gain"].values())]
    if not rows or not targets:
        return None
    import numpy as np

    plt = _plt()
    data = np.full((len(rows), len(targets)), np.nan)
    for j, t in enumerate(targets):
        for i, k in enumerate(rows):
            g = tables[t]["gain"].get(k, {})
            if "avg" in g:
                data[i, j] = g["avg"][0]
    lim = max(1e-6, float(np.nanmax(np.abs(data))))
    labels = [f"{inter} ({comp})" for comp, inter in rows]
    width = 2.5 + 0.075 * max(len(l) for l in labels) + 1.2 * len(targets)
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.45 * len(rows)))
    im = ax.imshow(data, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels)
    for i in range(len(rows)):
        for j in range(len(targets)):
            if not np.isnan(data[i, j]):
                dark = abs(data[i, j]) > 0.6 * lim  # white on the saturated ends of the colour map
                ax.text(j, i, f"{data[i, j]:+.1f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label="gain (points)")
    ax.set_title("gain over no intermediate\n(mean over languages)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def language_bars(tables: dict, run_dir: Path) -> list[Path]:
    """Per target: gain per language for each (composition, intermediate)."""
    import numpy as np

    plt = _plt()
    out = []
    for target, t in tables.items():
        groups = sorted(k for k, v in t["gain"].items() if v)
        langs = [l for l in t["languages"] if l != "avg"]
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(langs) * max(1, len(groups) / 2)), 3.2))
        w = 0.8 / len(groups)
        for i, k in enumerate(groups):
            vals = [t["gain"][k].get(l, (np.nan,))[0] for l in langs]
            ax.bar(np.arange(len(langs)) + i * w, vals, w, label=f"{k[1]} ({k[0]})")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(langs)) + 0.4 - w / 2, langs)
        ax.set_ylabel(f"gain in {t['metric']}")
        ax.set_title(f"{target}: gain over no intermediate, per language")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = run_dir / f"gain_{re.sub(r'[^A-Za-z0-9._-]', '_', target)}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    return out


def write_report(run_dir: Path, title: str | None = None) -> Path:
    rows = read_results(run_dir / "results.jsonl")
    tables = score_table(rows)
    note = XTL_NOTE_E5 if any("xlmr-e5-small" in str(r.get("backbone", "")) for r in rows) else None
    md = markdown(tables, title or f"Results: {run_dir.name}", note)
    hm = heatmap(tables, run_dir / "heatmap.png")
    bars = language_bars(tables, run_dir)
    xtreme = xtreme_averages(tables)
    if xtreme:
        md += "\n## XTREME-style averages (task score = mean over languages; overall = mean over tasks)\n\n"
        md += "| composition | intermediate | " + " | ".join(xtreme["targets"]) + " | overall |\n"
        md += "|---|---|" + "---:|" * (len(xtreme["targets"]) + 1) + "\n"
        for (comp, inter), vals in xtreme["rows"].items():
            md += f"| {comp} | {inter} | " + " | ".join(f"{vals.get(t, float('nan')):.1f}" for t in xtreme["targets"])
            md += f" | {vals['overall']:.1f} |\n"
    if hm or bars:
        md += "\n## Figures\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in ([hm] if hm else []) + bars)
    (run_dir / "report.md").write_text(md)
    (run_dir / "report.csv").write_text(csv_text(tables))
    return run_dir / "report.md"
