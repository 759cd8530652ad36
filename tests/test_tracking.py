"""Experiment trackers: the curves and final scores of a training run land in the tracker's own
store, under the folder the user named, and read back with the tracker's own reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import adapters_xtl as xtl
from adapters_xtl import tracking
from adapters_xtl.errors import XtlError
from adapters_xtl.progress import ProgressEvent

from test_core import write_toy_task

FAST = xtl.TrainConfig(steps=12, batch_size=8, eval_every=6, lr=5e-3, log_every=3)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_loss_lr_dev_and_zero_shot_scores_of_a_training_run(tiny_backbone_dir, tmp_path):
    task = write_toy_task(tmp_path / "toy")
    bb = xtl.Backbone.load(str(tiny_backbone_dir))
    with xtl.TaskCatalog(include=[task.parent]).active(), xtl.Tracker("tensorboard", tmp_path / "tb") as tb:
        tm = xtl.train(bb, "toy-sentiment", method=xtl.LoRA(r=4), registry=xtl.Registry(tmp_path / "reg"),
                       config=FAST, name="toy", tracker=tb)
    runs = [p for p in (tmp_path / "tb").iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["toy"]
    got = _scalars(runs[0])
    assert [s for s, _ in got["train/loss"]] == [3, 6, 9, 12]
    history = [h for h in tm.result.history if "loss" in h]
    assert [v for _, v in got["train/loss"]] == pytest.approx([h["loss"] for h in history], rel=1e-6)
    assert [v for _, v in got["train/lr"]] == pytest.approx([h["lr"] for h in history], rel=1e-5)
    assert [s for s, _ in got["dev/accuracy"]] == [6, 12]
    for lang in ("en", "de"):
        (step, value), = got[f"zero-shot/{lang}/accuracy"]
        assert step == 12 and value == pytest.approx(tm.scores[lang]["accuracy"], abs=1e-4)


def test_trackio_writes_its_local_store_in_the_named_folder_only(tmp_path):
    """In a fresh interpreter: trackio fixes its folder when imported, and must not fall back to
    ~/.cache/huggingface/trackio."""
    home = tmp_path / "hf-home"
    script = textwrap.dedent(f"""
        import json
        from adapters_xtl.progress import ProgressEvent
        from adapters_xtl.tracking import Tracker
        with Tracker("trackio", {str(tmp_path / 'store')!r}, project="demo", config={{"lr": 0.001}}) as t:
            for s in (3, 6):
                t(ProgressEvent("advance", "job-a", s, 6, {{"loss": 1.0 / s, "lr": 0.001}}))
            t(ProgressEvent("advance", "job-a", 6, 6, {{"dev_accuracy": 55.0}}))
            t.log_scores("job-a", {{"de": {{"accuracy": 60.0}}}})
            t(ProgressEvent("advance", "job-b", 3, 6, {{"loss": 0.7}}))
        from trackio.sqlite_storage import SQLiteStorage
        print(json.dumps({{"runs": SQLiteStorage.get_runs("demo"), "logs": SQLiteStorage.get_logs("demo", "job-a")}}))
    """)
    env = {**os.environ, "HF_HOME": str(home)}
    env.pop("TRACKIO_DIR", None)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1 and p.stdout.strip() == lines[0], p.stdout  # trackio's banners go to stderr
    out = json.loads(lines[0])
    assert sorted(out["runs"]) == ["job-a", "job-b"]
    steps = [(log["step"], {k: v for k, v in log.items() if "/" in k}) for log in out["logs"]]
    assert steps == [(3, {"train/loss": pytest.approx(1 / 3), "train/lr": 0.001}),
                     (6, {"train/loss": pytest.approx(1 / 6), "train/lr": 0.001}),
                     (6, {"dev/accuracy": 55.0}), (6, {"zero-shot/de/accuracy": 60.0})]
    assert (tmp_path / "store" / "demo.db").is_file()
    assert not (home / "trackio").exists()


def test_unknown_and_missing_trackers_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(XtlError, match="unknown tracker 'tensorbored'") as e:
        tracking.check_tracker("tensorbored")
    assert "tensorboard, trackio, mlflow, wandb" in str(e.value)
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    with pytest.raises(XtlError, match="needs the package 'mlflow'") as e:
        xtl.Tracker("mlflow", tmp_path / "ml")
    assert "pip install 'adapters_xtl[mlflow]'" in str(e.value)
    assert not (tmp_path / "ml").exists()
    assert tracking.check_tracker(None) is None and tracking.check_tracker("none") is None


def test_progress_events_fan_out_to_the_reporter_and_the_tracker(tmp_path):
    seen = []
    with xtl.Tracker("tensorboard", tmp_path / "tb") as tb:
        both = tracking.tracked(seen.append, tb)
        both(ProgressEvent("start", "job", 0, 4))
        both(ProgressEvent("advance", "job", 2, 4, {"loss": 0.5, "lr": 1e-3, "note": "x"}))
        both(ProgressEvent("advance", "grid demo", 1, 2))  # the grid's own bar is not a training curve
    assert len(seen) == 3
    assert tracking.tracked(None, None) is None and tracking.tracked(seen.append, None) == seen.append
    got = _scalars(tmp_path / "tb" / "job")
    assert got == {"train/loss": [(2, 0.5)], "train/lr": [(2, pytest.approx(1e-3))]}
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["job"]
