"""A report's faces: report.md, report.csv, rich tables for the terminal, a heatmap and per-language
bars, all drawn from `tables.score_table` so they agree, and the XTREME summary beside them."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

from ..evaluation import read_results
from .tables import BASE, load_predictions, score_table, significance_note

XTL_NOTE_E5 = ("Backbone xlmr-e5-small: multilingual-e5-small rebuilt from a 4-bit (Q4_0) copy; "
               "close to the original weights, not bit-exact.")
LEGEND = "avg = mean over the languages (XTREME's task score); zs-avg = the same without English (zero-shot)."


def _num(v: float | None, signed: bool) -> str:
    if v is None:
        return "?"
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def _cell(v, signed=False) -> str:
    """`45.2 [41.0, 49.3]`, a gain `+1.2 [-0.5, +2.9]`, `**+3.1** [+1.0, +5.2]*` when significant;
    `± std` over seeds when no interval is known."""
    if v is None:
        return ""
    sig = getattr(v, "significant", False)
    s = f"**{_num(v.mean, signed)}**" if sig else _num(v.mean, signed)
    if v.low is not None and v.high is not None:
        s += f" [{_num(v.low, signed)}, {_num(v.high, signed)}]"
    elif v.n > 1 and v.std:
        s += f" ±{v.std:.1f}"
    return s + ("*" if sig else "")


def _order(data: dict):
    return sorted(data.items(), key=lambda kv: (kv[0] != BASE, kv[0]))


def markdown(tables: dict, title: str = "Results", note: str | None = None) -> str:
    lines = [f"# {title}", ""]
    if note:
        lines += [f"> {note}", ""]
    if tables:
        lines += [f"> {LEGEND} Scores: mean over seeds [95% bootstrap interval over test examples].",
                  f"> {significance_note(tables)}", ""]
    for target, t in tables.items():
        langs = t["languages"]
        for kind, signed in (("rows", False), ("gain", True)):
            data = {k: v for k, v in t[kind].items() if v}
            if not data:
                continue
            head = f"## {target}: {t['metric']}" if kind == "rows" else f"### {target}: gain over no intermediate (single)"
            lines += [head, "", "| composition | intermediate | " + " | ".join(langs) + " |",
                      "|---|---|" + "---:|" * len(langs)]
            for (comp, inter), per in _order(data):
                lines.append(f"| {comp} | {inter} | " + " | ".join(_cell(per.get(l), signed) for l in langs) + " |")
            lines.append("")
            if kind == "gain":
                seeds = [(k, l, g) for k, per in data.items() for l, g in per.items() if g.seed_low is not None]
                if seeds:
                    lines += ["Over seeds (t-interval of the mean gain): " + "; ".join(
                        f"{k[1]} ({k[0]}) {l} [{g.seed_low:+.1f}, {g.seed_high:+.1f}]"
                        for k, l, g in seeds if l == "avg"), ""]
    return "\n".join(lines)


def csv_text(tables: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["target", "metric", "table", "composition", "intermediate", "language", "mean", "std", "n",
                "ci_low", "ci_high", "p", "p_adjusted", "significant", "seed_ci_low", "seed_ci_high"])
    f = (lambda v: "" if v is None else f"{v:.4f}")
    for target, t in tables.items():
        for kind in ("rows", "gain"):
            for (comp, inter), per in t[kind].items():
                for lang, v in per.items():
                    g = v if kind == "gain" else None
                    w.writerow([target, t["metric"], "score" if kind == "rows" else "gain", comp, inter, lang,
                                f"{v.mean:.4f}", f"{v.std:.4f}", v.n, f(v.low), f(v.high),
                                f(g.p) if g else "", f(g.p_adj) if g else "", (str(g.significant).lower() if g else ""),
                                f(g.seed_low) if g else "", f(g.seed_high) if g else ""])
    return buf.getvalue()


def _short(v, signed: bool) -> str:
    """Terminal cell: the mean, ± half the interval's width, * when significant."""
    if v is None:
        return ""
    s = _num(v.mean, signed)
    if v.low is not None and v.high is not None:
        s += f" ±{(v.high - v.low) / 2:.1f}"
    return s + ("*" if getattr(v, "significant", False) else "")


