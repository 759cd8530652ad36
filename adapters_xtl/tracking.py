"""Experiment trackers: the training curves and final zero-shot scores of `xtl train` / `xtl run`
in the tool a lab already reads (TensorBoard, Trackio, MLflow, Weights & Biases).

A tracker listens to the same progress events the terminal bars do (`progress.ProgressEvent`:
loss, learning rate and dev score per logged step; see `trainer.train`), so the training loop
knows nothing about trackers. Each training job (one module) becomes one tracker run named after
the module; its final per-language scores are logged at its last step under
`zero-shot/<lang>/<metric>`. Every backend is an optional extra, imported only when chosen, and
writes only under the folder it is given (TensorBoard event files, Trackio's SQLite store,
MLflow's `mlruns/`, W&B's offline run folder), never to a home-directory default.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Callable

from .errors import XtlError
from .progress import ProgressEvent

__all__ = ["TRACKERS", "Tracker", "check_tracker", "tracked"]

# tracker -> (package it needs, extra that installs it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "trackio": ("trackio", "trackio"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}

_METRIC_FIELDS = {"loss": "train/loss", "lr": "train/lr"}


def check_tracker(name: str | None, where: str = "--tracker") -> str | None:
    """The tracker's name, or an error naming the ones there are (checked before any work)."""
    if name is None or name == "none":
        return None
    if name not in TRACKERS:
        raise XtlError(f"unknown tracker {name!r}", where=where,
                       fix=f"one of: {', '.join(TRACKERS)} (or leave it out for none)")
    package, extra = TRACKERS[name]
    if importlib.util.find_spec(package) is None:  # found, not imported: trackio reads its folder at import
        raise _missing(name, package, where)
    return name


def _missing(name: str, package: str, where: str) -> XtlError:
    return XtlError(f"the {name} tracker needs the package {package!r}, which is not installed", where=where,
                    fix=f"pip install 'adapters_xtl[{TRACKERS[name][1]}]'")


def _import(name: str, where: str = "--tracker"):
    package = TRACKERS[name][0]
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise _missing(name, e.name or package, where) from None


def _run_name(job: str) -> str:
    """A job description as a folder/run name (`sib200-lora@2` -> `sib200-lora_2`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", job).strip("._") or "job"


class Tracker:
    """One tracker backend writing under `folder`; `project` names the experiment (recipe or task).

    Use it as a progress callback (`tracked(progress, tracker)`), then `log_scores` for each job's
    final zero-shot scores, and `close()` (or `with Tracker(...)`) at the end.
    """

    def __init__(self, kind: str, folder: str | Path, *, project: str = "adapters_xtl",
                 config: dict[str, Any] | None = None):
        self.kind = check_tracker(kind, "tracker")
        if self.kind is None:
            raise XtlError("Tracker needs a backend", where="tracker", fix=f"one of: {', '.join(TRACKERS)}")
        self.folder = Path(folder)
        self.project = _run_name(project)
        self.config = dict(config or {})
        self._runs: dict[str, Any] = {}  # job -> backend run/writer
        self._last_step: dict[str, int] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        self._backend = {"tensorboard": _TensorBoard, "trackio": _Trackio, "mlflow": _MLflow,
                         "wandb": _Wandb}[self.kind](self)

    # -- what the library calls ---------------------------------------------------------------

    def __call__(self, ev: ProgressEvent) -> None:
        if ev.kind not in ("advance", "record") or ev.job.startswith("grid "):
            return
        metrics = {}
        for key, value in ev.fields.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key in _METRIC_FIELDS:
                metrics[_METRIC_FIELDS[key]] = float(value)
            elif key.startswith("dev_"):
                metrics[f"dev/{key[4:]}"] = float(value)
        if metrics:
            self.log(ev.job, ev.completed, metrics)

    def log(self, job: str, step: int, metrics: dict[str, float]) -> None:
        self._last_step[job] = max(step, self._last_step.get(job, 0))
        self._backend.log(job, step, metrics)

    def log_scores(self, job: str, scores: dict[str, dict[str, float]], step: int | None = None) -> None:
        """A module's final zero-shot scores (language -> metric -> value), one point each."""
        flat = {f"zero-shot/{lang}/{metric}": float(v) for lang, ms in scores.items() for metric, v in ms.items()
                if isinstance(v, (int, float))}
        if flat:
            self.log(job, step if step is not None else self._last_step.get(job, 0), flat)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tracked(progress: Callable[[ProgressEvent], None] | None, tracker: Tracker | None):
    """A progress callback that feeds both the caller's reporter and the tracker."""
    if tracker is None:
        return progress
    if progress is None:
        return tracker

    def both(ev: ProgressEvent) -> None:
        progress(ev)
        tracker(ev)

    return both


