"""Recipes (YAML) and the plans they expand into.

A recipe names a backbone, a method, intermediate tasks, compositions, target tasks, languages,
seeds and budgets. `expand` turns it into a `Plan`: the intermediate modules to have (trained now
or reused from the registry) and the cells to run, each keyed by the hash of its fully resolved
config, which is what makes grids resumable and cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import XtlError, did_you_mean
from .store.manifest import config_hash

COMPOSITIONS = ("single", "stack", "fuse", "merge", "continue")


class IntermediateSpec(BaseModel):
    """One intermediate module: a task, or a multi-task mix (`multitask: [t1, t2, ...]`)."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = None
    multitask: list[str] | None = None
    sampling: Literal["proportional", "uniform"] = "proportional"  # multitask batch sampling
    cap: int | None = None  # multitask: examples per task at most (caps proportional sampling)
    steps: int | None = None  # overrides recipe.train.steps
    train: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None  # registry name; default <task>-<method>-<config hash>

    @model_validator(mode="after")
    def _one(self):
        if bool(self.task) == bool(self.multitask):
            raise ValueError("an intermediate names either `task` or `multitask: [tasks]`")
        if self.multitask and len(self.multitask) < 2:
            raise ValueError("`multitask` mixes two or more tasks")
        return self

    @property
    def label(self) -> str:
        return self.name or self.task or "+".join(self.multitask)


class CompositionSpec(BaseModel):
    """A composition in a recipe: a kind, and for fuse/merge which intermediates (default: all)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["single", "stack", "fuse", "merge", "continue"]
    modules: list[str] | None = None  # intermediate labels (task names or names given)
    how: Literal["linear", "ties", "dare_linear", "dare_ties"] = "linear"
    density: float = 0.5
    weights: list[float] | None = None


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    languages: list[str] | None = None  # default: all of the task's
    steps: int | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    eval_limit: int | None = None  # examples per language (None: all)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    backbone: str = "xlmr-e5-small"
    quantization: str = "none"
    method: str = "lora"
    method_config: dict[str, Any] = Field(default_factory=dict)
    data_dir: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [42])
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields, defaults for all
    intermediate: list[IntermediateSpec] = Field(default_factory=list)
    targets: list[TargetSpec] = Field(default_factory=list)
    compositions: list[CompositionSpec] = Field(default_factory=lambda: [CompositionSpec(kind="single")])
    reuse_registry: bool = True
    tasks_dir: list[str] = Field(default_factory=list)  # user task folders (relative to the recipe)
    file: str | None = None

    def catalog(self):
        """The task catalog this recipe's names resolve in: built-in + its `tasks_dir` folders."""
        from .tasks import TaskCatalog, active_catalog

        if not self.tasks_dir:
            return active_catalog()
        return TaskCatalog(include=[*active_catalog().folders, *self.tasks_dir])

    @field_validator("compositions", mode="before")
    @classmethod
    def _known(cls, v):
        out = []
        for c in v or []:
            if isinstance(c, str):
                if c not in COMPOSITIONS:
                    raise ValueError(f"unknown composition {c!r}; {did_you_mean(c, COMPOSITIONS)}")
                c = {"kind": c}
            out.append(c)
        return out

    @model_validator(mode="after")
    def _refs(self):
        labels = [i.label for i in self.intermediate]
        if len(set(labels)) != len(labels):
            raise ValueError(f"intermediate labels must be unique (give `name:`): {labels}")
        for c in self.compositions:
            for m in c.modules or []:
                if m not in labels:
                    raise ValueError(f"composition {c.kind} names {m!r}, not an intermediate; {did_you_mean(m, labels)}")
            if c.kind != "single" and not self.intermediate:
                raise ValueError(f"composition {c.kind!r} needs intermediate modules")
        return self


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


BUILTIN = Path(__file__).resolve().parent / "demo_data"


def _read_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise XtlError(f"recipe not found: {path}", where="recipe") from None
    except yaml.YAMLError as e:
        raise XtlError(f"malformed YAML: {e}", where=str(path), fix="fix the YAML syntax") from None
    if not isinstance(doc, dict):
        raise XtlError("a recipe must be a YAML mapping", where=str(path))
    if "include" in doc:
        inc = doc.pop("include")
        inc_path = BUILTIN / f"{inc.split(':', 1)[1]}.yaml" if inc.startswith("builtin:") else path.parent / inc
        doc = _deep_merge(_read_yaml(inc_path), doc)
    return doc


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    path = Path(path)
    doc = _read_yaml(path)
    if overrides:
        doc = _deep_merge(doc, overrides)
    if isinstance(doc.get("tasks_dir"), str):
        doc["tasks_dir"] = [doc["tasks_dir"]]
    if isinstance(doc.get("tasks_dir"), list):
        doc["tasks_dir"] = [str(Path(d).expanduser() if Path(d).expanduser().is_absolute() else (path.parent / d).resolve())
                            for d in doc["tasks_dir"]]
    if doc.get("data_dir") and not doc["data_dir"].startswith("{"):
        dd = Path(doc["data_dir"]).expanduser()
        doc["data_dir"] = str(dd if dd.is_absolute() else (path.parent / dd).resolve())
    try:
        return Recipe(**doc, file=str(path))
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise XtlError(
            f"field {field!r}: {first['msg']}",
            where=str(path),
            fix=f"recipe fields: {', '.join(f for f in Recipe.model_fields if f != 'file')}",
        ) from None