def rich_tables(tables: dict):
    """Per target: the scores, then the gains over `single` (two narrow tables read better
    in an 80-column terminal than one wide one); ± is half the 95% interval."""
    from rich.table import Table

    out = []
    for target, t in tables.items():
        langs = t["languages"]
        for kind, signed in (("rows", False), ("gain", True)):
            data = {k: v for k, v in t[kind].items() if v}
            if not data:
                continue
            title = f"{target}: {t['metric']}" if kind == "rows" else f"{target}: gain over single (no intermediate)"
            caption = None if kind == "rows" else significance_note(tables)
            tab = Table(title=title, caption=caption, pad_edge=False)
            tab.add_column("composition")
            tab.add_column("intermediate")
            for l in langs:
                tab.add_column(l, justify="right")
            for (comp, inter), per in _order(data):
                cells = []
                for l in langs:
                    v, txt = per.get(l), _short(per.get(l), signed)
                    if getattr(v, "significant", False):
                        txt = f"[bold {'green' if v.mean > 0 else 'red'}]{txt}[/]"
                    cells.append(txt)
                tab.add_row(comp, inter, *cells)
            out.append(tab)
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(tables: dict, path: Path) -> Path | None:
    """Intermediate (x composition) by target: mean gain over `single` across languages; a
    significant gain (after the report's correction) is starred and framed."""
    rows = sorted({k for t in tables.values() for k, v in t["gain"].items() if v})
    targets = [t for t in tables if any(tables[t]["gain"].values())]
    if not rows or not targets:
        return None
    import numpy as np
    from matplotlib.patches import Rectangle

    plt = _plt()
    data = np.full((len(rows), len(targets)), np.nan)
    sig = np.zeros_like(data, dtype=bool)
    for j, t in enumerate(targets):
        for i, k in enumerate(rows):
            g = tables[t]["gain"].get(k, {})
            if "avg" in g:
                data[i, j] = g["avg"].mean
                sig[i, j] = g["avg"].significant
    lim = max(1e-6, float(np.nanmax(np.abs(data))))
    labels = [f"{inter} ({comp})" for comp, inter in rows]
    width = 2.5 + 0.075 * max(len(l) for l in labels) + 1.2 * len(targets)
    fig, ax = plt.subplots(figsize=(width, 1.9 + 0.45 * len(rows)))
    im = ax.imshow(data, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels)
    for i in range(len(rows)):
        for j in range(len(targets)):
            if not np.isnan(data[i, j]):
                dark = abs(data[i, j]) > 0.6 * lim  # white on the saturated ends of the colour map
                ax.text(j, i, f"{data[i, j]:+.1f}" + ("*" if sig[i, j] else ""), ha="center", va="center",
                        fontsize=8, color="white" if dark else "black", fontweight="bold" if sig[i, j] else "normal")
                if sig[i, j]:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, edgecolor="black"))
    fig.colorbar(im, ax=ax, label="gain (points)")
    info = next(iter(tables.values())).get("significance", {})
    how = (f"* significant, {info['correction']} over {info['family']} gains, alpha {info['alpha']:g}"
           if info.get("family") else "no per-example predictions: nothing tested")
    ax.set_title(f"gain over no intermediate (mean over languages)\n{how}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def language_bars(tables: dict, run_dir: Path) -> list[Path]:
    """Per target: gain per language for each (composition, intermediate), with its interval."""
    import numpy as np

    plt = _plt()
    out = []
    for target, t in tables.items():
        groups = sorted(k for k, v in t["gain"].items() if v)
        langs = [l for l in t["languages"] if l not in ("avg", "zs-avg")]
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(langs) * max(1, len(groups) / 2)), 3.2))
        w = 0.8 / len(groups)
        for i, k in enumerate(groups):
            g = [t["gain"][k].get(l) for l in langs]
            vals = [v.mean if v else np.nan for v in g]
            err = np.array([[v.mean - v.low, v.high - v.mean] if v and v.low is not None else [np.nan, np.nan]
                            for v in g]).T
            ax.bar(np.arange(len(langs)) + i * w, vals, w, label=f"{k[1]} ({k[0]})",
                   yerr=None if np.isnan(err).all() else err, capsize=2, error_kw={"lw": 0.8})
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(langs)) + 0.4 - w / 2, langs)
        ax.set_ylabel(f"gain in {t['metric']}")
        ax.set_title(f"{target}: gain over no intermediate, per language (95% intervals)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = run_dir / f"gain_{re.sub(r'[^A-Za-z0-9._-]', '_', target)}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    return out


def xtreme_section(rows: list[dict]) -> str:
    """XTREME's per-task scores of each (composition, intermediate), XTREME's conventions
    (metrics/xtreme.py): the overall only for a complete, official run, else "partial" and why."""
    from ..metrics.xtreme import xtreme_summary

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "composition" in r:
            groups.setdefault((r["composition"], r.get("intermediate_task", r.get("intermediate", "none"))), []).append(r)
    summaries = {k: xtreme_summary(v, duplicates="mean") for k, v in sorted(groups.items(), key=lambda kv: (kv[0] != BASE, kv[0]))}
    tasks = sorted({t for s in summaries.values() for t in s["tasks"]})
    if not tasks:
        return ""
    f = (lambda v: "" if v is None or not math.isfinite(v) else f"{v:.1f}")
    md = ["", "## XTREME scores (XTREME's metric per task: (EM+F1)/2 for QA, seqeval F1 for UD-POS, "
          "English-to-other accuracy for Tatoeba; task score = mean over XTREME's languages)", "",
          "| composition | intermediate | " + " | ".join(f"{t} | {t} zs" for t in tasks) + " | overall |",
          "|---|---|" + "---:|" * (2 * len(tasks) + 1)]
    notes = []
    for (comp, inter), s in summaries.items():
        cells = []
        for t in tasks:
            e = s["tasks"].get(t)
            if not e:
                cells += ["", ""]
                continue
            score = e["score"] if e["complete"] else e["partial_score"]
            zs = e["zero_shot"] if e["complete"] else e["partial_zero_shot"]
            mark = "" if e["complete"] and e["official"] else "†"
            cells += [f(score) + mark, f(zs) + mark]
        md.append(f"| {comp} | {inter} | " + " | ".join(cells) + f" | {f(s['overall']) or 'partial'} |")
        notes.append(s["note"])
    md += ["", "† over the languages present, or not XTREME's official test set. " + (notes[0] if notes else ""), ""]
    return "\n".join(md)


def write_report(run_dir: Path, title: str | None = None, *, correction: str = "holm", alpha: float = 0.05) -> Path:
    from ..io import atomic_write_text

    run_dir = Path(run_dir)
    rows = read_results(run_dir / "results.jsonl")
    tables = score_table(rows, load_predictions(run_dir), correction=correction, alpha=alpha)
    note = XTL_NOTE_E5 if any("xlmr-e5-small" in str(r.get("backbone", "")) for r in rows) else None
    md = markdown(tables, title or f"Results: {run_dir.name}", note)
    hm = heatmap(tables, run_dir / "heatmap.png")
    bars = language_bars(tables, run_dir)
    md += xtreme_section(rows)
    if hm or bars:
        md += "\n## Figures\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in ([hm] if hm else []) + bars)
    atomic_write_text(run_dir / "report.md", md)
    atomic_write_text(run_dir / "report.csv", csv_text(tables))
    return run_dir / "report.md"
