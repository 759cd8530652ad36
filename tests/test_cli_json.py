"""`--json`: stdout carries exactly one JSON document (everything a person reads goes to
stderr), so scripts can pipe any command into `jq` or `json.loads`."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest

import adapters_xtl as xtl

from test_core import write_toy_task

FAST = xtl.TrainConfig(steps=6, batch_size=8, eval_every=3, lr=5e-3, log_every=3)


def xtl_cli(argv: list[str]) -> tuple[int, str, str]:
    from adapters_xtl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def json_of(argv: list[str]):
    rc, out, err = xtl_cli(argv)
    assert rc == 0, err
    return json.loads(out), err


@pytest.fixture()
def trained(tmp_path, tiny_backbone_dir):
    task = write_toy_task(tmp_path / "toy")
    reg = xtl.Registry(tmp_path / "registry")
    with xtl.TaskCatalog(include=[task.parent]).active():
        tm = xtl.train(xtl.Backbone.load(str(tiny_backbone_dir)), "toy-sentiment", registry=reg, config=FAST, name="toy")
    return task, reg, tm


def test_tasks_json_lists_the_catalog_with_languages_and_metrics():
    tasks, _ = json_of(["tasks", "--json"])
    by_name = {t["name"]: t for t in tasks}
    assert "sib200" in by_name and "xnli" in by_name
    assert set(by_name["xnli"]) >= {"format", "group", "languages", "metrics", "main_metric", "description"}
    assert "sw" in by_name["xnli"]["languages"] and by_name["xnli"]["train_task"] == "mnli"
    targets, _ = json_of(["tasks", "--group", "target", "--json"])
    assert targets and all(t["group"] == "target" for t in targets)


def test_eval_json_prints_the_scores_and_sends_the_table_to_stderr(trained, tiny_backbone_dir, tmp_path):
    task, reg, tm = trained
    results = tmp_path / "eval.jsonl"
    got, err = json_of(["eval", "--task", str(task), "--module", "toy@1", "--backbone", str(tiny_backbone_dir),
                        "--registry", str(reg.root), "--results", str(results), "--languages", "de", "--json"])
    assert got["module"] == "toy@1" and got["task"] == "toy-sentiment" and got["results"] == str(results)
    assert got["scores"]["de"]["accuracy"] == pytest.approx(tm.scores["de"]["accuracy"])
    assert "toy@1 on toy-sentiment" in err  # the table, for a person, on stderr


def _small_recipe(tmp_path, tiny_backbone_dir, **extra):
    import yaml

    a = write_toy_task(tmp_path / "a")
    r = tmp_path / "grid.yaml"
    r.write_text(yaml.safe_dump({
        "name": "grid", "backbone": str(tiny_backbone_dir), "method": "lora", "seeds": [1],
        "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "lr": 0.005, "log_every": 3},
        "intermediate": [{"task": str(a), "name": "ia"}], "targets": [{"task": str(a)}],
        "compositions": ["single", "stack"], **extra}))
    return r


def test_run_dry_run_json_is_the_plan_and_its_estimate_and_writes_nothing(tmp_path, tiny_backbone_dir):
    recipe = _small_recipe(tmp_path, tiny_backbone_dir)
    got, err = json_of(["run", str(recipe), "--dry-run", "--json", "--out", str(tmp_path / "run"),
                        "--registry", str(tmp_path / "reg")])
    assert got["recipe"] == "grid" and got["cells"] == 2 and len(got["plan"]) == 2
    assert {c["composition"] for c in got["plan"]} == {"single", "stack"} and not any(c["cached"] for c in got["plan"])
    assert got["estimate"]["hours"] >= 0 and got["training_steps"] > 0
    assert "plan: grid" in err and not (tmp_path / "run").exists()


def test_run_json_with_a_tracker_reports_the_outcome_and_logs_every_module(tmp_path, tiny_backbone_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = _small_recipe(tmp_path, tiny_backbone_dir, tracker="tensorboard")  # the recipe key
    out = tmp_path / "run"
    got, err = json_of(["run", str(recipe), "--json", "--out", str(out), "--registry", str(tmp_path / "reg")])
    assert got["results"] == str(out / "results.jsonl") and got["rows"] > 0 and got["tracker"] == "tensorboard"
    runs = sorted(p.name for p in (out / "tracking").iterdir())
    assert "ia" in runs and len(runs) >= 2  # the intermediate and the target modules, one run each
    for name in runs:
        acc = EventAccumulator(str(out / "tracking" / name))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert "train/loss" in tags
        if name != "ia":  # target modules: their zero-shot scores at the end of the run
            assert any(t.startswith("zero-shot/de/") for t in tags), (name, tags)
    rc, _, err = xtl_cli(["run", str(recipe), "--tracker", "tensorbored", "--out", str(tmp_path / "o2")])
    assert rc == 2 and "unknown tracker 'tensorbored'" in err and not (tmp_path / "o2").exists()


def test_registry_list_and_show_json(trained):
    _, reg, tm = trained
    listed, _ = json_of(["registry", "list", "--registry", str(reg.root), "--json"])
    assert [m["ref"] for m in listed] == ["toy@1"] and listed[0]["task"] == "toy-sentiment"
    assert listed[0]["scores"]["de"]["accuracy"] == pytest.approx(tm.scores["de"]["accuracy"])
    shown, _ = json_of(["registry", "show", "toy", "--registry", str(reg.root), "--json"])
    assert shown["name"] == "toy" and shown["version"] == "1" and "weights.safetensors" in shown["files"]
    verified, _ = json_of(["registry", "verify", "--registry", str(reg.root), "--json"])
    assert verified["healthy"] is True and verified["registry"] == str(reg.root)


def test_train_json_with_a_tracker(tmp_path, tiny_backbone_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task = write_toy_task(tmp_path / "toy")
    results = tmp_path / "out" / "results.jsonl"
    got, err = json_of(["train", "--task", str(task), "--backbone", str(tiny_backbone_dir), "--name", "m",
                        "--steps", "6", "--eval-every", "3", "--batch-size", "8", "--lr", "5e-3",
                        "--registry", str(tmp_path / "reg"), "--results", str(results),
                        "--tracker", "tensorboard", "--json"])
    assert got["module"] == "m@1" and got["steps"] == 6 and set(got["scores"]) == {"en", "de"}
    assert got["tracker_dir"] == str(tmp_path / "out" / "tracking") and "registered m v1" in err
    acc = EventAccumulator(str(tmp_path / "out" / "tracking" / "m"))
    acc.Reload()
    assert {"train/loss", "train/lr", "dev/accuracy", "zero-shot/de/accuracy"} <= set(acc.Tags()["scalars"])
    rc, out, err = xtl_cli(["train", "--task", str(task), "--backbone", str(tiny_backbone_dir), "--tracker", "nope",
                            "--registry", str(tmp_path / "reg2"), "--results", str(tmp_path / "o2" / "r.jsonl")])
    assert rc == 2 and "unknown tracker 'nope'" in err and not (tmp_path / "reg2").exists()


def test_a_recipe_with_trimmed_embeddings_runs_on_a_trimmed_backbone(tmp_path, tiny_backbone_dir):
    from adapters_xtl.recipe import expand, load_recipe
    from adapters_xtl.runner import plan_backbone

    plan = expand(load_recipe(_small_recipe(tmp_path, tiny_backbone_dir, embeddings="trimmed")))
    with plan.recipe.catalog().active():
        trimmed = plan_backbone(plan)
    full = xtl.Backbone.load(str(tiny_backbone_dir))
    rows = trimmed.model.get_input_embeddings().weight.shape[0]
    assert rows < full.model.get_input_embeddings().weight.shape[0]
    got, _ = json_of(["run", str(tmp_path / "grid.yaml"), "--json", "--out", str(tmp_path / "run"),
                      "--registry", str(tmp_path / "reg")])
    assert got["rows"] > 0
