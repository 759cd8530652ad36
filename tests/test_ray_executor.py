"""The Ray executor gives what the local one gives: the same rows and the same module weights;
a worker killed mid-cell costs a retry on another worker, not a row; a rerun is served from the
cache; a cell that fails for a user error fails alone, with its message.

One local Ray (2 CPUs, small object store, no dashboard) serves the whole module; the plans are
tiny (a 2-layer random XLM-R, 6 steps a module; single, stack and continue cells), and every
torch runs one thread, so that the local and the Ray runs do the same sums in the same order.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from adapters_xtl.errors import XtlError
from adapters_xtl.evaluation import read_results
from adapters_xtl.recipe import expand, load_recipe
from adapters_xtl.store.layout import WEIGHTS
from adapters_xtl.store.registry import Registry

from test_core import write_toy_task

ray = pytest.importorskip("ray", reason="the ray executor needs the `scale` extra (ray)")

TRAIN = {"steps": 6, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2, "lr": 0.005, "log_every": 2}


@pytest.fixture(scope="module")
def local_ray():
    """One Ray for the module: 2 CPUs, as the machines these tests run on."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 ** 2, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as each 1-CPU Ray worker: the same sums in the same order
    yield
    torch.set_num_threads(n)


def _plan(root, backbone_dir, targets=None, intermediate=True):
    task = write_toy_task(root / "task", n_train=32)
    recipe = {"name": "ray", "backbone": str(backbone_dir), "method": "lora", "seeds": [1], "train": TRAIN,
              "targets": [{"task": str(t), "eval_limit": 8} for t in (targets or [task])],
              "compositions": ["single", "stack", "continue"] if intermediate else ["single"]}
    if intermediate:
        recipe["intermediate"] = [{"task": str(task), "name": "ia"}]
    (root / "grid.yaml").write_text(yaml.safe_dump(recipe))
    return expand(load_recipe(root / "grid.yaml"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_backbone_dir, one_thread):
    """The plan, run by the local executor: rows and weights every Ray run must reproduce."""
    from rich.console import Console

    from adapters_xtl.backbone import load_backbone

    import adapters_xtl as xtl

    root = tmp_path_factory.mktemp("ray-plan")
    plan = _plan(root, tiny_backbone_dir)
    with xtl.Tracker("tensorboard", root / "tb-local") as tb:  # curves the Ray run's tracker must equal
        xtl.run(plan, root / "local", registry=Registry(root / "reg-local"), backbone=load_backbone(str(tiny_backbone_dir)),
                console=Console(file=open(os.devnull, "w")), progress=lambda ev: None, tracker=tb)
    return plan, root


def _rows(run_dir) -> list[dict]:
    return sorted(read_results(run_dir / "results.jsonl"), key=lambda r: (r["cell"], r["language"], r["metric"]))


def _weights(reg_root) -> dict[str, dict[str, torch.Tensor]]:
    reg = Registry(reg_root)
    return {n: load_file(str(reg.path(n, v) / WEIGHTS)) for n in reg.names() for v in reg.versions(n)}


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) for k in a[n])
                                        for n in a)


def _quiet():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


def test_ray_gives_the_local_rows_and_weights_and_a_rerun_is_cached(local_ray, reference):
    import adapters_xtl as xtl

    plan, root = reference
    ex = xtl.RayExecutor(workers=2, cpus_per_worker=1, console=_quiet())
    seen = []
    with xtl.Tracker("tensorboard", root / "tb-ray") as tb:
        results = xtl.run(plan, root / "ray", registry=Registry(root / "reg-ray"), executor=ex,
                          progress=lambda ev: seen.append(ev.kind), tracker=tb)
    assert ex.stats["workers_started"] == 2 and ex.stats["worker_deaths"] == 0 and not ex.stats["failed"]
    assert _rows(root / "ray") == _rows(root / "local")  # rows carry no timings: equal as they are
    assert len(_rows(root / "ray")) == len(plan.cells) * 4  # en/de x accuracy/macro_f1, each once
    assert _same_weights(_weights(root / "reg-ray"), _weights(root / "reg-local"))
    # the workers' training curves reach the driver's tracker (as "record" events): the same
    # runs, points and values as the local run's tracker wrote
    from test_tracking import _scalars

    local_runs = sorted(p.name for p in (root / "tb-local").iterdir())
    assert sorted(p.name for p in (root / "tb-ray").iterdir()) == local_runs and len(local_runs) == 4
    for run in local_runs:
        ray_curves = _scalars(root / "tb-ray" / run)
        assert ray_curves == _scalars(root / "tb-local" / run), run
        assert [s for s, _ in ray_curves["train/loss"]] == [2, 4, 6] and "dev/accuracy" in ray_curves, run
    assert "record" in seen
    # every module one version: the intermediate was trained once, before the cell on top of it
    assert all(Registry(root / "reg-ray").versions(n) == ["1"] for n in Registry(root / "reg-ray").names())

    before = results.read_text()
    xtl.run(plan, root / "ray", registry=Registry(root / "reg-ray"), executor=ex, progress=lambda ev: None)
    assert results.read_text() == before and ex.stats["workers_started"] == 0  # no worker even started
    # the same through the command line: served from the cache, then the report
    from adapters_xtl.cli import main

    assert main(["run", str(root / "grid.yaml"), "--executor", "ray", "--workers", "2", "--out", str(root / "ray"),
                 "--registry", str(root / "reg-ray")]) == 0
    assert results.read_text() == before and (root / "ray" / "report.md").exists()


