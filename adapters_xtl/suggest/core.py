"""``suggest`` and ``evaluate_runs``: resolve the target, languages and candidates, gather the
evidence, compute the signals on the backbone, rank (:mod:`.combine`) or evaluate
(:mod:`.evaluate`).  What the CLI and ``xtl.suggest`` call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters_xtl.errors import XtlError, did_you_mean

from .combine import Ranked, rank_queries
from .evidence import Cell, Grid, check_backbones, pick_composition, read_grid, registry_cells, run_cells
from .signals import SignalContext

__all__ = ["Suggestion", "evaluate_runs", "suggest"]


@dataclass
class Suggestion:
    """Ranked candidates per language for one target (``rankings[lang]``, best first)."""

    target: str
    languages: list[str]
    composition: str
    method: str
    rankings: dict[str, list[Ranked]]
    candidates: dict[str, str | None]  # candidate task -> module whose signals were measured
    evidence: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        from adapters_xtl.studies.tables import jsonable

        return jsonable({
            "target": self.target, "languages": self.languages, "composition": self.composition,
            "ranker": self.method, "candidates": self.candidates, "evidence": self.evidence, "notes": self.notes,
            "seconds": round(self.seconds, 2),
            "rankings": {lang: [vars(r) for r in rs] for lang, rs in self.rankings.items()}})

    def render(self) -> list[str]:
        from .report import render_suggestion

        return render_suggestion(self)


# --------------------------------------------------------------------------- resolving inputs


def _target(name: str):
    from adapters_xtl.tasks import get_task, task_names

    try:
        spec = get_task(name)
    except XtlError:
        raise XtlError(f"unknown target task {name!r}", where="--target", fix=did_you_mean(name, task_names())) from None
    from adapters_xtl.pipeline import model_format_trainable

    if not model_format_trainable(spec) and spec.format != "retrieval":
        raise XtlError(f"target {name!r} ({spec.format}) cannot be a target", where="--target")
    return spec


def _languages(spec, languages: Sequence[str] | None) -> list[str]:
    if not languages:
        raise XtlError("no languages given", where="--languages", fix=f"e.g. --languages {','.join(list(spec.languages)[:3])}")
    out = []
    for lang in languages:
        if lang not in spec.languages:
            raise XtlError(f"target {spec.name!r} has no data for language {lang!r}", where="--languages",
                           fix=did_you_mean(lang, spec.languages))
        out.append(lang)
    return out


def _has_local_training_data(spec, data_dir) -> bool:
    """Whether a task's English training split is a local file that exists (no Hub access)."""
    from adapters_xtl.data import source_path
    from adapters_xtl.tasks import get_task

    if spec.mixture:
        return all(_has_local_training_data(get_task(m), data_dir) for m in spec.mixture)
    train = get_task(spec.train_task) if spec.train_task else spec
    split = "train" if "train" in train.splits else (train.eval_split if train.id_split else None)
    if split is None:
        return False
    try:
        src = train.source_for(split)
        return bool(src.path) and source_path(src, train, train.train_language, data_dir).exists()
    except XtlError:
        return False


def _training_source(spec) -> str:
    from adapters_xtl.tasks import get_task

    return get_task(spec.train_task).name if spec.train_task else spec.name


def _module_task(man) -> str:
    if man.format == "mixture" and man.head.get("tasks"):
        return "mt:" + "+".join(man.head["tasks"])
    return man.task


def _single(man) -> bool:
    return (man.composition or {}).get("kind", "single") == "single"


def _registry_modules(registry, fp) -> dict[str, str]:
    """Candidate task -> newest module trained alone on this backbone (lowest seed first)."""
    if registry is None:
        return {}
    best: dict[str, Any] = {}
    for m in registry.all_manifests():
        if m.backbone != fp or not _single(m):
            continue
        t = _module_task(m)
        cur = best.get(t)
        if cur is None or (m.seed, m.created_at) < (cur.seed, cur.created_at):
            best[t] = m
    return {t: f"{m.name}@{m.version}" for t, m in best.items()}


