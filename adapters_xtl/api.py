"""The public Python API: what `import adapters_xtl as xtl` gives a notebook.

Few names, each doing one whole step of the flow (backbone -> train -> evaluate -> predict ->
grids -> reports); the CLI is a shell over exactly these. Everything else in the package is
an implementation detail that may move.

    import adapters_xtl as xtl
    bb  = xtl.Backbone.load("xlmr-e5-small")
    reg = xtl.Registry("registry/")
    nli = xtl.train(bb, "xnli-local", method=xtl.LoRA(r=8), registry=reg, config=xtl.TrainConfig(steps=300))
    tgt = xtl.train(bb, "sib200", compose=xtl.Stack(nli.name), registry=reg)
    xtl.evaluate(bb, tgt, languages=["de", "sw"], registry=reg)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .backbone import Backbone
from .compose import Block, Continue, Fuse, Language, Merge, Single, Stack  # noqa: F401  (public)
from .errors import XtlError
from .methods.base import MethodConfig
from .methods.bottleneck import BottleneckSettings as Bottleneck
from .methods.ia3 import IA3Settings as IA3
from .methods.lora import LoraSettings as LoRA
from .pipeline import TrainedModule, evaluate_module, train_module
from .recipe import Plan
from .store.registry import Registry as _StoreRegistry
from .tasks import TaskCatalog, TaskSpec, get_task
from .tracking import Tracker, tracked
from .trainer import TrainConfig

__all__ = ["Backbone", "TaskCatalog", "LoRA", "Bottleneck", "TrainConfig", "Single", "Stack", "Fuse", "Merge",
           "Continue", "Block", "MultiTask", "train", "evaluate", "predict", "Registry", "TaskModule", "Recipe", "run", "report", "suggest",
           "study", "XtlError", "LocalExecutor", "RayExecutor", "Tracker", "Language", "train_language"]

from .executors import LocalExecutor  # noqa: E402
from .executors.ray import RayExecutor  # noqa: E402  (imports ray only when made)


class Registry(_StoreRegistry):
    """The module registry (a folder), plus loading a module for inference."""

    def load_module(self, ref: str, *, backbone: Backbone, task: "str | TaskSpec | None" = None,
                    allow_backbone_mismatch: bool = False, languages: "list[str] | None" = None):
        """`name` or `name@version` -> a `TaskModule` with `.predict(texts)` (on language modules:
        `languages` to load besides the ones its manifest pins, `.predict(texts, language=...)`)."""
        return TaskModule(backbone, self, ref, task=task, allow_backbone_mismatch=allow_backbone_mismatch,
                          languages=languages)


from .inference import TaskModule  # noqa: E402


@dataclass(frozen=True)
class MultiTask:
    """One intermediate module trained on a mix of tasks (the paper's multi-task variant):
    pass it to `train` in place of a task. `sampling` proportional (capped at `cap` examples
    per task, as T5) or uniform."""

    tasks: tuple[str, ...]
    sampling: str = "proportional"
    cap: int | None = None

    def __init__(self, *tasks: str, sampling: str = "proportional", cap: int | None = None):
        if len(tasks) == 1 and isinstance(tasks[0], (list, tuple)):
            tasks = tuple(tasks[0])
        if len(tasks) < 2:
            raise XtlError("MultiTask mixes two or more tasks", where="MultiTask", fix="MultiTask('sst2', 'mnli')")
        if sampling not in ("proportional", "uniform"):
            raise XtlError(f"unknown sampling {sampling!r}", where="MultiTask.sampling", fix="proportional | uniform")
        object.__setattr__(self, "tasks", tuple(tasks))
        object.__setattr__(self, "sampling", sampling)
        object.__setattr__(self, "cap", cap)


def _method(method: "MethodConfig | str | None") -> tuple[str, dict]:
    if method is None:
        return "lora", {}
    if isinstance(method, str):
        return method, {}
    if isinstance(method, MethodConfig):
        from .methods import method_of_config

        return method_of_config(method), method.model_dump()
    raise XtlError(f"method must be xtl.LoRA(...), xtl.Bottleneck(...) or a method name, got {method!r}",
                   where="method")


def _task(task, catalog: TaskCatalog | None) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else (catalog.get(task) if catalog else get_task(task))


def train(backbone: Backbone, task: "str | TaskSpec | MultiTask", *, method: "MethodConfig | str | None" = None,
          compose: "Block | dict | None" = None, registry: "Registry | None" = None,
          config: "TrainConfig | dict | None" = None, name: str | None = None, languages: list[str] | None = None,
          eval_limit: int | None = None, data_dir: "str | Path | None" = None, results: "str | Path | None" = None,
          checkpoint_dir: "str | Path | None" = None, catalog: TaskCatalog | None = None,
          progress=None, tracker: "Tracker | None" = None) -> TrainedModule:
    """Train a task module on the task's English data (on top of `compose`'s frozen
    intermediates), score it zero-shot on `languages` (default: all of the task's) and register
    it. `config` fields override the task's own training defaults. Returns the trained module;
    its `.name` is the pinned registry reference (`name@version`). A `tracker`
    (`xtl.Tracker("tensorboard", folder)`) gets the loss, learning rate and dev score per logged
    step and the final zero-shot scores; the caller closes it."""
    if tracker is not None:
        tm = train(backbone, task, method=method, compose=compose, registry=registry, config=config, name=name,
                   languages=languages, eval_limit=eval_limit, data_dir=data_dir, results=results,
                   checkpoint_dir=checkpoint_dir, catalog=catalog, progress=tracked(progress, tracker))
        tracker.log_scores(tm.manifest.name, tm.scores, step=tm.manifest.steps)
        return tm
    method_name, method_config = _method(method)
    registry = registry or Registry()
    data_dir = Path(data_dir) if data_dir else None
    if isinstance(task, MultiTask):
        from .multitask import train_multitask_module

        specs = [_task(t, catalog) for t in task.tasks]
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.resolve(None, config)
        return train_multitask_module(
            backbone, [s.name for s in specs], name=name or "mt-" + "-".join(s.name for s in specs) + f"-{method_name}",
            method=method_name, method_config=method_config, train_config=cfg, registry=registry,
            sampling=task.sampling, cap=task.cap, data_dir=data_dir, progress=progress,
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None)
    spec = _task(task, catalog)
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.resolve(spec, config)
    for lang in languages or []:
        spec.language_code(lang)
    return train_module(backbone, spec, name=name or f"{spec.name}-{method_name}", method=method_name,
                        method_config=method_config, train_config=cfg, registry=registry, composition=compose,
                        eval_languages=languages, eval_limit=eval_limit, data_dir=data_dir,
                        results_path=Path(results) if results else None,
                        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None, progress=progress)


def evaluate(backbone: Backbone, module: "TrainedModule | str | None", task: "str | TaskSpec | None" = None, *,
             languages: list[str] | None = None, registry: "Registry | None" = None, limit: int | None = None,
             data_dir: "str | Path | None" = None, results: "str | Path | None" = None,
             catalog: TaskCatalog | None = None) -> dict[str, dict[str, float]]:
    """Zero-shot scores per language and metric (percent) of a module (a `train` result or a
    registry reference) on its own task or `task`; `module=None` scores the bare backbone on a
    retrieval task."""
    registry = registry or Registry()
    ref = module.name if isinstance(module, TrainedModule) else module
    if task is None:
        if ref is None:
            raise XtlError("evaluate needs a task when no module is given", where="task")
        from .session import parse_ref

        n, v = parse_ref(ref)
        task = registry.manifest(n, v).task
    return evaluate_module(backbone, ref, _task(task, catalog), registry=registry, languages=languages,
                           data_dir=Path(data_dir) if data_dir else None, limit=limit,
                           results_path=Path(results) if results else None)


class Recipe:
    """A grid as YAML (backbone, method, intermediates, compositions, targets, seeds);
    `Recipe.load(path).expand()` gives the Plan that `run` executes."""

    def __init__(self, spec):
        self.spec = spec

    @classmethod
    def load(cls, path: "str | Path", overrides: dict | None = None) -> "Recipe":
        from .recipe import load_recipe

        return cls(load_recipe(path, overrides))

    @property
    def name(self) -> str:
        return self.spec.name

    def expand(self) -> Plan:
        from .recipe import expand

        return expand(self.spec)


def run(plan: "Plan | Recipe | str | Path", out: "str | Path | None" = None, *, registry: "Registry | None" = None,
        backbone: Backbone | None = None, executor=None, device: str | None = None, console=None,
        progress=None, tracker: "Tracker | None" = None) -> Path:
    """Run a plan's cells (resumably: finished cells are cached in `out/cells`), append their
    rows to `out/results.jsonl` and return that path. `executor` defaults to this process. A
    `tracker` gets every trained module's curves and, at the end, each cell's zero-shot scores."""
    if tracker is not None:
        path = run(plan, out, registry=registry, backbone=backbone, executor=executor, device=device,
                   console=console, progress=tracked(progress, tracker))
        from .evaluation import read_results

        for module, scores in _scores_by_module(read_results(path)).items():
            tracker.log_scores(module, scores)
        return path
    if isinstance(plan, (str, Path)):
        plan = Recipe.load(plan)
    if isinstance(plan, Recipe):
        plan = plan.expand()
    out = Path(out) if out else Path("runs") / plan.recipe.name
    if executor is None:
        executor = LocalExecutor(device=device, console=console)
    return executor.run(plan, out, registry=registry or Registry(), backbone=backbone, progress=progress)


def _scores_by_module(rows: "list[dict]") -> "dict[str, dict[str, dict[str, float]]]":
    """results rows -> module name (unversioned, as its training job is named) -> language -> metric."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        if r.get("module") and r.get("language") and r.get("metric") and isinstance(r.get("score"), (int, float)):
            job = str(r["module"]).split("@")[0]
            out.setdefault(job, {}).setdefault(r["language"], {})[r["metric"]] = r["score"]
    return out


def report(run_dir: "str | Path", title: str | None = None, *, correction: str = "holm",
           alpha: float = 0.05) -> dict[str, Any]:
    """Write report.md/report.csv (and figures) for a run folder; return the score tables.

    Gains are tested with a paired bootstrap over the test examples the run kept
    (`<run>/predictions/`) and marked significant after `correction` ("holm" or "bh") across
    all gains of the report at level `alpha`."""
    from .evaluation import read_results
    from .reporting import load_predictions, score_table, write_report

    run_dir = Path(run_dir)
    if not (run_dir / "results.jsonl").exists():
        raise XtlError(f"no results.jsonl in {run_dir}", where="run_dir", fix="pass the folder `xtl run` wrote")
    tables = score_table(read_results(run_dir / "results.jsonl"), load_predictions(run_dir), correction=correction,
                         alpha=alpha)  # checks the options before anything is written
    path = write_report(run_dir, title, correction=correction, alpha=alpha)
    return {"report": path, "tables": tables}


def study(name: str, **kwargs):
    """Run one of the studies (`steps`, `typology`, `morphology`, `similarity`,
    `intermediate-language`) end to end; see docs/studies.md."""
    from .studies import run_study

    return run_study(name, **kwargs)


def suggest(target: str, languages: "list[str]", **kwargs):
    """Rank candidate English intermediate tasks for `target` in each language before training
    (signals on the frozen backbone plus measured gains of `runs=[...]` grids and the registry);
    see docs/suggest.md. Returns a `Suggestion` (`.rankings[lang]`, `.render()`, `.as_dict()`)."""
    from .suggest import suggest as _suggest

    return _suggest(target, languages, **kwargs)


def predict(module: "str", texts: "Iterable[str | dict]", *, backbone: Backbone, registry: "Registry | None" = None,
            task: str | None = None, batch_size: int = 32, language: str | None = None) -> list[dict]:
    """Shortcut: load a module, predict, take it off the backbone again (`language`: the texts'
    language, for a module trained on language modules)."""
    with (registry or Registry()).load_module(module, backbone=backbone, task=task,
                                              languages=[language] if language else None) as mod:
        return mod.predict(list(texts), batch_size=batch_size, language=language)


def train_language(backbone: Backbone, language: str, text: "str | Path | list[str | Path]", *,
                   method: "MethodConfig | str | None" = "bottleneck", registry: "Registry | None" = None,
                   config: "TrainConfig | dict | None" = None, name: str | None = None,
                   data_dir: "str | Path | None" = None, max_length: int = 128,
                   checkpoint_dir: "str | Path | None" = None, progress=None):
    """Train a language module (MAD-X) with masked language modelling on `text` (UTF-8 files,
    one sentence per line, and/or `TASK[:SPLIT]`, never a task's test split) and register it as
    task `mlm:<language>`; `xtl.Language(...)` puts such modules below a task module. Bottleneck
    modules are adapters' `seq_bn_inv` (reduction factor 2) unless `method` says otherwise."""
    from .language import train_language as _train_language

    method_name, method_config = _method(method)
    if isinstance(method, MethodConfig):  # the fields it sets; the rest are the language defaults
        method_config = method.model_dump(exclude_unset=True)
    return _train_language(backbone, language, text, method=method_name, method_config=method_config,
                           train_config=config, registry=registry or Registry(), name=name,
                           data_dir=Path(data_dir) if data_dir else None, max_length=max_length,
                           checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None, progress=progress)
