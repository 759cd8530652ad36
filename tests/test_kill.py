"""No kill window: a checkpoint is one unit and a resumed run ends bit-identical; a grid cell
commits once (no duplicate or lost row, no second module version, whatever the moment of the
crash); one run per run folder; and the SIGKILL harness (tests/scripts/kill_harness.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adapters_xtl import checkpoint as ck
from adapters_xtl.backbone import load_backbone
from adapters_xtl.data import load_examples
from adapters_xtl.errors import XtlError
from adapters_xtl.evaluation import read_results
from adapters_xtl.methods import get_method
from adapters_xtl.model import TaskModel
from adapters_xtl.tasks import get_task
from adapters_xtl.trainer import TrainConfig, train

from test_core import write_toy_task

SCRIPTS = Path(__file__).parent / "scripts"


class Killed(BaseException):
    """Stands for a kill at an exact point (not an Exception: nothing may catch it)."""


# -- checkpoints ------------------------------------------------------------------------------


@pytest.fixture()
def fresh(tiny_backbone_dir, tmp_path):
    """A new model, LoRA with dropout (so the random state matters), trainable params, features."""
    spec = get_task(str(write_toy_task(tmp_path / "toy")))

    def make():
        bb = load_backbone(str(tiny_backbone_dir))
        torch.manual_seed(0)
        m = get_method("lora")
        m.add(bb, "t", m.make_config({"dropout": 0.2}))
        m.activate(bb, ["t"], trainable=["t"])
        model = TaskModel(bb, spec)
        params = {f"module.{n}": p for n, p in m.named_parameters(bb, "t").items()}
        params.update({f"head.{n}": p for n, p in model.head.named_parameters()})
        for p in params.values():
            p.requires_grad_(True)
        feats = model.format.encode(load_examples(spec, "train", "en"), spec, bb.tokenizer, train=True)
        dev_ex = load_examples(spec, "validation", "en")
        dev = model.format.encode(dev_ex, spec, bb.tokenizer, train=False)
        return model, params, feats, dev, dev_ex

    return make


CFG = TrainConfig(steps=9, batch_size=8, eval_every=3, checkpoint_every=2, lr=5e-3, log_every=2)


def run(make, cfg=CFG, **kw):
    model, params, feats, dev, dev_ex = make()
    res = train(model, params, feats, dev, dev_ex, cfg, **kw)
    return {n: p.detach().clone() for n, p in params.items()}, res


def crash_at(k):
    def hook(step):
        if step == k:
            raise Killed

    return hook


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), f"{n} differs after the resume"


@pytest.mark.parametrize("k", [1, 4, 7, 9])
def test_a_run_stopped_at_step_k_and_resumed_ends_bit_identical(fresh, tmp_path, k):
    reference, ref_res = run(fresh)
    with pytest.raises(Killed):
        run(fresh, checkpoint_dir=tmp_path / "ck", on_step=crash_at(k))
    weights, res = run(fresh, checkpoint_dir=tmp_path / "ck")
    assert res.resumed_from == ((k // 2) * 2 if k < 9 else 9)  # checkpoints at even steps and the last
    assert_identical(weights, reference)  # the best (dev) state, loaded at the end
    assert res.best_step == ref_res.best_step and res.history == ref_res.history
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [".lock", ck.CHECKPOINT]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_the_checkpoint_is_one_file_with_the_users_umask(fresh, tmp_path):
    old = os.umask(0o022)
    try:
        run(fresh, checkpoint_dir=tmp_path / "ck")
    finally:
        os.umask(old)
    state = torch.load(tmp_path / "ck" / ck.CHECKPOINT, weights_only=True)
    assert state["format"] == ck.FORMAT and state["step"] == CFG.steps
    assert {"weights", "best", "optimizer", "scheduler", "rng"} <= state.keys()
    assert {"python", "numpy", "torch", "cuda"} <= state["rng"].keys()
    assert os.stat(tmp_path / "ck" / ck.CHECKPOINT).st_mode & 0o777 == 0o644


def test_a_kill_inside_a_checkpoint_write_keeps_the_previous_one(fresh, tmp_path, monkeypatch):
    reference, _ = run(fresh)
    real_save, calls = torch.save, {"n": 0}

    def save_then_die(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint (step 6): half written, then the kill
            Path(f).write_bytes(b"PK\x03\x04 half a zip")
            raise Killed
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(Killed):
        run(fresh, checkpoint_dir=tmp_path / "ck")
    monkeypatch.undo()
    assert torch.load(tmp_path / "ck" / ck.CHECKPOINT, weights_only=True)["step"] == 4  # the one before
    weights, res = run(fresh, checkpoint_dir=tmp_path / "ck")
    assert res.resumed_from == 4
    assert_identical(weights, reference)


def test_a_damaged_old_or_foreign_checkpoint_is_ignored_and_training_starts_over(fresh, tmp_path):
    reference, _ = run(fresh)
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / ck.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        weights, res = run(fresh, checkpoint_dir=folder)
    assert res.resumed_from == 0
    assert_identical(weights, reference)
    # another run's checkpoint (other settings) in the folder: not resumed from
    weights, res = run(fresh, cfg=CFG.model_copy(update={"lr": 1e-2}), checkpoint_dir=folder)
    assert res.resumed_from == 0
    # the old two-file layout: ignored with a note, removed once a new checkpoint is written
    (folder / ck.CHECKPOINT).unlink()
    for name in ck.LEGACY_FILES:
        (folder / name).write_bytes(b"old")
    with pytest.warns(UserWarning, match="older format"):
        weights, res = run(fresh, checkpoint_dir=folder)
    assert res.resumed_from == 0 and not any((folder / n).exists() for n in ck.LEGACY_FILES)


def test_every_random_generator_is_restored():
    import random

    import numpy as np

    state = ck.rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(3))
    ck.restore_rng(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[0] == again[0] and draws[1] == again[1] and torch.equal(draws[2], again[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_the_cuda_generators_are_saved_and_restored():
    torch.rand(1, device="cuda")  # CUDA in use: its generators count
    state = ck.rng_state()
    assert state["cuda"] is not None and len(state["cuda"]) == torch.cuda.device_count()
    first = torch.nn.functional.dropout(torch.ones(1000, device="cuda"), 0.5)
    ck.restore_rng(state)
    assert torch.equal(first, torch.nn.functional.dropout(torch.ones(1000, device="cuda"), 0.5))


HOLD = """
import sys, time
from adapters_xtl.io import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_lock(path: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def release(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)  # the holder dies without cleaning up: the lock must go anyway
    p.wait()


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_second_trainer_on_one_checkpoint_folder_is_refused(fresh, tmp_path):
    p = hold_lock(tmp_path / "ck" / ck.LOCK)
    try:
        with pytest.raises(XtlError, match=f"another process \\(PID {p.pid}\\) is training") as e:
            run(fresh, checkpoint_dir=tmp_path / "ck")
        assert e.value.where == str(tmp_path / "ck")
    finally:
        release(p)
    _, res = run(fresh, checkpoint_dir=tmp_path / "ck")  # a killed holder leaves no stale lock
    assert res.steps == CFG.steps


# -- grid cells: one commit ----------------------------------------------------------------------


@pytest.fixture()
def grid(tmp_path, tiny_backbone_dir, registry):
    from adapters_xtl.recipe import expand, load_recipe

    task = write_toy_task(tmp_path / "a", n_train=32)
    r = tmp_path / "grid.yaml"
    r.write_text(yaml.safe_dump({
        "name": "k", "backbone": str(tiny_backbone_dir), "method": "lora", "seeds": [1],
        "train": {"steps": 4, "batch_size": 8, "eval_every": 2, "lr": 0.005, "log_every": 2},
        "intermediate": [{"task": str(task), "name": "ia"}], "targets": [{"task": str(task), "eval_limit": 10}],
        "compositions": ["single", "stack"],
    }))
    plan = expand(load_recipe(r))
    return plan, load_backbone(str(tiny_backbone_dir)), registry, tmp_path / "run"


def run_grid(grid):
    from rich.console import Console

    from adapters_xtl.runner import run_plan

    plan, bb, registry, run_dir = grid
    return run_plan(plan, run_dir, registry=registry, backbone=bb, console=Console(file=open(os.devnull, "w")),
                    progress=lambda event: None)


def assert_clean(grid):
    """Every cell's rows exactly once, each module one version, each record naming its module."""
    plan, _, registry, run_dir = grid
    rows = read_results(run_dir / "results.jsonl")
    keys = [(r["cell"], r["language"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    assert {k[0] for k in keys} == {c.key for c in plan.cells}, "lost rows"
    assert all(len(registry.versions(n)) == 1 for n in registry.names()), "a second version was trained"
    for c in plan.cells:
        rec = json.loads((run_dir / "cells" / f"{c.key}.json").read_text())
        assert sorted(map(json.dumps, rec["rows"])) == sorted(json.dumps(r) for r in rows if r["cell"] == c.key)
    text = (run_dir / "results.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())  # no half line left


def test_a_crash_after_registering_a_cell_module_reuses_it(grid, monkeypatch):
    import adapters_xtl.runner as runner

    real = runner._atomic_json

    def record_dies(path, obj):
        if path.parent.name == "cells":
            raise Killed  # the module is registered, its cell record not written
        return real(path, obj)

    monkeypatch.setattr(runner, "_atomic_json", record_dies)
    with pytest.raises(Killed):
        run_grid(grid)
    monkeypatch.undo()
    registry = grid[2]
    first = {n: registry.versions(n) for n in registry.names()}
    assert len(first) == 2  # the intermediate and the first cell's module
    run_grid(grid)
    assert_clean(grid)
    assert all(registry.versions(n) == v for n, v in first.items())


@pytest.mark.parametrize("how", ["before", "half"])
def test_a_crash_between_the_cell_record_and_its_rows_loses_and_repeats_nothing(grid, monkeypatch, how):
    import adapters_xtl.runner as runner

    def append_dies(path, rows):
        if how == "half":  # the kill lands inside the write: half a line at the end of the file
            with open(path, "ab") as f:
                f.write(json.dumps(rows[0]).encode()[:25])
        raise Killed

    monkeypatch.setattr(runner, "append_results", append_dies)
    with pytest.raises(Killed):
        run_grid(grid)
    monkeypatch.undo()
    assert len(list((grid[3] / "cells").glob("*.json"))) == 1  # committed, rows not yet appended
    run_grid(grid)
    assert_clean(grid)


def test_rows_of_a_cell_without_a_record_are_replaced_when_it_runs(grid):
    """An older version appended rows before writing the record; a kill between left rows that
    no record vouches for. When that cell runs they are replaced, not doubled."""
    run_grid(grid)
    plan, _, registry, run_dir = grid
    rows = read_results(run_dir / "results.jsonl")
    cell = plan.cells[1]
    (run_dir / "cells" / f"{cell.key}.json").unlink()  # as if its record had never been written
    with open(run_dir / "results.jsonl", "a") as f:  # ...and a stale copy of its rows
        f.write("".join(json.dumps({**r, "score": -1.0}) + "\n" for r in rows if r["cell"] == cell.key))
    run_grid(grid)
    rows = read_results(run_dir / "results.jsonl")
    assert not [r for r in rows if r["score"] == -1.0]
    keys = [(r["cell"], r["language"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)) and {k[0] for k in keys} == {c.key for c in plan.cells}


def test_a_finished_run_repairs_a_results_file_that_lost_its_rows(grid):
    run_grid(grid)
    run_dir = grid[3]
    full = (run_dir / "results.jsonl").read_text()
    (run_dir / "results.jsonl").write_text(full[: len(full) // 2])  # cut mid-file, mid-line
    run_grid(grid)  # every cell cached: the rows come back from the records
    assert_clean(grid)
    assert sorted(full.splitlines()) == sorted((run_dir / "results.jsonl").read_text().splitlines())


# -- one run per run folder ------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_second_run_on_one_folder_is_refused_naming_the_folder_and_pid(grid):
    from adapters_xtl.runner import RUN_LOCK

    run_dir = grid[3]
    p = hold_lock(run_dir / RUN_LOCK)
    try:
        with pytest.raises(XtlError, match=f"PID {p.pid} .*is already running in this folder") as e:
            run_grid(grid)
        assert e.value.where == str(run_dir) and "--out" in e.value.fix
        assert not (run_dir / "results.jsonl").exists() and grid[2].names() == []  # nothing done
    finally:
        release(p)
    run_grid(grid)  # the holder was SIGKILLed: no stale lock
    assert_clean(grid)


# -- the SIGKILL harness -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and fork")
def test_random_sigkills_during_train_run_and_registry_save_leave_nothing_broken(tiny_backbone_dir, tmp_path):
    sys.path.insert(0, str(SCRIPTS))  # stays: the harness's forkserver imports it from there
    import kill_harness

    trials = kill_harness.run_trials(tmp_path, tiny_backbone_dir, seed=14, out=sys.stdout)
    print(kill_harness.summary(trials))
    assert len(trials) >= 20
    bad = [t for t in trials if not t.ok]
    assert not bad, "\n".join(f"{t.scenario} {t.kill}: {t.problems}" for t in bad)