def _grid_modules(grids: Sequence[Grid], registry, fp) -> tuple[dict[str, str], dict[str, str]]:
    """(candidate -> module ref, target -> single module ref) from the grids, lowest seed."""
    from adapters_xtl.runner import _find_module

    cands: dict[str, str] = {}
    targets: dict[str, str] = {}
    for g in grids:
        for cand, jobs in g.modules.items():
            for _, job in jobs:
                man = _find_module(registry, job, fp) if registry is not None else None
                if man is not None and cand not in cands:
                    cands[cand] = f"{man.name}@{man.version}"
                    break
        for t, refs in g.target_modules.items():
            targets.setdefault(t, refs[0][1])
    return cands, targets


def _candidates(spec, how: str | Sequence[str], registry, fp, data_dir, grid_mods: dict[str, str],
                notes: list[str]) -> dict[str, str | None]:
    from adapters_xtl.pipeline import model_format_trainable
    from adapters_xtl.tasks import active_catalog, get_task

    reg_mods = {**_registry_modules(registry, fp), **grid_mods}
    own = _training_source(spec)
    out: dict[str, str | None] = {}
    if isinstance(how, str) and how in ("catalog", "registry"):
        if how == "registry":
            if registry is None or not reg_mods:
                raise XtlError(f"the registry {getattr(registry, 'root', None)} has no module trained alone on "
                               f"{fp.short()}", where="--candidates registry",
                               fix="train intermediate modules first (xtl train / xtl run), pass --registry, "
                               "or use --candidates catalog")
            names = sorted(reg_mods)
        else:
            names, hub_only = [], []
            for s in active_catalog():
                if not model_format_trainable(s) or s.group == "demo" and spec.group != "demo":
                    continue
                (names if _has_local_training_data(s, data_dir) else hub_only).append(s.name)
            if hub_only:
                notes.append(f"{len(hub_only)} catalog tasks have no local English training data (Hub only) and were "
                             "left out")
        for n in names:
            if n.startswith("mt:") or _training_source(get_task(n)) != own:
                out[n] = reg_mods.get(n)
    else:
        items = [x.strip() for x in (how.split(",") if isinstance(how, str) else how) if x and x.strip()]
        if not items:
            raise XtlError("no candidates given", where="--candidates", fix="catalog, registry or a comma list of tasks")
        from adapters_xtl.session import parse_ref

        for item in items:
            name, version = parse_ref(item)
            if registry is not None and (version or (name in registry.names() and name not in active_catalog())):
                try:
                    man = registry.manifest(name, version)
                except XtlError as e:
                    raise XtlError(f"unknown candidate module {item!r}: {e}", where="--candidates",
                                   fix="`xtl registry list` shows the modules") from None
                out[_module_task(man)] = f"{man.name}@{man.version}"
                continue
            try:
                t = get_task(item)
            except XtlError:
                raise XtlError(f"unknown candidate {item!r}", where="--candidates",
                               fix=did_you_mean(item, active_catalog().names())) from None
            if t.name == spec.name:
                raise XtlError(f"candidate {item!r} is the target itself", where="--candidates")
            out[t.name] = reg_mods.get(t.name)
    if not out:
        raise XtlError(f"no candidate intermediate tasks for {spec.name!r}", where="--candidates")
    missing = sorted(c for c, m in out.items() if m is None)
    if missing:
        notes.append(f"no trained module on this backbone for {', '.join(missing)}: their LogME, H-score, "
                     "weight-delta and alignment signals are missing (counted as average)")
    return out


def _backbone(backbone, fallback: str | None):
    from adapters_xtl.backbone import Backbone

    if backbone is None or isinstance(backbone, str):
        return Backbone.load(backbone or fallback or "xlmr-e5-small")
    return backbone


def _registry(registry):
    if registry is None or not isinstance(registry, (str, Path)):
        return registry
    from adapters_xtl.store.registry import Registry

    return Registry(registry)


def _catalog_of(grids: Sequence[Grid]):
    from adapters_xtl.tasks import TaskCatalog, active_catalog

    folders = [*active_catalog().folders]
    for g in grids:
        if g.plan is not None:
            folders += [Path(d) for d in g.plan.recipe.tasks_dir if Path(d) not in folders]
    return TaskCatalog(include=folders) if folders else active_catalog()


