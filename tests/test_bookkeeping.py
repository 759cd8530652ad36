"""Honest bookkeeping: a quick look (`--limit`) never passes for a module's result, every
retrieval mode is scored by its own protocol, and the dry-run prices evaluation too."""

from __future__ import annotations

import json

import pytest

from adapters_xtl.backbone import load_backbone
from adapters_xtl.evaluation import evaluate, read_results
from adapters_xtl.model import TaskModel
from adapters_xtl.pipeline import evaluate_module, train_module
from adapters_xtl.store.registry import Registry
from adapters_xtl.tasks import get_task
from adapters_xtl.trainer import TrainConfig

from test_catalog import _sentences, _write_bucc
from test_core import write_toy_task

FAST = TrainConfig(steps=6, batch_size=8, eval_every=6, lr=5e-3, log_every=3)


@pytest.fixture()
def trained(tiny_backbone_dir, tmp_path):
    bb = load_backbone(str(tiny_backbone_dir))
    reg = Registry(tmp_path / "registry")
    task = write_toy_task(tmp_path / "toy")
    tm = train_module(bb, str(task), name="toy", registry=reg, train_config=FAST)
    return bb, reg, task, tm


def test_a_limited_evaluation_leaves_the_recorded_scores_alone(trained, tmp_path):
    bb, reg, task, tm = trained
    full = reg.manifest("toy", None).scores
    assert set(full) == {"en", "de"}
    results = tmp_path / "results.jsonl"
    evaluate_module(bb, "toy", str(task), registry=reg, limit=3, results_path=results)
    assert reg.manifest("toy", None).scores == full  # the 3-example score did not overwrite it
    rows = read_results(results)
    assert rows and all(r["limit"] == 3 for r in rows)
    # a full evaluation does update the manifest, and its rows carry no limit
    evaluate_module(bb, "toy", str(task), registry=reg, languages=["de"], results_path=results)
    assert "limit" not in read_results(results)[-1]


def test_training_with_an_evaluation_limit_keeps_those_scores_apart(tiny_backbone_dir, tmp_path):
    bb = load_backbone(str(tiny_backbone_dir))
    reg = Registry(tmp_path / "registry")
    task = write_toy_task(tmp_path / "toy")
    tm = train_module(bb, str(task), name="quick", registry=reg, train_config=FAST, eval_limit=4)
    man = reg.manifest("quick", None)
    assert man.scores == {}
    limited = json.loads(man.model_dump_json())["limited_scores"]
    assert limited["limit"] == 4 and set(limited["scores"]) == {"en", "de"}
    assert tm.scores == limited["scores"]  # the caller still sees what was measured


def test_evaluate_mines_bitext_for_a_mining_task(tiny_backbone_dir, tmp_path):
    """BUCC is scored by mining (P/R/F1 at the best margin threshold), not as parallel pairs."""
    bb = load_backbone(str(tiny_backbone_dir))
    spec = get_task("bucc2018")
    gold_text = _sentences(10, 1)
    _write_bucc(tmp_path, "fr", "test", gold_text, list(gold_text), [(i, i) for i in range(10)], seed=5)
    preds: dict = {}
    scores = evaluate(TaskModel(bb, spec), spec, ["fr"], data_dir=tmp_path, predictions=preds)
    assert scores == {"fr": {"f1": 100.0, "precision": 100.0, "recall": 100.0}}
    assert len(preds["fr"]) == 10


def test_missing_test_data_of_a_requested_language_fails_before_training(tiny_backbone_dir, tmp_path):
    from adapters_xtl.errors import XtlError

    bb = load_backbone(str(tiny_backbone_dir))
    reg = Registry(tmp_path / "registry")
    task = write_toy_task(tmp_path / "toy", extra_yaml="")
    text = task.read_text().replace("languages: {en: en, de: en}", "languages: {en: en, de: en, sw: sw}")
    text = text.replace('test: {path: "' + str(tmp_path / "toy") + '/test.tsv"}',
                        'test: {path: "' + str(tmp_path / "toy") + '/test-{code}.tsv"}')
    task.write_text(text)
    (tmp_path / "toy" / "test-en.tsv").write_text((tmp_path / "toy" / "test.tsv").read_text())
    with pytest.raises(XtlError, match="sw"):
        train_module(bb, str(task), name="early", registry=reg, train_config=FAST, eval_languages=["en", "sw"])
    assert not (tmp_path / "registry" / "early").exists()  # nothing trained, nothing registered


def test_the_manifest_records_the_data_revisions_resolved_at_run_time(tiny_backbone_dir, tmp_path, monkeypatch):
    import adapters_xtl.pipeline as P

    monkeypatch.setattr(P, "resolved_revisions", lambda: {"Davlan/sib200": "0123abcd"})
    bb = load_backbone(str(tiny_backbone_dir))
    reg = Registry(tmp_path / "registry")
    task = write_toy_task(tmp_path / "toy")
    train_module(bb, str(task), name="rev", registry=reg, train_config=FAST)
    assert reg.manifest("rev", None).data_revisions == {"Davlan/sib200": "0123abcd"}
