"""The planner prices grids from what this machine measured: training runs record their speed in
the log (throughput.py), and `estimate_hours` (cost.py) prefers a measurement of the same task
over FLOP/s over a peak-based guess."""

from __future__ import annotations

import json

import pytest

from adapters_xtl import throughput
from adapters_xtl.backbone import load_backbone
from adapters_xtl.cost import step_cost
from adapters_xtl.pipeline import train_module
from adapters_xtl.recipe import expand, load_recipe
from adapters_xtl.runner import describe, estimate_hours
from adapters_xtl.tasks import get_task
from adapters_xtl.trainer import TrainConfig

from test_core import write_toy_task


def row(task="t", sec=2.0, batch=16, flops=1e11, backbone="bb", **kw):
    return {"backbone": backbone, "quantization": "none", "method": "lora", "device": "cpu", "task": task,
            "batch_size": batch, "steps": 10, "seconds_per_step": sec, "flops_per_step": flops, **kw}


KEY = dict(backbone="bb", quantization="none", method="lora", device="cpu")


def test_same_task_wins_and_scales_with_batch():
    rows = [row(task="other", sec=9.0), row(task="t", sec=2.0, batch=16)]
    cost = step_cost(rows, **KEY, task="t", batch_size=32, flops_per_step=1.0, guess_flops_per_s=1.0)
    assert cost.source == "task" and cost.seconds == pytest.approx(4.0)


def test_other_tasks_give_flops_per_second():
    rows = [row(task="other", sec=2.0, flops=1e11)]  # 5e10 FLOP/s achieved
    cost = step_cost(rows, **KEY, task="t", batch_size=8, flops_per_step=1e11, guess_flops_per_s=1.0)
    assert cost.source == "flops" and cost.seconds == pytest.approx(2.0)


def test_nothing_measured_for_this_backbone_or_device_is_a_guess():
    rows = [row(backbone="another"), {**row(), "device": "cuda"}, {**row(), "quantization": "4bit"}]
    cost = step_cost(rows, **KEY, task="t", batch_size=8, flops_per_step=1e11, guess_flops_per_s=1e10)
    assert cost.source == "guess" and cost.seconds == pytest.approx(10.0)


def test_recent_measurements_count_median_of_last_five():
    rows = [row(sec=100.0)] * 3 + [row(sec=s) for s in (1.0, 2.0, 3.0, 4.0, 50.0)]
    cost = step_cost(rows, **KEY, task="t", batch_size=16, flops_per_step=1.0, guess_flops_per_s=1.0)
    assert cost.seconds == pytest.approx(3.0)


def test_records_survive_a_torn_line(tmp_path):
    throughput.record(row(sec=1.5), tmp_path)
    with open(tmp_path / throughput.FILE_NAME, "a") as f:
        f.write('{"backbone": "bb", "seconds_per')  # a writer killed mid-line
    throughput.record(row(sec=2.5), tmp_path)
    got = throughput.read(tmp_path)
    assert [r["seconds_per_step"] for r in got] == [1.5, 2.5]
    throughput.record(row(sec=0.0), tmp_path)  # nothing measured: nothing written
    assert len(throughput.read(tmp_path)) == 2


def test_training_records_its_speed_and_the_dry_run_uses_it(tiny_backbone_dir, tmp_path, registry, monkeypatch):
    monkeypatch.setenv("XTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XTL_THROUGHPUT", raising=False)
    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    tm = train_module(bb, str(task), name="toy-speed", registry=registry,
                      train_config=TrainConfig(steps=4, batch_size=8, eval_every=2, lr=0.005))
    rows = throughput.read()
    train_rows = [r for r in rows if r.get("kind", "train") == "train"]
    eval_rows = [r for r in rows if r.get("kind") == "eval"]
    assert len(train_rows) == 1 and len(eval_rows) == 1
    r = train_rows[0]
    assert r["backbone"] == bb.fingerprint.model_id and r["device"] == "cpu" and r["steps"] == 4
    assert r["task"] == tm.manifest.task and r["batch_size"] == 8
    # real tokens: every training row is 3..20 tokens long, so a batch of 8 holds 24..160
    assert 24 <= r["tokens_per_step"] <= 160
    assert 0 < r["seconds_per_step"] <= tm.result.seconds / 4  # dev evaluation is not counted
    assert r["flops_per_step"] > 0

    recipe = tmp_path / "r.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump({
        "name": "speed", "backbone": bb.fingerprint.model_id, "method": "lora", "seeds": [1],
        "train": {"steps": 10, "batch_size": 16},
        "intermediate": [], "targets": [{"task": str(task)}], "compositions": ["single"],
    }))
    plan = expand(load_recipe(recipe))
    # the evaluation row: every example scored once, in every language the module was scored on
    e = eval_rows[0]
    assert e["task"] == tm.manifest.task and e["steps"] == sum(1 for _ in tm.scores) * e["examples_per_language"]
    est = estimate_hours(plan, describe(plan, registry), device="cpu")
    assert est["sources"] == {"task": 2, "flops": 0, "guess": 0}  # one training, one evaluation
    assert est["train_hours"] * 3600 == pytest.approx(10 * r["seconds_per_step"] * 16 / 8)
    langs = len(plan.cells[0].languages or get_task(str(task)).languages)
    assert est["eval_hours"] * 3600 == pytest.approx(langs * e["examples_per_language"] * e["seconds_per_step"])
    assert est["hours"] == pytest.approx(est["train_hours"] + est["eval_hours"])
    json.dumps(est)  # plain data, printable as JSON
