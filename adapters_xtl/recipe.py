"""Recipes (YAML) and the plans they expand into.

A recipe names a backbone, a method, intermediate tasks, compositions, target tasks, languages,
seeds and budgets. `expand` turns it into a `Plan`: the intermediate modules to have (trained now
or reused from the registry) and the cells to run, each keyed by the hash of its fully resolved
config, which is what makes grids resumable and cached.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import checks
from .errors import XtlError, did_you_mean
from .store.manifest import config_hash

COMPOSITIONS = ("single", "stack", "fuse", "merge", "continue")


def _safe_name(v):
    """A recipe name, or an intermediate's: it becomes a folder (the run folder, a registry
    module, a checkpoint folder), so it follows the registry's module-name rule."""
    if v is None:
        return v
    try:
        checks.module_name(v, "name")
    except XtlError as e:
        raise ValueError(f"{v!r} is not a safe name ({e.fix})") from None
    return v


class IntermediateSpec(BaseModel):
    """One intermediate module: a task, or a multi-task mix (`multitask: [t1, t2, ...]`)."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = None
    multitask: list[str] | None = None
    sampling: Literal["proportional", "uniform"] = "proportional"  # multitask batch sampling
    cap: int | None = Field(None, ge=1)  # multitask: examples per task at most (caps proportional sampling)
    steps: int | None = Field(None, ge=1)  # overrides recipe.train.steps
    train: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None  # registry name; default <task>-<method>-<config hash>

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return _safe_name(v)

    @model_validator(mode="after")
    def _one(self):
        if bool(self.task) == bool(self.multitask):
            raise ValueError("an intermediate names either `task:` or `multitask:` (a list of two or more tasks)")
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
    density: float = Field(0.5, gt=0, le=1, allow_inf_nan=False)  # merge: share of each task vector kept
    weights: list[float] | None = None


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    languages: list[str] | None = None  # default: all of the task's
    steps: int | None = Field(None, ge=1)
    train: dict[str, Any] = Field(default_factory=dict)
    eval_limit: int | None = Field(None, ge=1)  # examples per language (None: all)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    backbone: str = "xlmr-e5-small"
    quantization: str = "none"
    # word embeddings of the backbone (compress.load_compressed): full | trimmed | 8bit | 4bit |
    # trimmed+8bit | trimmed+4bit; with 4-bit on CPU only compressed embeddings lower peak memory
    embeddings: str = "full"
    method: str = "lora"
    method_config: dict[str, Any] = Field(default_factory=dict)
    data_dir: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields, defaults for all
    intermediate: list[IntermediateSpec] = Field(default_factory=list)
    targets: list[TargetSpec] = Field(default_factory=list)
    compositions: list[CompositionSpec] = Field(default_factory=lambda: [CompositionSpec(kind="single")])
    # MAD-X axis: each composition without (`none`) and/or on language modules: `madx` (the
    # registry's newest `mlm:<lang>` module per language) or a mapping {lang: module ref}
    language_modules: list[Literal["none", "madx"] | dict[str, str]] = Field(default_factory=lambda: ["none"],
                                                                           min_length=1)
    reuse_registry: bool = True
    tracker: str | None = None  # tensorboard | trackio | mlflow | wandb (docs/tracking.md); --tracker overrides
    tasks_dir: list[str] = Field(default_factory=list)  # user task folders (relative to the recipe)
    file: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return _safe_name(v)

    @field_validator("quantization")
    @classmethod
    def _quantization(cls, v):
        from .backbone import QUANTIZATIONS

        if v not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {v!r}; {did_you_mean(str(v), QUANTIZATIONS)}")
        return v

    @field_validator("embeddings")
    @classmethod
    def _embeddings(cls, v):
        from .compress import EMBEDDING_MODES

        if v not in EMBEDDING_MODES:
            raise ValueError(f"unknown embeddings mode {v!r}; {did_you_mean(str(v), EMBEDDING_MODES)}")
        return v

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

    @field_validator("language_modules")
    @classmethod
    def _language_modules(cls, v):
        from .compose import Language

        for entry in v:
            if isinstance(entry, dict):
                try:
                    Language(entry)
                except XtlError as e:
                    raise ValueError(f"{e.args[0] if e.args else e} ({e.fix})") from None
        return v

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


def _read_yaml(path: Path, included_from: Path | None = None) -> dict:
    """A recipe file as a mapping, its `include:` merged underneath. Every way the file can be
    unreadable is one XtlError naming it (a missing include names the file that includes it)."""
    where = str(path) if included_from is None else f"{path} (included from {included_from})"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise XtlError(f"recipe not found: {path}", where=str(included_from or "recipe"),
                       fix="check the path" + (" of `include:`" if included_from else "")) from None
    except IsADirectoryError:
        raise XtlError(f"{path} is a folder, not a recipe file", where="recipe", fix="name a recipe .yaml file") from None
    except OSError as e:
        raise XtlError(f"cannot read {path}: {e.strerror}", where=where) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise XtlError(f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})", where=where,
                       fix="save the file as UTF-8") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise XtlError(f"malformed YAML: {e}", where=where, fix="fix the YAML syntax") from None
    if not isinstance(doc, dict):
        raise XtlError("a recipe must be a YAML mapping", where=where, fix="start with `name: my-grid`")
    if "include" in doc:
        inc = doc.pop("include")
        if not isinstance(inc, str) or not inc:
            raise XtlError(f"`include:` must name a recipe file, got {inc!r}", where=where,
                           fix="include: base.yaml (relative to this file) or include: builtin:quickstart")
        inc_path = BUILTIN / f"{inc.split(':', 1)[1]}.yaml" if inc.startswith("builtin:") else path.parent / inc
        doc = _deep_merge(_read_yaml(inc_path, included_from=path), doc)
    return doc


def _field_path(loc) -> str:
    """pydantic's ('targets', 0, 'steps') as the YAML path a user reads: targets[0].steps."""
    out = ""
    for x in loc:
        out += f"[{x}]" if isinstance(x, int) else (f".{x}" if out else str(x))
    return out


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """A recipe file, checked whole before anything runs (see `check_recipe`)."""
    path = Path(path)
    doc = _read_yaml(path)
    if overrides:
        doc = _deep_merge(doc, overrides)
    fields = ", ".join(f for f in Recipe.model_fields if f != "file")
    if "file" in doc:
        raise XtlError("field 'file' is not a recipe field (the loader records the file's path there)",
                       where=str(path), fix=f"remove it; recipe fields: {fields}")
    if isinstance(doc.get("tasks_dir"), str):
        doc["tasks_dir"] = [doc["tasks_dir"]]
    if isinstance(doc.get("tasks_dir"), list):
        for d in doc["tasks_dir"]:
            if not isinstance(d, str) or not d:
                raise XtlError(f"field 'tasks_dir': {d!r} is not a folder path", where=str(path),
                               fix="tasks_dir: my-tasks/ (a folder of task YAML files, or a list of them; relative "
                                   "to the recipe)")
        doc["tasks_dir"] = [str(Path(d).expanduser() if Path(d).expanduser().is_absolute() else (path.parent / d).resolve())
                            for d in doc["tasks_dir"]]
    if doc.get("data_dir") is not None and not isinstance(doc["data_dir"], str):
        raise XtlError(f"field 'data_dir': {doc['data_dir']!r} is not a folder path", where=str(path),
                       fix="data_dir: ../shared/data (relative to the recipe), or leave it out")
    if doc.get("data_dir") and not doc["data_dir"].startswith("{"):
        dd = Path(doc["data_dir"]).expanduser()
        doc["data_dir"] = str(dd if dd.is_absolute() else (path.parent / dd).resolve())
    try:
        recipe = Recipe(**doc, file=str(path))
    except ValidationError as e:
        raise _recipe_error(e, str(path), fields) from None
    check_recipe(recipe)
    return recipe


