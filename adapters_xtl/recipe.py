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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import XtlError, did_you_mean
from .manifest import config_hash

COMPOSITIONS = ("single", "continue")


class IntermediateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    steps: int | None = None  # overrides recipe.train.steps
    train: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None  # registry name; default <task>-<method>-s<steps>-seed<seed>

    @property
    def label(self) -> str:
        return self.name or self.task


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
    compositions: list[str] = Field(default_factory=lambda: ["single"])
    reuse_registry: bool = True
    file: str | None = None

    @field_validator("compositions")
    @classmethod
    def _known(cls, v):
        for c in v:
            if c not in COMPOSITIONS:
                raise ValueError(f"unknown composition {c!r}; {did_you_mean(c, COMPOSITIONS)}")
        return v


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
    task: str
    seed: int
    train: dict[str, Any]
    key: str


class Cell(BaseModel):
    """One target training + zero-shot evaluation."""

    key: str
    target: str
    composition: str
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


def expand(recipe: Recipe) -> Plan:
    """Recipe -> modules to have + cells, every one keyed by its resolved config."""
    from .methods import get_method
    from .tasks import get_task

    method = get_method(recipe.method)
    mcfg = method.make_config(recipe.method_config, where=f"{recipe.file}: method_config").model_dump()
    base = {"backbone": recipe.backbone, "quantization": recipe.quantization, "method": recipe.method,
            "method_config": mcfg}
    for t in [i.task for i in recipe.intermediate] + [t.task for t in recipe.targets]:
        get_task(t)  # unknown task: fail at plan time
    for t in recipe.targets:
        spec = get_task(t.task)
        for lang in t.languages or []:
            spec.language_code(lang)
    modules: dict[tuple[str, int], ModuleJob] = {}
    for seed in recipe.seeds:
        for inter in recipe.intermediate:
            tr = {**recipe.train, **inter.train, "seed": seed}
            if inter.steps:
                tr["steps"] = inter.steps
            key = config_hash({**base, "task": inter.task, "train": tr})
            name = inter.name or f"{inter.task}-{recipe.method}-{key[:8]}"
            modules[(inter.label, seed)] = ModuleJob(name=name, task=inter.task, seed=seed, train=tr, key=key)
    cells = []
    for target in recipe.targets:
        for seed in recipe.seeds:
            tr = {**recipe.train, **target.train, "seed": seed}
            if target.steps:
                tr["steps"] = target.steps
            for comp in recipe.compositions:
                groups = [[]] if comp == "single" else [[i.label] for i in recipe.intermediate]
                for group in groups:
                    inter_jobs = [modules[(g, seed)] for g in group]
                    resolved = {**base, "target": target.task, "composition": comp,
                                "intermediates": [j.key for j in inter_jobs], "train": tr,
                                "languages": target.languages, "eval_limit": target.eval_limit}
                    key = config_hash(resolved)
                    cells.append(Cell(
                        key=key, target=target.task, composition=comp,
                        intermediates=[j.name for j in inter_jobs], seed=seed, languages=target.languages,
                        eval_limit=target.eval_limit, train=tr, name=f"{target.task}-{comp}-{key[:8]}",
                    ))
    return Plan(recipe=recipe, modules=list(modules.values()), cells=cells,
                recipe_hash=config_hash(recipe.model_dump(exclude={"file"})))
