"""`xtl train` keeps resumable checkpoints next to its results (issue 14): a run interrupted after
a checkpoint, run again with the same options, resumes there and registers the same weights as
a run never interrupted; a run with other options does not pick up those checkpoints."""

from __future__ import annotations

import importlib
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_core import write_toy_task


class InterruptAt:
    """A progress reporter that stops training (as Ctrl-C would) when step `step` is reported."""

    def __init__(self, step: int):
        self.step = step

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, ev):
        if ev.kind == "advance" and ev.completed >= self.step:
            raise KeyboardInterrupt


def xtl(argv: list[str]) -> tuple[int, str]:
    from adapters_xtl.cli import main

    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        rc = main(argv)
    return rc, out.getvalue()


@pytest.fixture()
def train_argv(tmp_path, tiny_backbone_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = write_toy_task(tmp_path / "toy")

    def argv(run: str, steps: int = 6) -> list[str]:
        return ["train", "--task", str(task), "--backbone", str(tiny_backbone_dir), "--name", "m", "--steps", str(steps),
                "--eval-every", "2", "--batch-size", "8", "--lr", "5e-3", "--languages", "en",
                "--registry", str(tmp_path / run / "registry"), "--results", str(tmp_path / run / "results.jsonl")]
    return argv


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "registry" / "m" / "1" / "weights.safetensors"))


def test_an_interrupted_train_resumes_from_its_checkpoint_to_the_same_weights(train_argv, tmp_path, monkeypatch):
    rc, _ = xtl(train_argv("whole"))
    assert rc == 0
    assert not any((tmp_path / "whole" / "checkpoints").iterdir())  # removed once registered

    cli_train = importlib.import_module("adapters_xtl.cli.train")  # the module (the package's `train` is the command)

    with monkeypatch.context() as m:
        m.setattr(cli_train, "progress", lambda: InterruptAt(6))  # after the step-4 checkpoint
        rc, out = xtl(train_argv("cut"))
    assert rc != 0 or "registered" not in out  # stopped (main's exit code for Ctrl-C is cli/__init__.py's)
    (ckpt,) = (tmp_path / "cut" / "checkpoints").iterdir()
    assert ckpt.name.startswith("m-") and any(ckpt.iterdir())
    assert not (tmp_path / "cut" / "registry" / "m").exists()  # nothing registered half-trained

    rc, out = xtl(train_argv("cut"))
    assert rc == 0, out
    assert "resumed from step 4" in out
    assert not ckpt.exists()
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from the uninterrupted run's"


def test_other_options_do_not_resume_someone_elses_checkpoint(train_argv, tmp_path, monkeypatch):
    cli_train = importlib.import_module("adapters_xtl.cli.train")  # the module (the package's `train` is the command)

    with monkeypatch.context() as m:
        m.setattr(cli_train, "progress", lambda: InterruptAt(6))
        xtl(train_argv("run", steps=6))
    assert not (tmp_path / "run" / "registry" / "m").exists()
    rc, out = xtl(train_argv("run", steps=8))
    assert rc == 0, out
    assert "resumed" not in out
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 1  # the 6-step run's, still resumable