def compute_features(ctx: SignalContext, candidates: dict[str, str | None], target_refs: dict[str, str | None],
                     languages: dict[str, list[str]], log=None) -> dict[tuple[str, str, str], dict[str, float]]:
    """Every signal for every (candidate, target, language) asked for."""
    say = log or (lambda msg: None)
    say(f"text similarity of {len(candidates)} candidates and {len(target_refs)} targets")
    pair = ctx.text_similarity(list(candidates), list(target_refs))
    per_pair = {}
    for t, t_ref in target_refs.items():
        for c, ref in candidates.items():
            if ref is not None:
                say(f"LogME / H-score of {t} with {c} ({ref})")
            per_pair[(c, t)] = {**pair[(c, t)], **ctx.transferability(ref, t), "delta_sim": ctx.delta_similarity(ref, t_ref)}
            ctx.cache.save()  # as it goes: an interrupted suggestion keeps what it measured
    langs = sorted({l for ls in languages.values() for l in ls})
    per_lang = {}
    for lang in langs:
        say(f"alignment and URIEL distances for {lang}")
        per_lang[lang] = ctx.language_features(lang)
        for c, ref in candidates.items():
            per_lang[(c, lang)] = ctx.alignment_change(ref, lang)
        ctx.cache.save()
    out = {}
    for t, ls in languages.items():
        for lang in ls:
            for c in candidates:
                out[(c, t, lang)] = {**per_pair[(c, t)], **per_lang[lang], "align_delta": per_lang[(c, lang)]}
    return out


# --------------------------------------------------------------------------- the two entry points


def suggest(target: str, languages: Sequence[str], *, candidates: str | Sequence[str] = "catalog", registry=None,
            runs: Sequence[str | Path] = (), backbone=None, data_dir: str | Path | None = None,
            composition: str = "auto", ranker: str = "auto", n_examples: int = 200, align_pairs: int = 100,
            allow_other_backbone: bool = False, cache: bool | Path = True, log=None) -> Suggestion:
    """Rank candidate English intermediate tasks for ``target`` in each of ``languages`` before
    training: see docs/suggest.md.  ``runs`` are grid folders whose measured gains are evidence
    (their backbone must match unless ``allow_other_backbone``)."""
    t0 = time.perf_counter()
    notes: list[str] = []
    grids = [read_grid(r) for r in runs]
    registry = _registry(registry)
    with ExitStack() as stack:
        stack.enter_context(_catalog_of(grids).active())
        spec = _target(target)
        langs = _languages(spec, languages)
        bb = _backbone(backbone, next((g.backbone_name for g in grids if g.backbone_name), None))
        fp = bb.fingerprint
        notes += check_backbones(grids, fp.short(), allow_other=allow_other_backbone)
        data_dir = data_dir or next((g.data_dir for g in grids if g.data_dir), None)
        comp = pick_composition(grids, composition)
        grid_mods, grid_targets = _grid_modules(grids, registry, fp)
        cands = _candidates(spec, candidates, registry, fp, data_dir, grid_mods, notes)
        cells = [c for g in grids for c in run_cells(g, comp)]
        if registry is not None:
            cells += registry_cells(registry, fp, comp, exclude={(c.candidate, c.target, c.language) for c in cells})
        cells = _merge(cells)
        target_ref = grid_targets.get(spec.name) or _registry_target(registry, fp, spec.name)
        ctx = SignalContext(bb, registry, data_dir=data_dir, n_examples=n_examples, align_pairs=align_pairs,
                            cache=cache)
        feats = compute_features(ctx, cands, {spec.name: target_ref}, {spec.name: langs}, log=log)
        # the learned ranker and calibration see every measured cell (of any candidate)
        train_feats = _features_for_cells(ctx, cells, grid_mods, grid_targets, registry, fp, log)
        feats_all = {**train_feats, **feats}
        queries = [(spec.name, l) for l in langs]
        ranked, info = rank_queries(feats_all, queries, {q: list(cands) for q in queries}, cells, method=ranker)
        for q in queries:
            for r in ranked[q]:
                r.measured_gain = next((c.gain for c in cells if (c.candidate, *c.query) == (r.candidate, *q)), None)
        notes += info["notes"] + ctx.notes
    if not cells:
        notes.append("no measured gains (no --runs and none in the registry): ranked by the transfer signals alone, "
                     "with no predicted gain")
    evidence = {"cells": len(cells), "grids": [str(g.path) for g in grids], "train_queries": info["train_queries"],
                "calibration": info["calibration"],
                "per_candidate": {c: sum(1 for x in cells if x.candidate == c) for c in cands}}
    return Suggestion(target=spec.name, languages=langs, composition=comp, method=info["method"],
                      rankings={l: ranked[(spec.name, l)] for l in langs}, candidates=cands, evidence=evidence,
                      notes=notes, seconds=time.perf_counter() - t0)