# ------------------------------------------------------------------------------------- plans
class ModuleJob(BaseModel):
    """An intermediate module the plan needs: its registry identity and how to train it."""

    name: str
    task: str  # a task name, or "mt:" + "+".join(tasks) for a multi-task module
    seed: int
    train: dict[str, Any]
    key: str
    multitask: list[str] | None = None
    sampling: str = "proportional"
    cap: int | None = None


class Cell(BaseModel):
    """One target training + zero-shot evaluation."""

    key: str
    target: str
    composition: str  # kind
    composition_spec: dict[str, Any] = Field(default_factory=dict)  # compose.Composition (modules filled)
    intermediates: list[str]  # ModuleJob names
    seed: int
    languages: list[str] | None
    eval_limit: int | None
    train: dict[str, Any]
    name: str  # registry name of the target module

    @property
    def label(self) -> str:
        inter = "+".join(self.intermediates) if self.intermediates else "-"
        return f"{self.target} | {self.composition} | {inter} | seed {self.seed}"


class Plan(BaseModel):
    recipe: Recipe
    modules: list[ModuleJob]
    cells: list[Cell]
    recipe_hash: str


def task_train_defaults(task: str | None) -> dict[str, Any]:
    """A task's own training defaults (its YAML `defaults.train`), the bottom layer of a cell's
    training settings: task defaults < recipe `train:` < the entry's `train:`/`steps:`. Without it a
    grid would drop what a task needs and the recipe does not say (a tagging head's `head_lr`),
    while `xtl train` on the same task would honour it. A multi-task mix has no single task."""
    from .tasks import get_task

    if not task:
        return {}
    return dict(get_task(task).defaults.get("train", {}))


def expand(recipe: Recipe) -> Plan:
    """Recipe -> modules to have + cells, every one keyed by its resolved config."""
    with recipe.catalog().active():
        return _expand(recipe)


def _expand(recipe: Recipe) -> Plan:
    from .methods import get_method
    from .tasks import get_task

    method = get_method(recipe.method)
    mcfg = method.make_config(recipe.method_config, where=f"{recipe.file}: method_config").model_dump()
    base = {"backbone": recipe.backbone, "quantization": recipe.quantization, "method": recipe.method,
            "method_config": mcfg}
    tasks = [t for i in recipe.intermediate for t in (i.multitask or [i.task])] + [t.task for t in recipe.targets]
    for t in tasks:
        get_task(t)  # unknown task: fail at plan time
    for t in recipe.targets:
        spec = get_task(t.task)
        for lang in t.languages or []:
            spec.language_code(lang)
    modules: dict[tuple[str, int], ModuleJob] = {}
    for seed in recipe.seeds:
        for inter in recipe.intermediate:
            tr = {**task_train_defaults(inter.task), **recipe.train, **inter.train, "seed": seed}
            if inter.steps:
                tr["steps"] = inter.steps
            what = {"task": inter.task} if inter.task else {"multitask": inter.multitask, "sampling": inter.sampling,
                                                             "cap": inter.cap}
            key = config_hash({**base, **what, "train": tr})
            stem = get_task(inter.task).name if inter.task else "mt-" + "-".join(get_task(t).name for t in inter.multitask)
            name = f"{inter.name}-seed{seed}" if inter.name and len(recipe.seeds) > 1 else inter.name
            name = name or f"{stem}-{recipe.method}-{key[:8]}"
            modules[(inter.label, seed)] = ModuleJob(
                name=name, task=inter.task or "mt:" + "+".join(inter.multitask), seed=seed, train=tr, key=key,
                multitask=inter.multitask, sampling=inter.sampling, cap=inter.cap)
    labels = [i.label for i in recipe.intermediate]
    cells = []
    for target in recipe.targets:
        for seed in recipe.seeds:
            tr = {**task_train_defaults(target.task), **recipe.train, **target.train, "seed": seed}
            if target.steps:
                tr["steps"] = target.steps
            retrieval = get_task(target.task).format == "retrieval"
            for comp in recipe.compositions:
                if retrieval and comp.kind in ("fuse", "merge", "continue"):
                    continue  # retrieval trains nothing: it scores the backbone or one module directly
                if comp.kind == "single":
                    groups = [[]]
                elif comp.kind in ("stack", "continue"):
                    groups = [[m] for m in (comp.modules or labels)]
                else:  # fuse, merge: all (or the listed) intermediates together
                    groups = [comp.modules or labels]
                for group in groups:
                    inter_jobs = [modules[(g, seed)] for g in group]
                    spec = {"kind": comp.kind, "modules": [j.name for j in inter_jobs]}
                    if comp.kind == "merge":
                        spec["merge"] = {"how": comp.how, "density": comp.density, "weights": comp.weights, "seed": seed}
                    resolved = {**base, "target": target.task, "composition": {**spec, "modules": [j.key for j in inter_jobs]},
                                "train": tr, "languages": target.languages, "eval_limit": target.eval_limit}
                    key = config_hash(resolved)
                    cells.append(Cell(
                        key=key, target=target.task, composition=comp.kind, composition_spec=spec,
                        intermediates=[j.name for j in inter_jobs], seed=seed, languages=target.languages,
                        eval_limit=target.eval_limit, train=tr, name=f"{get_task(target.task).name}-{comp.kind}-{key[:8]}",
                    ))
    return Plan(recipe=recipe, modules=list(modules.values()), cells=cells,
                recipe_hash=config_hash(recipe.model_dump(exclude={"file"} | (set() if recipe.tasks_dir else {"tasks_dir"}))))