def _recipe_error(e: ValidationError, where: str, fields: str) -> XtlError:
    """pydantic's first error as one line: the field's YAML path, the value, what is wrong."""
    first = e.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across fields (a composition naming an unknown intermediate)
        return XtlError(msg, where=where)
    field = _field_path(first["loc"])
    if first["type"] in ("missing", "extra_forbidden"):
        return XtlError(f"field {field!r}: {msg}", where=where, fix=f"recipe fields: {fields}")
    value = first.get("input")
    shown = f"={value!r}" if value is not None and not isinstance(value, (dict, list)) else ""
    return XtlError(f"field {field!r}{shown}: {msg}", where=where)


@contextmanager
def _at(where: str):
    """Re-raise a check's XtlError under the recipe field it is about (`recipe.yaml: targets[0].task`)."""
    try:
        yield
    except XtlError as e:
        text = checks.message_of(e) if e.where and "/" not in e.where else str(e).split("\n  fix:")[0]
        raise XtlError(text, where=where, fix=e.fix) from None


def _train_layers(recipe: Recipe, task: str | None, entry: str, spec) -> list[tuple[str, dict]]:
    """Where an entry's training settings come from, lowest first, each with the path a user
    would edit: the task's defaults < the recipe's `train:` < the entry's `train:` < its `steps:`."""
    layers = [(f"task {task} defaults.train", task_train_defaults(task)), ("train", recipe.train),
              (f"{entry}.train", spec.train)]
    if spec.steps is not None:
        layers.append((entry, {"steps": spec.steps}))
    return layers