def _registry_target(registry, fp, target: str) -> str | None:
    if registry is None:
        return None
    mans = [m for m in registry.all_manifests() if m.task == target and m.backbone == fp and _single(m)]
    if not mans:
        return None
    m = min(mans, key=lambda m: (m.seed, m.created_at))
    return f"{m.name}@{m.version}"


def _merge(cells: Sequence[Cell]) -> list[Cell]:
    """One cell per (candidate, target, language): several grids' gains averaged, seed-weighted."""
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.candidate, c.target, c.language), []).append(c)
    out = []
    for (cand, t, l), cs in groups.items():
        n = sum(c.seeds for c in cs)
        out.append(Cell(cand, t, l, sum(c.gain * c.seeds for c in cs) / n, n, cs[0].composition,
                        "; ".join(sorted({c.source for c in cs}))))
    return out


def _features_for_cells(ctx, cells, grid_mods, grid_targets, registry, fp, log):
    if not cells:
        return {}
    cands = sorted({c.candidate for c in cells})
    mods = {**_registry_modules(registry, fp), **grid_mods}
    targets = sorted({c.target for c in cells})
    langs = {t: sorted({c.language for c in cells if c.target == t}) for t in targets}
    return compute_features(ctx, {c: mods.get(c) for c in cands},
                            {t: grid_targets.get(t) or _registry_target(registry, fp, t) for t in targets}, langs,
                            log=log)


def evaluate_runs(runs: Sequence[str | Path], *, registry=None, backbone=None, data_dir: str | Path | None = None,
                  composition: str = "auto", ranker: str = "auto", n_examples: int = 200, align_pairs: int = 100,
                  allow_other_backbone: bool = False, cache: bool | Path = True, log=None) -> dict[str, Any]:
    """Leave-one-target-out and leave-one-language-out evaluation of the suggestions over the
    grids in ``runs`` (:func:`.evaluate.evaluate_cells`), with the baselines."""
    from .evaluate import evaluate_cells

    t0 = time.perf_counter()
    if not runs:
        raise XtlError("--evaluate needs grid folders", where="xtl suggest --evaluate RUN_DIR...",
                       fix="pass one or more folders `xtl run` wrote")
    grids = [read_grid(r) for r in runs]
    registry = _registry(registry)
    notes: list[str] = []
    with _catalog_of(grids).active():
        bb = _backbone(backbone, next((g.backbone_name for g in grids if g.backbone_name), None))
        fp = bb.fingerprint
        notes += check_backbones(grids, fp.short(), allow_other=allow_other_backbone)
        data_dir = data_dir or next((g.data_dir for g in grids if g.data_dir), None)
        comp = pick_composition(grids, composition)
        cells = _merge([c for g in grids for c in run_cells(g, comp)])
        if not cells:
            raise XtlError(f"the grids have no measured {comp!r} gains over single", where=", ".join(map(str, runs)),
                           fix="grids need `single` and a composition with one intermediate (stack or continue)")
        grid_mods, grid_targets = _grid_modules(grids, registry, fp)
        ctx = SignalContext(bb, registry, data_dir=data_dir, n_examples=n_examples, align_pairs=align_pairs,
                            cache=cache)
        feats = _features_for_cells(ctx, cells, grid_mods, grid_targets, registry, fp, log)
        res = evaluate_cells(cells, feats, method=ranker)
        notes += ctx.notes
    missing = sorted({c.candidate for c in cells} - set(grid_mods))
    if missing:
        notes.append(f"no registry module found for {', '.join(missing)} (pass the grids' --registry): their module "
                     "signals are missing")
    res.update({"composition": comp, "grids": [str(g.path) for g in grids], "backbone": fp.short(), "notes": notes,
                "seconds": round(time.perf_counter() - t0, 2), "ranker": ranker,
                "features": {"|".join(k): v for k, v in feats.items()},
                "measured": [vars(c) for c in cells]})
    for p in res["protocols"].values():
        p["verdicts"] = p["verdicts"] if p["n_queries"] else ["no held-out queries"]
    return res

