"""Grids: a recipe with every composition (and a multi-task intermediate) runs on one loaded
backbone, caches every cell, resumes after a crash, and ends in tables and figures."""

from __future__ import annotations

import json

import pytest
import yaml

from adapters_xtl.backbone import load_backbone
from adapters_xtl.evaluation import read_results
from adapters_xtl.recipe import expand, load_recipe
from adapters_xtl.reporting import score_table, write_report
from adapters_xtl.runner import describe, run_plan

from test_core import write_toy_task


def make_recipe(tmp_path, tiny_backbone_dir, seeds=(1, 2)) -> object:
    a = write_toy_task(tmp_path / "a")
    b = write_toy_task(tmp_path / "b", n_train=40)
    r = tmp_path / "grid.yaml"
    r.write_text(yaml.safe_dump({
        "name": "grid",
        "backbone": str(tiny_backbone_dir),
        "method": "lora",
        "seeds": list(seeds),
        "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "lr": 0.005, "log_every": 3},
        "intermediate": [{"task": str(a), "name": "ia"}, {"task": str(b), "name": "ib"},
                         {"multitask": [str(a), str(b)], "name": "imt", "sampling": "uniform"}],
        "targets": [{"task": str(a)}],
        "compositions": ["single", "stack", "fuse", {"kind": "merge", "how": "ties", "density": 0.5}, "continue"],
    }))
    return expand(load_recipe(r))


def test_grid_runs_caches_resumes_and_reports(tiny_backbone_dir, tmp_path, registry, monkeypatch):
    plan = make_recipe(tmp_path, tiny_backbone_dir)
    # per seed: single 1 + stack 3 + fuse 1 + merge 1 + continue 3
    assert len(plan.cells) == 18 and len(plan.modules) == 6
    kinds = {c.composition for c in plan.cells}
    assert kinds == {"single", "stack", "fuse", "merge", "continue"}
    info = describe(plan, registry)
    assert len(info["modules_to_train"]) == 6 and info["training_steps"] == 6 * 6 + 18 * 6
    bb = load_backbone(str(tiny_backbone_dir))
    run = tmp_path / "run"

    # a crash in the 5th cell keeps the 4 finished ones
    import adapters_xtl.pipeline as pipeline

    real = pipeline.train_module
    calls = {"n": 0}

    def flaky(*a, **k):
        if k.get("name", "").startswith("toy-sentiment-"):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "train_module", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, run, registry=registry, backbone=bb)
    done = list((run / "cells").glob("*.json"))
    assert len(done) == 4
    monkeypatch.setattr(pipeline, "train_module", real)

    run_plan(plan, run, registry=registry, backbone=bb)
    assert len(list((run / "cells").glob("*.json"))) == 18
    rows = read_results(run / "results.jsonl")
    assert len({r["cell"] for r in rows}) == 18
    per_cell = {}
    for r in rows:
        per_cell.setdefault(r["cell"], set()).add((r["language"], r["metric"]))
    assert all(len(v) == 4 for v in per_cell.values())  # en/de x accuracy/macro_f1, no duplicates
    # every score carries its n and 95% interval; every cell kept its per-example rows
    assert all(r["n"] > 0 and r["ci_low"] <= r["score"] <= r["ci_high"] for r in rows), [r for r in rows if "n" not in r][:2]
    assert {f.stem for f in (run / "predictions").glob("*.jsonl")} == set(per_cell)
    # intermediates were trained once each (6 = 3 x 2 seeds) and reused afterwards
    assert all(len(registry.versions(m.name)) == 1 for m in plan.modules)
    man = registry.manifest(next(m.name for m in plan.modules if m.multitask))
    assert man.multitask["sampling"] == "uniform" and man.head["kind"] == "multitask"

    # a finished grid re-runs from the cache: nothing trains, nothing is appended
    before = (run / "results.jsonl").read_text()
    run_plan(plan, run, registry=registry, backbone=bb)
    assert (run / "results.jsonl").read_text() == before
    assert describe(plan, registry, run_dir=run)["training_steps"] == 0

    # report: scores and gains (mean and std over the two seeds), heatmap and bars
    tables = score_table(rows)
    t = next(iter(tables.values()))
    assert ("single", "none") in t["rows"] and t["rows"][("single", "none")]["en"][2] == 2
    assert ("fuse", "ia+ib+imt") not in t["gain"]  # labels are the intermediate tasks
    assert any(k[0] == "merge" for k in t["gain"])
    md = write_report(run)
    text = md.read_text()
    assert "gain over no intermediate" in text and "heatmap.png" in text
    assert "Holm (family-wise error) correction across all" in text  # gains tested on the kept rows
    assert (run / "heatmap.png").stat().st_size > 1000 and (run / "report.csv").exists()
    cell = json.loads(next((run / "cells").glob("*.json")).read_text())
    assert cell["seconds"] >= 0 and cell["scores"]
    # module swaps (registry reads, attach, compose, teardown) are timed per cell, within the cell
    swaps = [json.loads(p.read_text())["swap_seconds"] for p in (run / "cells").glob("*.json")]
    assert all(0 <= s <= json.loads(p.read_text())["seconds"] for s, p in zip(swaps, (run / "cells").glob("*.json")))
    assert any(s > 0 for s in swaps)


def test_recipe_composition_errors(tmp_path):
    from adapters_xtl.errors import XtlError

    r = tmp_path / "r.yaml"
    r.write_text("name: x\ncompositions: [stack]\ntargets: [{task: demo-topic}]\n")
    with pytest.raises(XtlError, match="needs intermediate modules"):
        load_recipe(r)
    r.write_text("name: x\nintermediate: [{task: demo-nli}]\ncompositions: [{kind: fuse, modules: [demo-nl]}]\n")
    with pytest.raises(XtlError, match="did you mean 'demo-nli'"):
        load_recipe(r)
    r.write_text("name: x\nintermediate: [{multitask: [demo-nli]}]\n")
    with pytest.raises(XtlError, match="two or more"):
        load_recipe(r)


def test_task_training_defaults_are_the_bottom_layer_of_a_cell(tmp_path, tiny_backbone_dir):
    """A tagging task's `head_lr` (in its YAML) reaches grid cells as it reaches `xtl train`;
    the recipe's `train:` and each entry's `train:` override it, in that order."""
    task = write_toy_task(tmp_path / "t", extra_yaml="defaults: {train: {head_lr: 0.05, lr: 0.1, warmup_ratio: 0.2}}")
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({
        "name": "layers", "backbone": str(tiny_backbone_dir), "seeds": [1],
        "train": {"lr": 0.005, "steps": 4},
        "intermediate": [{"task": str(task), "name": "i", "train": {"warmup_ratio": 0.0}}],
        "targets": [{"task": str(task), "train": {"head_lr": 0.01}}],
        "compositions": ["single"],
    }))
    plan = expand(load_recipe(r))
    (module,) = plan.modules
    assert module.train == {"head_lr": 0.05, "lr": 0.005, "warmup_ratio": 0.0, "steps": 4, "seed": 1}
    (cell,) = plan.cells
    assert cell.train == {"head_lr": 0.01, "lr": 0.005, "warmup_ratio": 0.2, "steps": 4, "seed": 1}