def check_train_layers(layers: list[tuple[str, dict]], where: str) -> None:
    """The merged training settings of one entry build a TrainConfig; a bad value is one XtlError
    naming the file, the field path that set it (`targets[0].train.batch_size`) and the value."""
    from .trainer import TrainConfig

    merged: dict[str, tuple[str, Any]] = {}
    for path, layer in layers:
        if not isinstance(layer, dict):
            raise XtlError(f"field {path!r} must be a mapping of training settings, got {layer!r}", where=where,
                           fix=f"e.g. train: {{steps: 200, lr: 1e-3}}; fields: {', '.join(TrainConfig.model_fields)}")
        for k, v in layer.items():
            merged[k] = (f"{path}.{k}", v)
    for k, (path, v) in merged.items():
        checks.train_setting(k, v, f"{where}: {path}")
        _train_config({k: v}, f"{where}: {path}")  # one field at a time: the error names its path
    _train_config({k: v for k, (_, v) in merged.items()}, f"{where}: {layers[-1][0]}")  # fields together


def _train_config(raw: dict, where: str):
    from .trainer import TrainConfig

    try:
        return TrainConfig.model_validate(raw, context={"where": where})
    except ValidationError as e:  # a TrainConfig that does not translate its own errors
        first = e.errors()[0]
        raise XtlError(f"invalid training setting {_field_path(first['loc'])}={first.get('input')!r}: {first['msg']}",
                       where=where, fix=f"training fields: {', '.join(TrainConfig.model_fields)}") from None


def check_recipe(recipe: Recipe, *, need_targets: bool = True) -> None:
    """What the recipe's types cannot say, checked before any work (a dry run included): its
    backbone can be loaded, it has targets (a study of intermediates alone may have none), every
    task it names exists, and every entry's merged training settings are valid (`train.steps:
    "abc"` fails here, not hours into a grid)."""
    from .methods import get_method
    from .tasks import get_task

    where = recipe.file or "recipe"
    checks.backbone(recipe.backbone, f"{where}: backbone")
    with _at(f"{where}: method"):
        method = get_method(recipe.method)
    method.make_config(recipe.method_config, where=f"{where}: method_config")
    if any(lm != "none" for lm in recipe.language_modules) and "language" not in method.supported_compositions:
        raise XtlError(f"method {recipe.method!r} cannot run on language modules: {method.refusals.get('language', '')}",
                       where=f"{where}: language_modules", fix="language_modules: [none], or method bottleneck / lora")
    if recipe.tracker is not None:
        from .tracking import check_tracker

        check_tracker(recipe.tracker, f"{where}: tracker")
    if need_targets and not recipe.targets:
        raise XtlError("the recipe has no targets: nothing to train or evaluate", where=f"{where}: targets",
                       fix="targets: [{task: sib200}]")
    with _at(f"{where}: tasks_dir"):
        catalog = recipe.catalog()
    with catalog.active():
        for i, inter in enumerate(recipe.intermediate):
            for j, t in enumerate(inter.multitask or [inter.task]):
                with _at(f"{where}: intermediate[{i}]." + (f"multitask[{j}]" if inter.multitask else "task")):
                    get_task(t)
            check_train_layers(_train_layers(recipe, inter.task, f"intermediate[{i}]", inter), where)
        for i, target in enumerate(recipe.targets):
            with _at(f"{where}: targets[{i}].task"):
                spec = get_task(target.task)
            for lang in target.languages or []:
                with _at(f"{where}: targets[{i}].languages"):
                    spec.language_code(lang)
            check_train_layers(_train_layers(recipe, target.task, f"targets[{i}]", target), where)


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


