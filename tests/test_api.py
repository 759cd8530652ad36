"""The public API as a notebook uses it: `import adapters_xtl as xtl`, on a tiny XLM-R."""

from __future__ import annotations

import io
import warnings

import pytest

import adapters_xtl as xtl
from adapters_xtl.errors import XtlError
from adapters_xtl.progress import LogReporter, ProgressEvent

from test_core import write_toy_task


FAST = xtl.TrainConfig(steps=12, batch_size=8, eval_every=6, lr=5e-3, log_every=3)


@pytest.fixture()
def toy_world(tiny_backbone_dir, tmp_path):
    """A user task folder, the catalog that includes it, a tiny backbone and an empty registry."""
    task_file = write_toy_task(tmp_path / "toy")
    return (xtl.TaskCatalog(include=[task_file.parent]), xtl.Backbone.load(str(tiny_backbone_dir)),
            xtl.Registry(tmp_path / "registry"))


def test_public_names_import_lazily_and_resolve():
    for name in ("Backbone", "TaskCatalog", "LoRA", "Bottleneck", "TrainConfig", "Single", "Stack", "Fuse", "Merge",
                 "Continue", "MultiTask", "train", "evaluate", "predict", "Registry", "TaskModule", "Recipe", "run",
                 "report", "study", "suggest", "XtlError"):
        assert getattr(xtl, name) is not None, name
    with pytest.raises(AttributeError):
        xtl.no_such_name


def test_train_stack_evaluate_and_predict_through_the_api(toy_world, tmp_path):
    cat, bb, reg = toy_world
    inter = xtl.train(bb, cat.get("toy-sentiment"), method=xtl.LoRA(r=4), registry=reg, config=FAST, name="inter")
    assert inter.name == "inter@1"
    tgt = xtl.train(bb, cat.get("toy-sentiment"), method=xtl.LoRA(r=4), compose=xtl.Stack(inter.name),
                    registry=reg, config=FAST, name="tgt")
    assert tgt.manifest.composition == {"kind": "stack", "modules": ["inter@1"]}
    with cat.active():
        scores = xtl.evaluate(bb, tgt, languages=["de"], registry=reg)
    assert set(scores) == {"de"} and scores["de"]["accuracy"] == pytest.approx(tgt.scores["de"]["accuracy"])
    with cat.active(), reg.load_module("tgt@1", backbone=bb) as mod:
        out = mod.predict(["good film great acting", "terrible food and bad service"])
    assert len(out) == 2 and all(set(o["probabilities"]) == {"positive", "negative"} for o in out)
    assert all(abs(sum(o["probabilities"].values()) - 1) < 1e-5 for o in out)
    assert not any(p.requires_grad for p in bb.model.parameters())  # the session tore down


def test_predict_agrees_with_the_scores_of_evaluation(toy_world, tmp_path):
    cat, bb, reg = toy_world
    with cat.active():
        tm = xtl.train(bb, "toy-sentiment", registry=reg, name="m", languages=["en"],
                       config=xtl.TrainConfig(steps=40, batch_size=8, eval_every=40, lr=1e-2, log_every=10))
        import csv

        rows = list(csv.DictReader(open(tmp_path / "toy" / "test.tsv"), delimiter="\t"))
        with reg.load_module(tm.name, backbone=bb) as mod:
            preds = mod.predict([r["text"] for r in rows])
    acc = 100 * sum(p["label"] == r["label"] for p, r in zip(preds, rows)) / len(rows)
    assert acc == pytest.approx(tm.scores["en"]["accuracy"])


def test_unknown_module_version_names_the_versions_there_are(toy_world, tmp_path):
    cat, bb, reg = toy_world
    with cat.active():
        xtl.train(bb, "toy-sentiment", registry=reg, config=FAST, name="m", languages=["en"])
        with pytest.raises(XtlError, match="1"):
            reg.load_module("m@7", backbone=bb)


def test_long_inputs_are_truncated_with_one_warning(toy_world, tmp_path):
    cat, bb, reg = toy_world
    with cat.active():
        tm = xtl.train(bb, "toy-sentiment", registry=reg, config=FAST, name="m", languages=["en"])
        with reg.load_module(tm.name, backbone=bb) as mod, warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            mod.predict(["good film " * 400])
            mod.predict(["good film " * 400])
    cut = [str(w.message) for w in seen if "truncated" in str(w.message)]
    assert len(cut) == 1
    # the limit quoted is the one applied: the task's max_length capped by the tokenizer's
    from adapters_xtl.formats.base import encoder_limit

    assert f"at {encoder_limit(cat.get('toy-sentiment'), bb.tokenizer)} tokens" in cut[0]


def test_user_task_folders_join_the_catalog_without_the_environment(tmp_path):
    task_file = write_toy_task(tmp_path / "toy")
    cat = xtl.TaskCatalog(include=[task_file.parent])
    assert "toy-sentiment" in cat and "sib200" in cat
    assert "toy-sentiment" not in xtl.TaskCatalog()
    from adapters_xtl.tasks import get_task

    with pytest.raises(XtlError):
        get_task("toy-sentiment")
    with cat.active():
        assert get_task("toy-sentiment").name == "toy-sentiment"
    with pytest.raises(XtlError, match="does not exist"):
        xtl.TaskCatalog(include=[tmp_path / "nope"])


def test_multitask_is_trained_from_the_api(tiny_backbone_dir, tmp_path):
    a = write_toy_task(tmp_path / "a")
    b = write_toy_task(tmp_path / "b", extra_yaml="")
    b.write_text(b.read_text().replace("name: toy-sentiment", "name: toy-two"))
    cat = xtl.TaskCatalog(include=[a.parent, b.parent])
    bb = xtl.Backbone.load(str(tiny_backbone_dir))
    reg = xtl.Registry(tmp_path / "registry")
    with cat.active():
        mt = xtl.train(bb, xtl.MultiTask("toy-sentiment", "toy-two"), registry=reg, config=FAST)
    assert mt.manifest.format == "mixture" and mt.manifest.head["tasks"] == ["toy-sentiment", "toy-two"]
    with pytest.raises(XtlError):
        xtl.MultiTask("only-one")


def test_log_reporter_prints_timestamped_lines_at_most_every_n_seconds():
    now = [0.0]
    out = io.StringIO()
    rep = LogReporter(out, every=10, clock=lambda: now[0])
    rep(ProgressEvent("start", "job", 0, 100))
    for step in range(1, 51):
        now[0] = step * 1.0
        rep(ProgressEvent("advance", "job", step, 100, {"loss": 0.5}))
    rep(ProgressEvent("record", "other-job", 60, 100, {"loss": 0.1}))  # a Ray worker's point: for trackers only
    rep(ProgressEvent("end", "job", 100, 100))
    lines = out.getvalue().splitlines()
    assert "other-job" not in out.getvalue()
    assert lines[0].endswith("job: start 0/100") and lines[-1].split(" ", 2)[2].startswith("job: done 100/100")
    middle = lines[1:-1]
    assert len(middle) == 5 and all("loss 0.5000" in l and "eta" in l for l in middle)
