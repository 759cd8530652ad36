"""Past results: the gains of intermediate tasks that grids measured and the registry recorded.

A *cell* is one measured gain: an intermediate (candidate) task, a target, a language, the gain
of the composed target module over the target trained alone (``single``), in the target's main
metric, averaged over the seeds both were run with (per seed first: :func:`studies.tables.gains`).

From a run folder (``xtl run``'s ``results.jsonl``, and ``plan.json`` for the task names and the
intermediate modules) and from a registry (a composed module's recorded scores against the
``single`` module of the same task, seed and backbone).  Every row of a grid names the backbone
it ran on; a grid from another backbone fingerprint says nothing about this one and is refused
unless the caller allows it (then it is used and said).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters_xtl.errors import XtlError

__all__ = ["Cell", "Grid", "check_backbones", "pick_composition", "read_grid", "registry_cells", "run_cells"]

SKIP_COMPOSITIONS = ("single", "fuse", "merge")  # no single intermediate to credit


@dataclass(frozen=True)
class Cell:
    """One measured gain of ``candidate`` (an English intermediate task) on ``target`` in ``language``."""

    candidate: str
    target: str
    language: str
    gain: float
    seeds: int
    composition: str
    source: str

    @property
    def query(self) -> tuple[str, str]:
        return (self.target, self.language)


@dataclass
class Grid:
    """What one run folder holds for suggest: its rows, backbones and modules."""

    path: Path
    rows: list[dict]
    backbones: set[str]
    names: dict[str, str] = field(default_factory=dict)  # recipe task reference -> catalog name
    modules: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)  # candidate -> [(seed, ModuleJob)]
    target_modules: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # target -> [(seed, ref)]
    backbone_name: str | None = None  # the recipe's backbone (what to load)
    data_dir: str | None = None
    plan: Any = None


def _task_name(ref: str, catalog) -> str:
    if ref.startswith("mt:"):
        return "mt:" + "+".join(_task_name(t, catalog) for t in ref[3:].split("+"))
    try:
        return catalog.get(ref).name
    except XtlError:
        return ref


def read_grid(run_dir: str | Path) -> Grid:
    """A run folder's rows and, when ``plan.json`` is there, its task names and modules."""
    from adapters_xtl.runner import read_run_rows

    path = Path(run_dir)
    if not (path / "results.jsonl").is_file():
        raise XtlError(f"no results.jsonl in {path}", where=str(path),
                       fix="pass a folder `xtl run` wrote (it holds results.jsonl and plan.json)")
    rows = [r for r in read_run_rows(path) if "composition" in r and "target" in r]
    if not rows:
        raise XtlError("results.jsonl has no grid rows (rows with a composition and a target)", where=str(path),
                       fix="pass a folder `xtl run RECIPE` wrote")
    grid = Grid(path=path, rows=rows, backbones={str(r.get("backbone")) for r in rows if r.get("backbone")})
    plan_file = path / "plan.json"
    if plan_file.is_file():
        from adapters_xtl.recipe import Plan

        try:
            plan = Plan.model_validate(json.loads(plan_file.read_text(encoding="utf-8")))
        except Exception as e:  # noqa: BLE001 - an unreadable plan only costs the name mapping
            raise XtlError(f"plan.json is not readable: {e}", where=str(plan_file),
                           fix="restore it, or run the recipe again into this folder") from None
        grid.plan = plan
        grid.backbone_name = plan.recipe.backbone
        grid.data_dir = plan.recipe.data_dir
        catalog = plan.recipe.catalog()
        for job in plan.modules:
            grid.names[job.task] = _task_name(job.task, catalog)
            grid.modules.setdefault(grid.names[job.task], []).append((job.seed, job))
        for t in plan.recipe.targets:
            grid.names[t.task] = _task_name(t.task, catalog)
    for r in rows:
        if r.get("composition") == "single" and "@" in str(r.get("module", "")):
            refs = grid.target_modules.setdefault(r["target"], [])
            if (int(r.get("seed", 0)), r["module"]) not in refs:
                refs.append((int(r.get("seed", 0)), r["module"]))
    for v in (*grid.modules.values(), *grid.target_modules.values()):
        v.sort(key=lambda x: x[0])
    return grid