# -- backends ------------------------------------------------------------------------------------


class _TensorBoard:
    """One event-file folder per job under `<folder>/<job>` (TensorBoard shows them as runs)."""

    def __init__(self, t: Tracker):
        self.t = t
        self.writers: dict[str, Any] = {}

    def log(self, job, step, metrics):
        w = self.writers.get(job)
        if w is None:
            from torch.utils.tensorboard import SummaryWriter

            w = self.writers[job] = SummaryWriter(log_dir=str(self.t.folder / _run_name(job)))
            if self.t.config:
                w.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(self.t.config.items())), 0)
        for key, value in metrics.items():
            w.add_scalar(key, value, step)
        w.flush()

    def close(self):
        for w in self.writers.values():
            w.close()
        self.writers.clear()


class _Trackio:
    """Trackio's local SQLite store, kept in `<folder>` (TRACKIO_DIR), one run per job."""

    def __init__(self, t: Tracker):
        self.t = t
        want = str(t.folder.resolve())
        import sys

        if "trackio" in sys.modules:
            from trackio import utils

            if str(Path(utils.TRACKIO_DIR).resolve()) != want:
                raise XtlError(f"trackio is already imported with its store in {utils.TRACKIO_DIR}", where="tracker",
                               fix=f"set TRACKIO_DIR={want} before starting Python, or use that folder")
        else:
            os.environ["TRACKIO_DIR"] = want  # read once, at trackio's import
        self.trackio = _import("trackio", "tracker")
        self.job: str | None = None

    def _switch(self, job: str) -> None:
        if self.job != job:
            with _chatter_to_stderr():
                if self.job is not None:
                    self.trackio.finish()
                self.trackio.init(project=self.t.project, name=_run_name(job), config=self.t.config or None,
                                  embed=False)
            self.job = job

    def log(self, job, step, metrics):
        self._switch(job)
        self.trackio.log(metrics, step=step)

    def close(self):
        if self.job is not None:
            with _chatter_to_stderr():
                self.trackio.finish()
            current = getattr(getattr(self.trackio, "context_vars", None), "current_run", None)
            if current is not None:  # finish() keeps it, and trackio's atexit would finish (and print) again
                current.set(None)
            self.job = None


def _chatter_to_stderr():
    """Trackio prints its banners to stdout, where `--json` output goes: send them to stderr."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr)


class _MLflow:
    """A file store in `<folder>/mlruns`, one MLflow run per job in experiment `project`."""

    def __init__(self, t: Tracker):
        self.t = t
        self.mlflow = _import("mlflow", "tracker")
        self.mlflow.set_tracking_uri((t.folder / "mlruns").resolve().as_uri())
        self.mlflow.set_experiment(t.project)
        self.job: str | None = None

    def log(self, job, step, metrics):
        if self.job != job:
            self.close()
            self.mlflow.start_run(run_name=_run_name(job))
            if self.t.config:
                self.mlflow.log_params({k: str(v)[:500] for k, v in self.t.config.items()})
            self.job = job
        self.mlflow.log_metrics({k.replace("@", "_"): v for k, v in metrics.items()}, step=step)

    def close(self):
        if self.job is not None:
            self.mlflow.end_run()
            self.job = None


class _Wandb:
    """W&B runs written under `<folder>/wandb`; offline unless WANDB_MODE says otherwise (sync
    them with `wandb sync`), so a missing login never blocks a training run."""

    def __init__(self, t: Tracker):
        self.t = t
        self.wandb = _import("wandb", "tracker")
        self.run = None
        self.job: str | None = None

    def log(self, job, step, metrics):
        if self.job != job:
            self.close()
            self.run = self.wandb.init(project=self.t.project, name=_run_name(job), dir=str(self.t.folder),
                                       config=self.t.config or None, mode=os.environ.get("WANDB_MODE", "offline"),
                                       reinit=True)
            self.job = job
        self.run.log(metrics, step=step)

    def close(self):
        if self.run is not None:
            self.run.finish()
            self.run, self.job = None, None
