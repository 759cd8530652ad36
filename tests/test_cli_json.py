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