def check_backbones(grids: Sequence[Grid], expected: str | None, *, allow_other: bool) -> list[str]:
    """Refuse grids from another backbone fingerprint than ``expected`` (``short()`` form; the
    first grid's when None) unless ``allow_other``; return the notes to print."""
    notes = []
    want = expected or next((b for g in grids for b in sorted(g.backbones)), None)
    for g in grids:
        other = sorted(b for b in g.backbones if b != want)
        if not other:
            continue
        msg = f"grid {g.path} ran on backbone {', '.join(other)}, not {want}"
        if not allow_other:
            raise XtlError(msg, where=str(g.path),
                           fix="pass grids of this backbone (or load the grids' backbone with --backbone), or use "
                           "them anyway with --allow-other-backbone (their gains may not carry over)")
        notes.append(msg + ": used anyway (--allow-other-backbone); its gains may not carry over")
    return notes


def pick_composition(grids: Sequence[Grid], composition: str | None) -> str:
    """The composition whose gains are ranked: the one asked for, else the grids' most common
    non-single one with a single intermediate (stack, continue)."""
    counts: dict[str, int] = defaultdict(int)
    for g in grids:
        for r in g.rows:
            if r["composition"] not in SKIP_COMPOSITIONS:
                counts[r["composition"]] += 1
    if composition and composition != "auto":
        if grids and composition not in counts:
            raise XtlError(f"no {composition!r} cells in the grids (they have {', '.join(sorted(counts)) or 'none'})",
                           where="--composition", fix="pick one the grids ran, or auto")
        return composition
    if not counts:
        return "stack"
    return max(sorted(counts), key=lambda c: counts[c])


def run_cells(grid: Grid, composition: str) -> list[Cell]:
    """The grid's measured gains for ``composition`` (per seed against ``single``, then averaged)."""
    from adapters_xtl.studies.tables import main_metric_of, scores

    out = []
    targets = sorted({r["target"] for r in grid.rows})
    for target in targets:
        metric = main_metric_of(grid.rows, target)
        table = scores(grid.rows, target, metric, key="intermediate_task")
        base = table.get(("single", "none"))
        if not base:
            continue
        for (comp, inter), per_lang in table.items():
            if comp != composition or "+" in inter and not inter.startswith("mt:"):
                continue
            cand = grid.names.get(inter, inter)
            for lang, seeds in per_lang.items():
                common = [s for s in seeds if s in base.get(lang, {})]
                if not common:
                    continue
                gain = sum(seeds[s] - base[lang][s] for s in common) / len(common)
                out.append(Cell(cand, target, lang, float(gain), len(common), comp, str(grid.path)))
    return out


def _main_scores(man, metric: str) -> tuple[dict[str, float], Any]:
    """(language -> main-metric score, the evaluation limit) of a manifest: full scores, else the
    limited ones with their limit (never mixed)."""
    if man.scores:
        return {l: float(ms[metric]) for l, ms in man.scores.items() if metric in ms}, None
    lim = getattr(man, "limited_scores", None) or {}
    return {l: float(ms[metric]) for l, ms in (lim.get("scores") or {}).items() if metric in ms}, lim.get("limit")


def registry_cells(registry, backbone_fp, composition: str, *, exclude: Iterable[tuple[str, str, str]] = ()
                   ) -> list[Cell]:
    """Gains recorded in the registry: each module composed (``composition``) on one
    intermediate against the ``single`` module of the same task, seed and backbone, scored the
    same way (both full, or both on the same first-N examples).  Cells already in ``exclude``
    (candidate, target, language), i.e. measured in a grid, are left out."""
    from adapters_xtl.reporting import main_metric

    mans = [m for m in registry.all_manifests() if backbone_fp is None or m.backbone == backbone_fp]
    singles: dict[tuple[str, int], Any] = {}
    by_ref = {f"{m.name}@{m.version}": m for m in mans}
    for m in mans:
        kind = (m.composition or {}).get("kind", "single")
        if kind == "single":
            singles[(m.task, m.seed)] = m  # newest wins (all_manifests is in version order)
    skip = set(exclude)
    pooled: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for m in mans:
        comp = m.composition or {}
        mods = comp.get("modules") or []
        if comp.get("kind") != composition or len(mods) != 1 or (m.task, m.seed) not in singles:
            continue
        inter = by_ref.get(mods[0])
        if inter is None:
            continue
        metric = main_metric(m.task)
        got, lim = _main_scores(m, metric)
        base, base_lim = _main_scores(singles[(m.task, m.seed)], metric)
        if lim != base_lim:
            continue
        for lang, v in got.items():
            key = (inter.task, m.task, lang)
            if lang in base and key not in skip:
                pooled[key].append(v - base[lang])
    return [Cell(c, t, l, sum(v) / len(v), len(v), composition, f"registry {registry.root}")
            for (c, t, l), v in sorted(pooled.items())]