def _check_planned_name(name: str, recipe: Recipe, what: str) -> None:
    """Every module a plan registers and checkpoints under `<run>/checkpoints/<name>` has a name
    that stays one folder (a recipe built in code skips load_recipe's checks: this is the last
    line)."""
    try:
        checks.module_name(name, "name")
    except XtlError as e:
        raise XtlError(f"{what} would be registered as {name!r}, not a safe module name", where=recipe.file or "recipe",
                       fix=e.fix) from None


def _language_spec(spec: dict, entry: "str | dict") -> dict:
    """A cell's composition with language modules below it: `madx` looks each language's module
    up in the registry when the cell runs; a mapping names them."""
    from .compose import Block, Language

    return Language(None if entry == "madx" else dict(entry), then=Block.from_dict(spec)).to_dict()


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
            if inter.steps is not None:
                tr["steps"] = inter.steps
            what = {"task": inter.task} if inter.task else {"multitask": inter.multitask, "sampling": inter.sampling,
                                                             "cap": inter.cap}
            key = config_hash({**base, **what, "train": tr})
            stem = get_task(inter.task).name if inter.task else "mt-" + "-".join(get_task(t).name for t in inter.multitask)
            name = f"{inter.name}-seed{seed}" if inter.name and len(recipe.seeds) > 1 else inter.name
            name = name or f"{stem}-{recipe.method}-{key[:8]}"
            _check_planned_name(name, recipe, f"intermediate {inter.label!r}")
            modules[(inter.label, seed)] = ModuleJob(
                name=name, task=inter.task or "mt:" + "+".join(inter.multitask), seed=seed, train=tr, key=key,
                multitask=inter.multitask, sampling=inter.sampling, cap=inter.cap)
    labels = [i.label for i in recipe.intermediate]
    cells = []
    for target in recipe.targets:
        for seed in recipe.seeds:
            tr = {**task_train_defaults(target.task), **recipe.train, **target.train, "seed": seed}
            if target.steps is not None:
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
                for group, lm in ((g, lm) for g in groups for lm in recipe.language_modules):
                    if retrieval and lm != "none":
                        continue  # nothing trains on top of a language module
                    inter_jobs = [modules[(g, seed)] for g in group]
                    spec = {"kind": comp.kind, "modules": [j.name for j in inter_jobs]}
                    if comp.kind == "merge":
                        spec["merge"] = {"how": comp.how, "density": comp.density, "weights": comp.weights, "seed": seed}
                    resolved = {**base, "target": target.task, "composition": {**spec, "modules": [j.key for j in inter_jobs]},
                                "train": tr, "languages": target.languages, "eval_limit": target.eval_limit}
                    label = comp.kind
                    if lm != "none":  # a Language block around the composition (compose/blocks.py)
                        spec = _language_spec(spec, lm)
                        resolved["language_modules"] = lm
                        label = f"{comp.kind}+madx"
                    key = config_hash(resolved)
                    cell_name = f"{get_task(target.task).name}-{label.replace('+', '-')}-{key[:8]}"
                    _check_planned_name(cell_name, recipe, f"target {target.task!r}")
                    cells.append(Cell(
                        key=key, target=target.task, composition=label, composition_spec=spec,
                        intermediates=[j.name for j in inter_jobs], seed=seed, languages=target.languages,
                        eval_limit=target.eval_limit, train=tr, name=cell_name,
                    ))
    return Plan(recipe=recipe, modules=list(modules.values()), cells=cells,
                recipe_hash=config_hash(recipe.model_dump(exclude={"file"} | (set() if recipe.tasks_dir else {"tasks_dir"})
                                                        | (set() if recipe.language_modules != ["none"]
                                                           else {"language_modules"}))))