def test_a_worker_killed_mid_cell_is_retried_on_another(local_ray, reference):
    from adapters_xtl.executors.ray import RayExecutor

    plan, root = reference
    run_dir = root / "killed"
    by_label = {c.label: c.key for c in plan.cells}
    killed: list[int] = []

    def kill_when_training(pid: int, key: str) -> None:
        """SIGKILL the worker once its cell has written a checkpoint: mid-training, for sure."""
        ckpt = run_dir / "checkpoints" / key / "checkpoint.pt"
        deadline = time.monotonic() + 60
        while not ckpt.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    def progress(ev):
        work = ev.fields.get("work")
        if ev.job.startswith("worker ") and work in by_label and not killed and not threads:
            threads.append(threading.Thread(target=kill_when_training, args=(ev.fields["pid"], by_label[work])))
            threads[0].start()

    threads: list[threading.Thread] = []
    ex = RayExecutor(workers=2, cpus_per_worker=1, console=_quiet())
    ex.run(plan, run_dir, registry=Registry(root / "reg-killed"), progress=progress)
    threads[0].join()
    assert killed and ex.stats["worker_deaths"] == 1 and ex.stats["retries"] == 1 and not ex.stats["failed"]
    assert ex.stats["workers_started"] == 3  # the dead one was replaced
    rows = _rows(run_dir)
    keys = [(r["cell"], r["language"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    assert rows == _rows(root / "local")  # nothing lost, nothing doubled, the same scores
    # the retried cell resumed from its checkpoint to the same weights; no second version
    assert _same_weights(_weights(root / "reg-killed"), _weights(root / "reg-local"))


def test_a_user_error_fails_its_cell_once_and_the_others_finish(local_ray, tmp_path, tiny_backbone_dir):
    from adapters_xtl.executors.ray import CellsFailed, RayExecutor

    broken = write_toy_task(tmp_path / "broken", n_train=32)
    broken.write_text(broken.read_text().replace("name: toy-sentiment", "name: toy-broken"))
    with open(tmp_path / "broken" / "test.tsv", "a") as f:
        f.write("ragged\trow\twith\ttoo many fields\n")
    good = write_toy_task(tmp_path / "good", n_train=32)
    plan = _plan(tmp_path, tiny_backbone_dir, targets=[good, broken], intermediate=False)
    ex = RayExecutor(workers=1, cpus_per_worker=1, console=_quiet())
    with pytest.raises(CellsFailed, match="1 of 2 work items failed") as e:
        ex.run(plan, tmp_path / "run", registry=Registry(tmp_path / "reg"), progress=lambda ev: None)
    [(label, msg)] = e.value.failures.items()
    assert "broken" in label and "test.tsv" in msg, msg  # the reader's XtlError, naming the file
    assert ex.stats["worker_deaths"] == 0 and ex.stats["retries"] == 0  # failed once, not retried
    good_cell = next(c for c in plan.cells if "broken" not in c.target)
    assert {r["cell"] for r in read_results(tmp_path / "run" / "results.jsonl")} == {good_cell.key}


def test_cli_ray_options(tmp_path, monkeypatch, capsys):
    """Ray's options without `--executor ray` are refused, bad values are XtlErrors, and without
    ray installed `--executor ray` says how to install it; all exit 2 before any work."""
    import sys

    from adapters_xtl.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ntargets: [{task: demo-topic}]\n")
    assert main(["run", str(recipe), "--workers", "2", "--out", str(tmp_path / "o")]) == 2
    assert main(["run", str(recipe), "--executor", "rey", "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(XtlError, match="--workers"):
        from adapters_xtl.executors.ray import RayExecutor

        RayExecutor(workers=0)
    with pytest.raises(XtlError, match="--gpus-per-worker"):
        RayExecutor(gpus_per_worker=-1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(XtlError, match=r"adapters_xtl\[scale\]"):
        RayExecutor(workers=1)
    capsys.readouterr()
    assert main(["run", str(recipe), "--executor", "ray", "--out", str(tmp_path / "o")]) == 2
    assert 'pip install "adapters_xtl[scale]"' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written
